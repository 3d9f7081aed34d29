"""Shared fixtures: offline hub settings, a small generated background corpus, composed configs for fast runs."""

import copy
import functools
import os
import random
from pathlib import Path

import pytest

# Without these a hub call retries for tens of seconds before failing; tests must never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

WORDS = (
    "the old house stood on a hill above the village and every morning the baker walked down the lane "
    "with bread for the children who waited by the river while the clouds moved slowly over the fields"
).split()

# Copied in the official layout: ids restart per story, question lines carry "\t<answer>\t<supporting ids>".
QA1 = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Sandra moved to the garden.
6 Where is Daniel? \thallway\t4
7 John moved to the office.
8 Sandra journeyed to the bathroom.
9 Where is Sandra? \tbathroom\t8
1 Sandra travelled to the office.
2 Sandra went to the bathroom.
3 Where is Sandra? \tbathroom\t2
"""

QA4 = """1 The office is north of the kitchen.
2 The garden is south of the kitchen.
3 What is north of the kitchen?\toffice\t1
1 The kitchen is west of the garden.
2 The hallway is west of the kitchen.
3 What is the garden east of?\tkitchen\t1
"""

# Small and quick: a one-layer model, short segments, a few steps. Enough to exercise every code path.
TINY_GPT2 = ["backbone.tiny.n_layer=1", "backbone.tiny.n_embd=32", "backbone.tiny.n_head=2"]
TINY_BERT = [
    "backbone=tiny_bert",
    "backbone.tiny.num_hidden_layers=1",
    "backbone.tiny.hidden_size=32",
    "backbone.tiny.num_attention_heads=2",
    "backbone.tiny.intermediate_size=64",
]
SMALL_RMT = ["model.num_mem_tokens=2"]
FAST = [
    "data.segment_length=24",
    "data.batch_size=4",
    "data.val_samples=8",
    "trainer.max_steps=6",
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "curriculum.segments=[1,2]",
    "optim.warmup_steps=0",
    "callbacks.progress_bar=null",
]


def write_background(root: Path, seed: int = 0) -> Path:
    """A PG-19-layout folder (train/validation/test of .txt books) of generated sentences."""
    rng = random.Random(seed)
    for split, books in (("train", 3), ("validation", 1), ("test", 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for book in range(books):
            sentences = (" ".join(rng.choices(WORDS, k=rng.randint(5, 14))).capitalize() + "." for _ in range(300))
            (root / split / f"{book}.txt").write_text(" ".join(sentences))
    return root


@pytest.fixture(scope="session")
def background(tmp_path_factory) -> Path:
    return write_background(tmp_path_factory.mktemp("background"))


@pytest.fixture(scope="session")
def tokenizer():
    """GPT-2's tokenizer, the default backbones'."""
    from memlm.backbones import load_tokenizer

    return load_tokenizer("gpt2-tokenizer")


@pytest.fixture(scope="session")
def pool(tokenizer, background):
    """The generated background's training sentences, tokenized as the fact tasks tokenize them."""
    from memlm.data.background import SentencePool, load_documents

    return SentencePool(load_documents(str(background), "train"),
                        lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"])


# Language modelling on the generated PG-19-layout folder; a dozen steps at most.
FAST_LM = [
    "data=pg19",
    "data.segment_length=16",
    "data.batch_size=4",
    "data.val_tokens=400",
    "trainer.max_steps=6",
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "curriculum.segments=[1,2]",
    "curriculum.max_steps_per_stage=3",
    "optim.warmup_steps=0",
    "callbacks.progress_bar=null",
]


def compose_train(overrides: list[str]) -> DictConfig:
    """The training config for `overrides`; a copy, so a test may change it."""
    return copy.deepcopy(_composed(tuple(overrides)))


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    # Composing takes about 0.1 s and many tests compose the same configuration (the heads table, say).
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def fast_config(background: Path, run_dir: Path, *overrides: str, backbone: list[str] = TINY_GPT2,
                head: list[str] = SMALL_RMT) -> DictConfig:
    """A composed training config for a quick run in `run_dir`; extra overrides come last and win."""
    return compose_train([*backbone, *head, *FAST, f"data.background={background}", f"run_dir={run_dir}", *overrides])


@pytest.fixture
def fast_cfg(tmp_path, background):
    """`fast_config` in tmp_path."""

    def make(*overrides: str, backbone: list[str] = TINY_GPT2, head: list[str] = SMALL_RMT) -> DictConfig:
        return fast_config(background, tmp_path, *overrides, backbone=backbone, head=head)

    return make


@pytest.fixture(scope="module")
def memorize_run(tmp_path_factory, background) -> tuple[Path, dict[str, float]]:
    """One quick memorize run per test module, for tests that only read its checkpoint: the checkpoint's path and
    the final validation metrics."""
    from memlm.training import train

    run_dir = tmp_path_factory.mktemp("memorize")
    metrics = train(fast_config(background, run_dir))
    return run_dir / "checkpoints" / "last.ckpt", metrics


@pytest.fixture
def lm_cfg(tmp_path, background):
    """A composed language-modelling config (PG-19 layout, generated books) for a quick run in tmp_path."""

    def make(*overrides: str, head: list[str] = SMALL_RMT) -> DictConfig:
        return compose_train([*TINY_GPT2, *head, *FAST_LM, f"data.source={background}",
                              f"data.cache_dir={tmp_path / 'datasets'}", f"run_dir={tmp_path}", *overrides])

    return make
