"""How segment outputs become a loss, and the figures validation reports.

- Answers (the fact tasks). Decoders answer generatively: cross-entropy on the answer tokens only, and a sample
  counts as correct only if every answer token is the argmax. With teacher forcing that is exactly what greedy
  decoding would emit, so it is an exact-match accuracy without a separate generation pass. Encoders classify the
  last segment's summary (CLS) over a fixed set of answers.
- Language modelling: cross-entropy on every labelled token. Perplexity is corpus-level and token-weighted, the
  exponential of the summed negative log-likelihood over the number of tokens of the whole validation text, not a
  mean of per-batch perplexities (which over-weights short batches); it is also reported per segment position, so
  a reader sees whether later segments gain from memory.

An objective fills a tally for one batch; the loss it returns per segment is already divided by the batch's number
of targets, so the chunked backward in `memlm.recurrence` adds up to the same gradient as one backward. Validation
accumulates tallies in a torchmetrics `Metric` per segment count (summed across processes under DDP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from memlm.backbones import Backbone
from memlm.memory.base import SegmentOutput

IGNORE = -100
OBJECTIVES = ("answer", "language_model")


@dataclass
class AnswerTally:
    """Per-sample error counts and the summed loss of one batch; a sample with no errors is correct."""

    errors: torch.Tensor
    num_targets: int
    nll: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        return self.errors == 0


@dataclass
class TokenTally:
    """Summed negative log-likelihood and token count at each segment position of one batch."""

    nll: torch.Tensor
    tokens: torch.Tensor
    num_targets: int


class AnswerScore(Metric):
    """Exact-match accuracy and mean loss per answer token at one segment count."""

    full_state_update = False

    def __init__(self, num_segments: int):
        super().__init__()
        self.num_segments = num_segments
        for name in ("correct", "samples", "nll", "targets"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, tally: AnswerTally) -> None:
        self.correct += tally.correct.sum()
        self.samples += tally.errors.numel()
        self.nll += tally.nll
        self.targets += tally.num_targets

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.num_segments
        return {f"accuracy_{n}seg": self.correct / self.samples, f"loss_{n}seg": self.nll / self.targets}


class SegmentPerplexity(Metric):
    """Token-weighted perplexity at one segment count, over all positions and at each segment position."""

    full_state_update = False

    def __init__(self, num_segments: int):
        super().__init__()
        self.num_segments = num_segments
        zeros = torch.zeros(num_segments, dtype=torch.float64)
        self.add_state("nll", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("tokens", default=zeros.clone(), dist_reduce_fx="sum")

    def update(self, tally: TokenTally) -> None:
        self.nll += tally.nll
        self.tokens += tally.tokens

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.num_segments
        loss = self.nll.sum() / self.tokens.sum()
        figures = {f"ppl_{n}seg": loss.exp(), f"loss_{n}seg": loss}
        # A position no sample reaches (every window shorter than n segments) has no perplexity to report.
        for k in self.tokens.nonzero()[:, 0].tolist():
            figures[f"ppl_{n}seg/segment_{k + 1}"] = (self.nll[k] / self.tokens[k]).exp()
        return figures


class AnswerObjective(nn.Module):
    """What the two ways of answering share: exact-match accuracy is their figure."""

    headline = "accuracy"
    higher_is_better = True
    score = AnswerScore

    @staticmethod
    def tally(errors: torch.Tensor, num_targets: int) -> AnswerTally:
        return AnswerTally(errors, num_targets, errors.new_zeros((), dtype=torch.float))

    def batch_figures(self, tally: AnswerTally) -> dict[str, torch.Tensor]:
        return {"accuracy": tally.correct.float().mean()}


class GenerativeAnswer(AnswerObjective):
    """Next-token loss on answer tokens (`labels` != -100, already aligned to the position that predicts them)."""

    def start(self, batch: dict[str, torch.Tensor]) -> AnswerTally:
        labels = batch["labels"]
        return self.tally(labels.new_zeros(labels.shape[0]), int((labels != IGNORE).sum()))

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, batch: dict, tally: AnswerTally):
        labels = batch["labels"][:, k]
        scored = labels != IGNORE
        if not scored.any():
            return None
        logits, targets = scored_logits(backbone, out, labels, scored)
        wrong = (logits.argmax(-1) != targets).long()
        tally.errors.index_add_(0, scored.nonzero()[:, 0], wrong)
        nll = F.cross_entropy(logits, targets, reduction="sum")
        tally.nll = tally.nll + nll.detach()
        return nll / tally.num_targets


class Classification(AnswerObjective):
    """A linear classifier over the last segment's summary; `class_label` holds the answer's index."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_classes)

    def start(self, batch: dict[str, torch.Tensor]) -> AnswerTally:
        labels = batch["class_label"]
        return self.tally(labels.new_zeros(labels.shape[0]), labels.shape[0])

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, batch: dict, tally: AnswerTally):
        if k != batch["input_ids"].shape[1] - 1:
            return None
        logits = self.classifier(out.summary).float()
        targets = batch["class_label"]
        tally.errors += (logits.argmax(-1) != targets).long()
        nll = F.cross_entropy(logits, targets, reduction="sum")
        tally.nll = tally.nll + nll.detach()
        return nll / tally.num_targets


class LanguageModeling(nn.Module):
    """Next-token loss on every labelled token (`labels` are the inputs shifted by one, -100 on padding)."""

    headline = "ppl"
    higher_is_better = False
    score = SegmentPerplexity

    def start(self, batch: dict[str, torch.Tensor]) -> TokenTally:
        labels = batch["labels"]
        num_segments = labels.shape[1]
        zeros = labels.new_zeros(num_segments, dtype=torch.float)
        return TokenTally(zeros, zeros.clone(), int((labels != IGNORE).sum()))

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, batch: dict, tally: TokenTally):
        labels = batch["labels"][:, k]
        scored = labels != IGNORE
        if not scored.any():
            return None
        nll = F.cross_entropy(*scored_logits(backbone, out, labels, scored), reduction="sum")
        tally.nll[k] = nll.detach()
        tally.tokens[k] = scored.sum()
        return nll / tally.num_targets

    def batch_figures(self, tally: TokenTally) -> dict[str, torch.Tensor]:
        return {"ppl": (tally.nll.sum() / tally.tokens.sum()).exp()}


def scored_logits(backbone: Backbone, out: SegmentOutput, labels: torch.Tensor, scored: torch.Tensor):
    """Next-token logits (float32) and targets at the scored positions only: the vocabulary projection is the
    costliest step, and positions without a label need none."""
    return backbone.logits(out.token_states[scored]).float(), labels[scored]


def objective_for(backbone: Backbone, num_classes: int, objective: str = "answer") -> nn.Module:
    """The data's objective; for answers, decoders answer in words and encoders pick a class."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    if objective == "language_model":
        if not backbone.is_decoder:
            raise ValueError("language modelling needs a decoder backbone; this one is an encoder")
        return LanguageModeling()
    return GenerativeAnswer() if backbone.is_decoder else Classification(backbone.hidden_size, num_classes)
