"""Checkpoints: written so that a kill during the save loses nothing, read without running code, and the few
questions asked of them (which model, which run to resume, how far the curriculum got) answered in one place.

Lightning writes a checkpoint file in place, so a run killed while saving leaves a truncated `last.ckpt` and cannot
resume. `AtomicCheckpointIO` writes beside the target and renames, which is atomic on one file system: a killed run
always keeps its previous complete checkpoint. memlm saves plain containers only, so every read here passes
`weights_only=True`, and a checkpoint names the classes its model is built from (`_target_` keys), so only memlm's
own are accepted: a file that unpickles safely could otherwise name any importable callable.

A run resumes from the newest complete checkpoint of its directory, by the step it holds rather than by its name: a
run killed while writing its first `last.ckpt`, or a directory copied elsewhere (where Lightning would start a
`last-v1.ckpt`), still continues from its latest step.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from memlm.curriculum import SegmentCurriculum
from memlm.module import MemoryLM, non_finite_tensors
from memlm.runs import written_in_place_of


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            with written_in_place_of(path) as partial:
                super().save_checkpoint(checkpoint, partial, storage_options)
        except (OSError, RuntimeError) as error:
            # A full or read-only disk: no half-written file is left behind, and the previous checkpoint is kept.
            raise OSError(f"could not write checkpoint {path} ({error}); the previous checkpoint is kept: free "
                          "space or choose a writable hydra.run.dir, then resume") from None


def check_room_for_checkpoints(run_dir: Path, model: torch.nn.Module) -> None:
    """Fail at start, not after a validation interval of lost training, when the run directory cannot hold a
    checkpoint: not writable, or less free space than a checkpoint (weights and AdamW's two moments) and the
    partial file of the next one."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{directory} is not writable: choose another hydra.run.dir")
    checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(directory).free
    if free < 2 * checkpoint_bytes:
        raise OSError(f"{directory} has {free / 2**20:.0f} MiB free, and a checkpoint of this model needs about "
                      f"{checkpoint_bytes / 2**20:.0f} MiB (twice that while the next is written): free space or "
                      "choose another hydra.run.dir")


def checkpoint_file(path: str, key: str) -> str:
    """`path`, checked to be a file; otherwise an error naming the config key that gave it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    return str(path)


TRUSTED_TARGETS = "memlm."
"""The package whose classes and functions a checkpoint's hyper-parameters may name as `_target_`."""

RESUMED_OPTIM_KEYS = ("lr", "weight_decay", "betas", "schedule", "warmup_steps")
"""optim keys whose values a resumed run takes from the checkpoint's optimiser and scheduler state, whatever the
command line says (the clip value is read each step, so a new one is in force)."""


def read_checkpoint(path: str, key: str) -> dict:
    """A checkpoint file's contents, read with `weights_only=True`; a file that is not a complete torch checkpoint
    gets an error naming the key and the file."""
    path = checkpoint_file(path, key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise ValueError(f"{key}={path} holds pickled objects besides tensors and plain containers; memlm reads "
                             "checkpoints with weights_only=True and runs no code from a file") from None
        raise ValueError(f"{key}={path} is not a torch checkpoint ({error})") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{key}={path} is not a complete torch checkpoint ({type(error).__name__}: {error}); "
                         "was it truncated by a full disk or an interrupted copy?") from None


def check_targets(hparams: Any, path: str, where: str = "hyper_parameters") -> None:
    """Refuse a checkpoint whose hyper-parameters name anything but memlm's own classes and functions."""
    if isinstance(hparams, dict):
        for name, value in hparams.items():
            if name == "_target_" and not (isinstance(value, str) and value.startswith(TRUSTED_TARGETS)):
                raise ValueError(f"{path}: {where}._target_={value!r} is not one of memlm's own classes or "
                                 f"functions ({TRUSTED_TARGETS}*); refusing to build a model from it")
            check_targets(value, path, f"{where}.{name}")
    elif isinstance(hparams, list | tuple):
        for index, value in enumerate(hparams):
            check_targets(value, path, f"{where}[{index}]")


def check_finite(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """Refuse weights that hold NaN or infinity: every figure computed from them would be meaningless."""
    broken = non_finite_tensors(state_dict)
    if broken:
        raise ValueError(f"{path}: {len(broken)} weight tensors hold NaN or infinity ({', '.join(broken[:3])}, ...): "
                         "the run diverged before this checkpoint was written; use an earlier checkpoint")


def load_checkpoint(path: str) -> tuple[MemoryLM, dict]:
    """The model a checkpoint file holds, rebuilt from its hyper-parameters, and the checkpoint (read once)."""
    checkpoint = read_checkpoint(path, "ckpt_path")
    hparams = checkpoint.get("hyper_parameters", {})
    if hparams.get("data") is None:
        raise ValueError(f"ckpt_path={path} holds no training data config; it was not written by train.py")
    check_targets(hparams, path)
    check_finite(checkpoint["state_dict"], path)
    try:
        model = MemoryLM(**hparams)
    except InstantiationException as error:
        cause = error.__cause__
        if not (isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause)):
            raise
        # A key a later memlm dropped: say which file and what to do, not only Hydra's TypeError.
        raise ValueError(f"{path}: its hyper_parameters hold a key this memlm does not take ({cause}); the "
                         "checkpoint was written by an older memlm. If the key's value is what this memlm does "
                         "anyway (see the git log), delete it from checkpoint['hyper_parameters'] and save the file "
                         "again; otherwise use the memlm commit that wrote it") from None
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


def checkpoints_by_step(run_dir: Path) -> dict[int, Path]:
    """The run directory's complete checkpoints by the step they hold, oldest first: those Lightning writes
    (`checkpoints/*.ckpt`, and `hpc_ckpt_*.ckpt` from a SLURM requeue), `last.ckpt` for a step that has a twin.
    Files that do not read as checkpoints are skipped with a warning."""
    by_step: dict[int, Path] = {}
    for path in [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]:
        try:
            step = read_checkpoint(str(path), "ckpt_path")["global_step"]
        except (ValueError, KeyError):
            warnings.warn(f"{path} is not a complete checkpoint; passed over", stacklevel=2)
            continue
        if step not in by_step or path.name == "last.ckpt":
            by_step[step] = path
    return dict(sorted(by_step.items()))


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`ckpt_path` if given, else the run directory's checkpoint holding the highest step (None for a fresh
    run; see `checkpoints_by_step`)."""
    if ckpt_path is not None:
        return checkpoint_file(ckpt_path, "ckpt_path")
    by_step = checkpoints_by_step(run_dir)
    return str(by_step[max(by_step)]) if by_step else None


def remove_partial_saves(run_dir: Path) -> None:
    """Delete what `AtomicCheckpointIO` left of saves that were killed midway (never a complete checkpoint)."""
    for partial in (run_dir / "checkpoints").glob(".*.partial"):
        partial.unlink()


def check_resumable(checkpoint_path: str, cfg: DictConfig) -> None:
    """Refuse to resume a checkpoint into a run that differs where resuming cannot honour the difference: another
    backbone or head (their weights would not load), or optimiser settings that the restored optimiser and
    scheduler state would silently override."""
    saved = read_checkpoint(checkpoint_path, "ckpt_path").get("hyper_parameters", {})
    for group in ("backbone", "model"):
        mine = OmegaConf.to_container(cfg[group], resolve=True)
        if group in saved and saved[group] != mine:
            raise ValueError(
                f"{checkpoint_path} holds {group}={_target_name(saved[group])} {saved[group]}, but this run asks for "
                f"{_target_name(mine)} {mine}: resume with the checkpoint's {group} settings, or start a new run "
                f"(another hydra.run.dir) with init_weights=<checkpoint> where the weights fit"
            )
    mine = OmegaConf.to_container(cfg.optim, resolve=True)
    for key in RESUMED_OPTIM_KEYS:
        if key in saved.get("optim", {}) and saved["optim"][key] != mine[key]:
            raise ValueError(
                f"optim.{key}={mine[key]} differs from {saved['optim'][key]} in {checkpoint_path}: a resumed run "
                "continues with the checkpoint's optimiser and scheduler state, so the new value would not be used. "
                f"Resume without changing optim.{key}, or start a new run (another hydra.run.dir) from these weights "
                f"with init_weights={checkpoint_path} and a fresh optimiser"
            )


def _target_name(group: dict) -> str:
    return str(group.get("_target_", "?")).rsplit(".", 1)[-1]


def trained_segment_count(checkpoint: dict) -> int | None:
    """The longest segment count the checkpoint's curriculum had reached, if it used one."""
    state = checkpoint.get("callbacks", {}).get(SegmentCurriculum.__qualname__)
    return state["segments"][state["stage"]] if state else None
