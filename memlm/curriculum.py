"""Curriculum over the number of segments per training sample, as a Lightning callback.

Training starts on the first segment count of the list and moves to the next when the validation figure at the
current count reaches `threshold` (accuracy at least `threshold` for the fact tasks, perplexity at most `threshold`
for language modelling), or when the stage has used `max_steps_per_stage` optimiser steps. With `threshold=None`
stages advance on the step budget alone, as in the HMT and RMT papers' language-model training. The stage is
part of the checkpoint (`state_dict`), so a resumed run continues on the same segment count. Lightning runs
checkpoint callbacks after all others, so a checkpoint taken at a validation that advanced the stage already holds
the new stage.

Within a stage of n segments, `segment_range` says which counts training batches draw from, uniformly per batch:
"stage" (n only, the RMT papers' recipe), "upper_half" ([ceil(n/2), n]) or "up_to_stage" ([1, n]). Varied lengths
(ARMT's `vary_n_segments`) teach the memory to answer after any number of segments rather than after exactly n.

The callback sets `num_segments` (and `fewest_segments`) on the datamodule; the datamodule builds a fresh training
loader each epoch (`reload_dataloaders_every_n_epochs=1`) and an epoch lasts one validation interval, so a new stage
starts with the next epoch's loader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from memlm.metrics import metric_name

SEGMENT_RANGES = {
    "stage": lambda n: n,
    "upper_half": lambda n: max(1, math.ceil(n / 2)),
    "up_to_stage": lambda n: 1,
}
"""`segment_range` -> the fewest segments a training batch of a stage of n segments may draw."""


class SegmentCurriculum(Callback):
    def __init__(
        self,
        datamodule: L.LightningDataModule,
        segments: Sequence[int],
        threshold: float | None = 0.95,
        max_steps_per_stage: int | None = None,
        stop_when_done: bool = True,
        segment_range: str = "stage",
        metric: str = "accuracy",
        higher_is_better: bool = True,
    ):
        """`metric` is the validation figure (at the current segment count) the threshold applies to; the objective
        gives it."""
        segments = self.check_segments(segments)
        if segment_range not in SEGMENT_RANGES:
            raise ValueError(f"curriculum.segment_range={segment_range!r} is not one of {tuple(SEGMENT_RANGES)}")
        if max_steps_per_stage is not None and max_steps_per_stage < 1:
            raise ValueError(f"curriculum.max_steps_per_stage={max_steps_per_stage} must be positive or null")
        if threshold is None and max_steps_per_stage is None and len(segments) > 1:
            raise ValueError("curriculum.threshold and curriculum.max_steps_per_stage are both null: nothing would "
                             "move training past the first stage; set either")
        if threshold is not None and not higher_is_better and threshold < 1:
            raise ValueError(f"curriculum.threshold={threshold} is a {metric} to get under, and {metric} is never "
                             "below 1: give a reachable perplexity, or null to advance every "
                             "curriculum.max_steps_per_stage steps")
        self.datamodule = datamodule
        self.segments = segments
        self.threshold = threshold
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.max_steps_per_stage = max_steps_per_stage
        self.stop_when_done = stop_when_done
        self.segment_range = segment_range
        self.stage = 0
        self.stage_start_step = 0
        self.history: list[dict] = []
        self._apply()

    @staticmethod
    def check_segments(segments: Sequence[int]) -> list[int]:
        segments = list(segments)
        if not segments or any(n < 1 for n in segments) or segments != sorted(set(segments)):
            raise ValueError(f"curriculum.segments={segments} must be a non-empty increasing list of positive counts")
        return segments

    @property
    def num_segments(self) -> int:
        return self.segments[self.stage]

    @property
    def monitor(self) -> str:
        return metric_name(self.metric, self.num_segments)

    def _apply(self) -> None:
        self.datamodule.num_segments = self.num_segments
        self.datamodule.fewest_segments = SEGMENT_RANGES[self.segment_range](self.num_segments)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(f"the curriculum monitors {self.monitor!r}, which validation did not log")
        value = float(trainer.callback_metrics[self.monitor])
        steps_in_stage = trainer.global_step - self.stage_start_step
        reached = self.threshold is not None and (
            value >= self.threshold if self.higher_is_better else value <= self.threshold
        )
        out_of_budget = self.max_steps_per_stage is not None and steps_in_stage >= self.max_steps_per_stage
        last_stage = self.stage == len(self.segments) - 1
        if not reached and (last_stage or not out_of_budget):
            return
        if last_stage and not self.stop_when_done:
            return
        self.history.append(
            {"segments": self.num_segments, "step": trainer.global_step, self.metric: value, "reached": reached}
        )
        if last_stage:
            rank_zero_info(f"curriculum: {self.num_segments} segments at {self.metric} {value:.3f}; done")
            trainer.should_stop = True
            return
        self.stage += 1
        self.stage_start_step = trainer.global_step
        self._apply()
        rank_zero_info(
            f"curriculum: {self.metric} {value:.3f} at step {trainer.global_step}; "
            f"now training on {self.num_segments} segments"
        )

    def state_dict(self) -> dict:
        return {
            "segments": self.segments,
            "stage": self.stage,
            "stage_start_step": self.stage_start_step,
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        saved = list(state_dict["segments"])
        if self.segments[: len(saved)] != saved:
            raise ValueError(
                f"curriculum.segments={self.segments} does not continue the checkpoint's {saved}: resume with the "
                "same list, or one that only adds stages at its end"
            )
        self.stage = state_dict["stage"]
        self.stage_start_step = state_dict["stage_start_step"]
        self.history = list(state_dict["history"])
        self._apply()
