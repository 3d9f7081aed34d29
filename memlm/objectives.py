"""How segment outputs become a loss and a per-sample verdict.

Decoders answer generatively: cross-entropy on the answer tokens only, and a sample counts as correct only if every
answer token is the argmax. With teacher forcing that is exactly what greedy decoding would emit, so it is an
exact-match accuracy without a separate generation pass. Encoders classify the last segment's summary (CLS) over a
fixed set of answers.

An objective fills a `Tally` for one batch; the loss it returns per segment is already divided by the batch's
number of targets, so the chunked backward in `memlm.recurrence` adds up to the same gradient as one backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlm.backbones import Backbone
from memlm.memory.base import SegmentOutput

IGNORE = -100


@dataclass
class Tally:
    """Per-sample error counts for one batch; a sample with no errors is correct."""

    errors: torch.Tensor
    num_targets: int

    @property
    def correct(self) -> torch.Tensor:
        return self.errors == 0


class GenerativeAnswer(nn.Module):
    """Next-token loss on answer tokens (`labels` != -100, already aligned to the position that predicts them)."""

    def start(self, batch: dict[str, torch.Tensor]) -> Tally:
        labels = batch["labels"]
        return Tally(labels.new_zeros(labels.shape[0]), int((labels != IGNORE).sum()))

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, batch: dict, tally: Tally):
        labels = batch["labels"][:, k]
        scored = labels != IGNORE
        if not scored.any():
            return None
        logits = backbone.logits(out.token_states[scored]).float()
        targets = labels[scored]
        wrong = (logits.argmax(-1) != targets).long()
        tally.errors.index_add_(0, scored.nonzero()[:, 0], wrong)
        return F.cross_entropy(logits, targets, reduction="sum") / tally.num_targets


class Classification(nn.Module):
    """A linear classifier over the last segment's summary; `class_label` holds the answer's index."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_classes)

    def start(self, batch: dict[str, torch.Tensor]) -> Tally:
        labels = batch["class_label"]
        return Tally(labels.new_zeros(labels.shape[0]), labels.shape[0])

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, batch: dict, tally: Tally):
        if k != batch["input_ids"].shape[1] - 1:
            return None
        logits = self.classifier(out.summary).float()
        targets = batch["class_label"]
        tally.errors += (logits.argmax(-1) != targets).long()
        return F.cross_entropy(logits, targets, reduction="sum") / tally.num_targets


def objective_for(backbone: Backbone, num_classes: int) -> nn.Module:
    """Decoders answer in words, encoders pick a class."""
    return GenerativeAnswer() if backbone.is_decoder else Classification(backbone.hidden_size, num_classes)
