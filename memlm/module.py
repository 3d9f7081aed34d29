"""The LightningModule: a memory head, an objective, and the segment loop, with manual optimisation.

Optimisation is manual because the segment loop backpropagates in chunks (see `memlm.recurrence`): Lightning's
automatic mode allows one backward per step. Gradient clipping and the LR schedule are therefore applied here, from
`optim`, rather than by Trainer flags.

Every constructor argument is a plain dict from the Hydra config, saved as hyper-parameters, so a checkpoint
rebuilds its model with `MemoryLM.load_from_checkpoint(path)` and opens with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from transformers import get_scheduler

from memlm.objectives import objective_for
from memlm.recurrence import Recurrence


class MemoryLM(L.LightningModule):
    def __init__(
        self, backbone: dict, model: dict, recurrence: dict, optim: dict, num_classes: int, data: dict | None = None
    ):
        """`data` is the training data config, unused here but saved so evaluation rebuilds the same task."""
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.head = instantiate(model, backbone=instantiate(backbone))
        self.objective = objective_for(self.head.backbone, num_classes)
        self.recurrence = Recurrence(**recurrence)
        self.optim = dict(optim)
        self.metrics = torch.nn.ModuleDict()

    @property
    def tokenizer(self):
        return self.head.backbone.tokenizer

    def unroll(self, batch: dict, backward=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run all of a batch's segments; return the loss and a per-sample correctness vector."""
        tally = self.objective.start(batch)

        def segment_loss(k, out):
            return self.objective.segment_loss(self.head.backbone, k, out, batch, tally)

        loss = self.recurrence.run(self.head, batch["input_ids"], batch["attention_mask"], segment_loss, backward)
        return loss, tally.correct

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss, correct = self.unroll(batch, backward=self.manual_backward)
        self.clip_gradients(
            optimizer, gradient_clip_val=self.optim["gradient_clip_val"], gradient_clip_algorithm="norm"
        )
        optimizer.step()
        self.lr_schedulers().step()
        batch_size = correct.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/accuracy", correct.float().mean(), prog_bar=True, batch_size=batch_size)
        self.log("train/segments", float(batch["input_ids"].shape[1]), prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, correct = self.unroll(batch)
        segments = batch["input_ids"].shape[1]
        self._log_mean(f"val/accuracy_{segments}seg", correct.float(), prog_bar=True)
        self._log_mean(f"val/loss_{segments}seg", loss, weight=correct.shape[0])

    def _log_mean(self, name: str, value: torch.Tensor, weight: float = 1.0, prog_bar: bool = False) -> None:
        # Metrics are made on first use because the set of validation lengths comes from the data, not the model.
        key = name.replace("/", "_")
        if key not in self.metrics:
            self.metrics[key] = MeanMetric().to(self.device)
        self.metrics[key].update(value, weight=weight)
        self.log(
            name, self.metrics[key], metric_attribute=f"metrics.{key}", add_dataloader_idx=False, prog_bar=prog_bar
        )

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=self.optim["lr"],
            weight_decay=self.optim["weight_decay"],
            betas=tuple(self.optim["betas"]),
        )
        scheduler = get_scheduler(
            self.optim["schedule"],
            optimizer,
            num_warmup_steps=self.optim["warmup_steps"],
            num_training_steps=max(self.trainer.max_steps, 1),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def checkpoint_file(path: str, key: str) -> str:
    """`path`, checked to be a file; otherwise an error naming the config key that gave it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file")
    return str(path)


def read_checkpoint(path: str, key: str) -> dict:
    """A checkpoint file's contents, read with `weights_only=True` (memlm saves plain containers only)."""
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
