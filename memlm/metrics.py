"""The figures validation and evaluation report, and their names.

Every figure is reported at a segment count, and perplexity also at each segment position, so a reader sees
whether later segments gain from memory. `metric_name` is the one place that spells a figure's key
(`val/accuracy_4seg`, `val/ppl_8seg/segment_3`); everything that reads a figure back builds its key with it rather
than taking keys apart.

An objective fills a tally for one batch; a torchmetrics `Metric` per segment count accumulates the tallies over
the validation set (summed across processes under DDP), so every figure is over the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics import Metric


def metric_name(figure: str, num_segments: int, position: int | None = None, split: str | None = "val") -> str:
    """The logged key of `figure` at `num_segments` segments (and at 1-based segment `position`), under `split`."""
    name = f"{figure}_{num_segments}seg"
    if position is not None:
        name = f"{name}/segment_{position}"
    return f"{split}/{name}" if split else name


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
        return {metric_name("accuracy", n, split=None): self.correct / self.samples,
                metric_name("loss", n, split=None): self.nll / self.targets}


class SegmentPerplexity(Metric):
    """Token-weighted perplexity at one segment count, over all positions and at each segment position.

    Corpus-level: the exponential of the summed negative log-likelihood over the number of tokens of the whole
    validation text, not a mean of per-batch perplexities (which over-weights short batches)."""

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
        figures = {metric_name("ppl", n, split=None): loss.exp(), metric_name("loss", n, split=None): loss}
        # A position no sample reaches (every window shorter than n segments) has no perplexity to report.
        for k in self.tokens.nonzero()[:, 0].tolist():
            figures[metric_name("ppl", n, k + 1, split=None)] = (self.nll[k] / self.tokens[k]).exp()
        return figures
