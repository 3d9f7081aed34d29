"""The length sweep: a checkpoint's accuracy, or perplexity, at a list of input lengths, far beyond the trained
length if asked.

Each length is one fixed set of samples of the split (fact tasks: `samples` generated samples; language modelling:
every token of the first `samples` documents, cut into windows of that many segments), run through Lightning's
validation loop: no gradients, and the segment loop keeps one segment's activations plus the memory, so memory use
is flat in the length. Samples are made as they are read, so nothing of size length x samples is ever held.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from tqdm.auto import tqdm

from memlm.checkpointing import trained_segment_count
from memlm.evaluation.reports import LengthReport
from memlm.module import MemoryLM
from memlm.training import build_datamodule

UNITS = ("segments", "tokens")


def segment_counts(lengths: list[int], unit: str, segment_length: int) -> list[int]:
    """Lengths as whole segment counts; token lengths round up to fill the last segment."""
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r} is not one of {UNITS}")
    if not lengths or any(length < 1 for length in lengths):
        raise ValueError(f"lengths={lengths} must be a non-empty list of positive {unit}")
    if unit == "tokens":
        return sorted({math.ceil(length / segment_length) for length in lengths})
    return sorted(set(lengths))


def token_bar(total_tokens: int, description: str) -> tqdm:
    """The progress bar every evaluation shows over the tokens it reads: tokens/s and time left."""
    return tqdm(total=total_tokens, desc=description, unit="tok", unit_scale=True, dynamic_ncols=True,
                mininterval=1.0)


class TokenProgress:
    """A progress bar over one length's tokens (tokens/s, time left, and the segment the batch is at), opened at
    its first block so that the lengths' bars follow one another."""

    def __init__(self, num_segments: int, total_tokens: int):
        self.num_segments = num_segments
        self.total_tokens = total_tokens
        self.bar = None

    def __call__(self, segments_read: int, tokens: int) -> None:
        if self.bar is None:
            self.bar = token_bar(self.total_tokens, f"{self.num_segments} segments")
        self.bar.set_postfix_str(f"segment {segments_read}/{self.num_segments}", refresh=False)
        self.bar.update(tokens)
        if self.bar.n >= self.total_tokens:
            self.bar.close()


class LengthTimer(Callback):
    """Seconds spent in the validation steps of each dataloader (each length), data reading included."""

    def __init__(self):
        self.seconds: dict[int, float] = defaultdict(float)
        self.started = 0.0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.started = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seconds[dataloader_idx] += time.perf_counter() - self.started


def evaluate_lengths(cfg: DictConfig, model: MemoryLM, checkpoint: dict, data: DictConfig) -> LengthReport:
    """The data's figure by segment count (and for perplexity by segment position); writes
    `<figure>_by_length.csv/.png` (and `<figure>_by_segment.csv/.png`) into `cfg.out_dir`."""
    datamodule = build_datamodule(data, model.tokenizer, model.head.backbone.is_decoder)
    model.head.check_fits(datamodule.segment_length)
    datamodule.prepare_data()
    counts = segment_counts(list(cfg.lengths), cfg.unit, datamodule.segment_length)
    loaders = []
    for n in counts:
        tokens = (cfg.samples or 0) * n * datamodule.segment_length
        loaders.append(datamodule.evaluation_loader(cfg.split, n, cfg.samples, TokenProgress(n, tokens)))
    timer = LengthTimer()
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[timer])
    trainer.validate(model, dataloaders=loaders, verbose=False)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    samples = {n: len(loader.dataset) for n, loader in zip(counts, loaders, strict=True)}
    seconds = {n: timer.seconds[index] for index, n in enumerate(counts)}
    report = LengthReport(model.objective.headline, samples, metrics, datamodule.segment_length, seconds)
    report.write(Path(cfg.out_dir), cfg.split, trained_segment_count(checkpoint))
    return report
