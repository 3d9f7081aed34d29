"""The LightningModule: a memory head, an objective, and the segment loop, with manual optimisation.

Optimisation is manual because the segment loop backpropagates in chunks (see `memlm.recurrence`): Lightning's
automatic mode allows one backward per step. Gradient clipping and the LR schedule are therefore applied here, from
`optim`, rather than by Trainer flags.

A non-finite loss or gradient norm stops training before the update it would make, with the step and the keys to
change, and a checkpoint with non-finite weights is never written: the last complete checkpoint stays the last good
one.

Every constructor argument is a plain dict from the Hydra config, saved as hyper-parameters, so a checkpoint
rebuilds its model with `MemoryLM.load_from_checkpoint(path)` and opens with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import torch
from hydra.utils import instantiate
from transformers import get_scheduler

from memlm.data.base import SegmentedBatch, segmented
from memlm.metrics import metric_name
from memlm.objectives import build_objective
from memlm.recurrence import Recurrence
from memlm.sharding import release, shard

FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps")
"""Devices with torch's fused AdamW kernel."""


class MemoryLM(L.LightningModule):
    def __init__(
        self,
        backbone: dict,
        model: dict,
        recurrence: dict,
        optim: dict,
        objective: str,
        num_classes: int = 0,
        data: dict | None = None,
    ):
        """`objective` is a name of `memlm.objectives.OBJECTIVES`, chosen with the data (`choose_objective`);
        `num_classes` the answers an encoder's classifier chooses among; `data` is the training data config,
        unused here but saved so evaluation rebuilds the same task."""
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.head = instantiate(model, backbone=instantiate(backbone))
        self.objective = build_objective(objective, self.head.backbone, num_classes)
        self.recurrence = Recurrence(**recurrence)
        self.optim = dict(optim)
        # One score per validated segment count, made on first use: the counts come from the data, not the model.
        self.scores = torch.nn.ModuleDict()

    @property
    def tokenizer(self):
        return self.head.backbone.tokenizer

    def forward(self, batch: dict | SegmentedBatch, backward=None):
        """`unroll_with_penalty` as the module's call: under `trainer=fsdp` the sharded outer unit gathers its
        weights around a call, and the segment loop (its backward calls included) runs inside it."""
        try:
            return self.unroll_with_penalty(batch, backward)
        finally:
            release(self)

    def configure_model(self) -> None:
        # Lightning calls this after making the device mesh: only the sharded strategy has one (memlm.sharding).
        if self.device_mesh is not None:
            shard(self, self.head.backbone.blocks, self.device_mesh["data_parallel"])

    def unroll(self, batch: dict | SegmentedBatch, backward=None):
        """Run all of a batch's segments (a collated dict, or a `SegmentedBatch`); return the loss that is
        optimised and the objective's tally of the batch."""
        loss, tally, _ = self(batch, backward)
        return loss, tally

    def unroll_with_penalty(self, batch: dict | SegmentedBatch, backward=None):
        """`unroll`, and the part of the loss that is the heads' penalties (training only: a regulariser shapes
        learning and is no part of a figure)."""
        batch = segmented(batch)
        tally = self.objective.start(batch)
        penalties = torch.zeros((), device=batch.device)

        def segment_loss(k, out, segment):
            nonlocal penalties
            loss = self.objective.segment_loss(self.head.backbone, k, out, segment, batch, tally)
            # The last segment's write is read by no segment: a price on it only teaches a gate to stay shut,
            # which on a one-segment stage is all that a write gate would hear.
            if out.penalty is None or not self.training or k == batch.num_segments - 1:
                return loss
            penalty = out.penalty / batch.num_segments
            penalties = penalties + penalty.detach()
            return penalty if loss is None else loss + penalty

        # Under DDP every backward but the step's last skips the all-reduce (`Recurrence.run`).
        strategy = self._trainer.strategy if self._trainer is not None else None
        accumulate = getattr(strategy, "block_backward_sync", nullcontext)
        loss = self.recurrence.run(self.head, batch, segment_loss, backward, accumulate)
        return loss, tally, penalties

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        batch = segmented(batch)
        loss, tally, penalty = self(batch, backward=self.manual_backward)
        parameters = [p for p in self.parameters() if p.grad is not None]
        grads = [p.grad for p in parameters]
        # A loss scaler (16-mixed) makes infinite gradients on purpose and skips those steps itself.
        scaled = self._loss_scaled()
        clipped = self.optim["gradient_clip_val"] is not None and not scaled
        if clipped:
            clip_norm, grad_norm = clippable_norm(grads)
        else:
            grad_norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(loss) or not (scaled or torch.isfinite(grad_norm)):
            raise FloatingPointError(
                f"step {self.global_step}: the training loss is {loss.item()} and the gradient norm "
                f"{grad_norm.item()}; stopped before updating the weights, so the last checkpoint holds the last "
                f"finite ones. Lower optim.lr (now {self.optim['lr']}) or optim.gradient_clip_val, or raise "
                "optim.warmup_steps; with a mixed precision try trainer.precision=32-true"
            )
        if clipped:
            # Clipped here with the norm already computed, not through Lightning's precision plugin, which
            # refuses a fused optimizer under any mixed precision (bf16-mixed included, which has no scaler).
            torch.nn.utils.clip_grads_with_norm_(parameters, self.optim["gradient_clip_val"], clip_norm)
        elif scaled:
            # The plugin unscales the gradients before it clips them.
            self.clip_gradients(
                optimizer, gradient_clip_val=self.optim["gradient_clip_val"], gradient_clip_algorithm="norm"
            )
        optimizer.step()
        self.lr_schedulers().step()
        batch_size, num_segments = batch.size, batch.num_segments
        # The task's loss, comparable with validation's; a penalty is logged beside it.
        self.log("train/loss", loss - penalty, prog_bar=True, batch_size=batch_size)
        if penalty.item():
            self.log("train/penalty", penalty, batch_size=batch_size)
        for name, value in self.objective.batch_figures(tally).items():
            self.log(f"train/{name}", value, prog_bar=True, batch_size=batch_size)
        self.log("train/segments", float(num_segments), prog_bar=True, batch_size=batch_size)
        self.log("train/grad_norm", grad_norm, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        batch = segmented(batch)
        _, tally = self.unroll(batch)
        self.score(batch.num_segments).update(tally)

    def score(self, num_segments: int):
        key = str(num_segments)
        if key not in self.scores:
            self.scores[key] = self.objective.score(num_segments).to(self.device)
        return self.scores[key]

    def on_validation_epoch_end(self) -> None:
        # compute() sums the tallies of every process, so each figure is over the whole validation set.
        for score in self.scores.values():
            if not score.update_called:
                continue
            headline = metric_name(self.objective.headline, score.num_segments, split=None)
            figures = score.compute()
            score.reset()
            broken = {name: value.item() for name, value in figures.items() if not torch.isfinite(value)}
            if broken:
                raise FloatingPointError(
                    f"step {self.global_step}: validation at {score.num_segments} segments gave {broken}; stopped "
                    "before writing a checkpoint of these weights. Lower optim.lr or optim.gradient_clip_val"
                )
            for name, value in figures.items():
                self.log(f"val/{name}", value.float(), prog_bar=name == headline)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        broken = non_finite_tensors(self.state_dict())
        if broken:
            raise FloatingPointError(f"step {self.global_step}: {len(broken)} weight tensors hold NaN or infinity "
                                     f"({', '.join(broken[:3])}, ...); refusing to write them over a good checkpoint")

    def _loss_scaled(self) -> bool:
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def configure_optimizers(self):
        # The fused kernel updates each tensor in one pass: on the 2-core CPU, AdamW over the default model's
        # parameters (the 50k x 128 embedding most of them) takes 3.9 ms a step instead of 13.1 with the foreach
        # default, about a tenth of an RMT step; at d=512, 16 ms instead of 90.
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=self.optim["lr"],
            weight_decay=self.optim["weight_decay"],
            betas=tuple(self.optim["betas"]),
            # Under a loss scaler Lightning unscales the gradients itself, which a fused optimizer refuses.
            fused=self.device.type in FUSED_ADAMW_DEVICES and not self._loss_scaled(),
        )
        scheduler = get_scheduler(
            self.optim["schedule"],
            optimizer,
            num_warmup_steps=self.optim["warmup_steps"],
            num_training_steps=max(self.trainer.max_steps, 1),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def clippable_norm(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients' total norm as they are after this call, to clip them with, and their true norm.

    A gradient exploding through the recurrence can be finite in every element and still have a norm float32
    cannot hold (elements past ~1e19 square beyond its range): a detect run trained on 32 segments met one at step
    1064, and its norm read as infinite. Clipping to a norm does not depend on the gradient's scale, so such
    gradients are first divided by their largest element, which makes the norm finite and leaves the clipped
    update as it would be. The true norm is then given in float64 (it is logged as `train/grad_norm`).
    """
    norm = torch.nn.utils.get_total_norm(grads)
    if torch.isfinite(norm) or not all(bool(torch.isfinite(grad).all()) for grad in grads):
        return norm, norm
    largest = torch.stack([grad.abs().max() for grad in grads]).max()
    for grad in grads:
        grad.div_(largest)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm, norm.double() * largest.double()


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity."""
    return [name for name, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
