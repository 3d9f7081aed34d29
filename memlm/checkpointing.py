"""Checkpoints that survive a kill during the save.

Lightning writes a checkpoint file in place, so a run killed while saving leaves a truncated `last.ckpt` and cannot
resume. This CheckpointIO writes beside the target and renames, which is atomic on one file system: a killed run
always keeps its previous complete checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)
