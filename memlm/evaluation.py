"""`evaluate(cfg)`: a checkpoint's accuracy, or perplexity, at a list of input lengths, far beyond the trained
length if asked.

The model and the task come from the checkpoint (its hyper-parameters hold the training data config); `data.*`
keys in the eval config override them, for another background text, task or corpus. Each length is one fixed set
of samples of the test split (fact tasks: `samples` generated samples; language modelling: every token of the
first `samples` documents, cut into windows of that many segments), run through Lightning's validation loop: no
gradients, and the segment loop keeps one segment's activations plus the memory, so memory use is flat in the
length. Samples are made as they are read, so nothing of size length x samples is ever held.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from memlm.babilong_eval import TaskLengthReport, babilong_tasks, evaluate_babilong
from memlm.curriculum import SegmentCurriculum
from memlm.module import load_checkpoint
from memlm.plots import plot_by_length, plot_by_segment
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


class LengthReport:
    """The figures of one evaluation (`by_length`: segment count -> figure; `by_position`: segment count ->
    {position: figure}), written as tables, plots and a printout."""

    def __init__(self, headline: str, samples: dict[int, int], metrics: dict[str, float], segment_length: int):
        """`samples`: how many samples were scored at each segment count."""
        counts = list(samples)
        self.headline = headline
        self.samples = samples
        self.segment_length = segment_length
        self.by_length = {n: metrics[f"{headline}_{n}seg"] for n in counts}
        self.loss = {n: metrics[f"loss_{n}seg"] for n in counts}
        # Language modelling also reports each segment position (positions no sample reached are absent).
        self.by_position = {
            n: {k: metrics[f"{headline}_{n}seg/segment_{k}"] for k in range(1, n + 1)
                if f"{headline}_{n}seg/segment_{k}" in metrics}
            for n in counts
        }

    def write(self, out_dir: Path, trained_segments: int | None, cfg: DictConfig) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = self.headline
        table = out_dir / f"{name}_by_length.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["segments", "tokens", name, "loss", "samples"])
            for n, value in self.by_length.items():
                writer.writerow([n, n * self.segment_length, f"{value:.4f}", f"{self.loss[n]:.4f}", self.samples[n]])
        written = [table, plot_by_length(self.by_length, out_dir / f"{name}_by_length.png",
                                         title=f"{name} by length ({cfg.split})", ylabel=name,
                                         trained_up_to=trained_segments)]
        print(f"{'segments':>9} {'tokens':>9} {name:>9}")
        for n, value in self.by_length.items():
            print(f"{n:>9} {n * self.segment_length:>9} {value:>9.3f}")
        if any(self.by_position.values()):
            written += self.write_by_position(out_dir, cfg)
        print("\n".join(f"written: {path}" for path in written))

    def write_by_position(self, out_dir: Path, cfg: DictConfig) -> list[Path]:
        name = self.headline
        table = out_dir / f"{name}_by_segment.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["segments", "position", name])
            for n, positions in self.by_position.items():
                writer.writerows([n, k, f"{value:.4f}"] for k, value in positions.items())
        series = {f"{n} segments": list(positions.values()) for n, positions in self.by_position.items() if n > 1}
        plot = plot_by_segment(series, out_dir / f"{name}_by_segment.png",
                               title=f"{name} by segment position ({cfg.split})", ylabel=name)
        print(f"{name} by segment position (first, last): " + ", ".join(
            f"{n} segments {positions[1]:.2f} -> {positions[max(positions)]:.2f}"
            for n, positions in self.by_position.items() if positions
        ))
        return [table, plot]


def evaluate(cfg: DictConfig) -> LengthReport | TaskLengthReport:
    """The data's figure (accuracy, or perplexity for language modelling) by segment count, and for perplexity by
    segment position. Writes `<figure>_by_length.csv/.png` into cfg.out_dir and `ppl_by_segment.csv/.png`.
    With BABILong tasks (`babilong.tasks`, or a checkpoint trained on one), accuracy by task and length instead."""
    model, checkpoint = load_checkpoint(cfg.ckpt_path)
    data = OmegaConf.merge(model.hparams.data, cfg.data, {"batch_size": cfg.batch_size})
    tasks = babilong_tasks(cfg, data)
    if tasks:
        return evaluate_babilong(cfg, model, data, tasks)
    datamodule = build_datamodule(data, model)
    counts = segment_counts(list(cfg.lengths), cfg.unit, datamodule.segment_length)
    loaders = [datamodule.loader(datamodule.samples(cfg.split, n, cfg.samples)) for n in counts]
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    trainer.validate(model, dataloaders=loaders, verbose=False)
    metrics = {name.removeprefix("val/"): float(value) for name, value in trainer.callback_metrics.items()}
    samples = {n: len(loader.dataset) for n, loader in zip(counts, loaders, strict=True)}
    report = LengthReport(model.objective.headline, samples, metrics, datamodule.segment_length)
    report.write(Path(cfg.out_dir), trained_segment_count(checkpoint), cfg)
    return report


def trained_segment_count(checkpoint: dict) -> int | None:
    """The longest segment count the checkpoint's curriculum had reached, if it used one."""
    state = checkpoint.get("callbacks", {}).get(SegmentCurriculum.__qualname__)
    return state["segments"][state["stage"]] if state else None
