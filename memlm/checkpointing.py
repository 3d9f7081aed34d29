"""Checkpoints: written so that a kill during the save loses nothing, read without running code, and the few
questions asked of them (which model, which run to resume, how far the curriculum got) answered in one place.

Lightning writes a checkpoint file in place, so a run killed while saving leaves a truncated `last.ckpt` and cannot
resume. `AtomicCheckpointIO` writes beside the target and renames, which is atomic on one file system: a killed run
always keeps its previous complete checkpoint. memlm saves plain containers only, so every read here passes
`weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from memlm.curriculum import SegmentCurriculum
from memlm.module import MemoryLM


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


def checkpoint_file(path: str, key: str) -> str:
    """`path`, checked to be a file; otherwise an error naming the config key that gave it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    return str(path)


def read_checkpoint(path: str, key: str) -> dict:
    """A checkpoint file's contents, read with `weights_only=True`."""
    return torch.load(checkpoint_file(path, key), map_location="cpu", weights_only=True)


def load_checkpoint(path: str) -> tuple[MemoryLM, dict]:
    """The model a checkpoint file holds, rebuilt from its hyper-parameters, and the checkpoint (read once)."""
    checkpoint = read_checkpoint(path, "ckpt_path")
    hparams = checkpoint.get("hyper_parameters", {})
    if hparams.get("data") is None:
        raise ValueError(f"ckpt_path={path} holds no training data config; it was not written by train.py")
    model = MemoryLM(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint


def load_initial_weights(model: MemoryLM, path: str) -> None:
    """Start from a checkpoint's model weights only: a new run with its own optimiser, step and curriculum."""
    state = read_checkpoint(path, "init_weights")["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init_weights={path} does not match this model (missing {missing[:5]}, unexpected {unexpected[:5]}): "
            "use a checkpoint of the same backbone and head"
        )


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`ckpt_path` if given, else the run directory's own last checkpoint, so a re-run in place resumes."""
    if ckpt_path is not None:
        return checkpoint_file(ckpt_path, "ckpt_path")
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def trained_segment_count(checkpoint: dict) -> int | None:
    """The longest segment count the checkpoint's curriculum had reached, if it used one."""
    state = checkpoint.get("callbacks", {}).get(SegmentCurriculum.__qualname__)
    return state["segments"][state["stage"]] if state else None
