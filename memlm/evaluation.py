"""`evaluate(cfg)`: a checkpoint's accuracy at a list of input lengths, far beyond the trained length if asked.

The model and the task come from the checkpoint (its hyper-parameters hold the training data config); `data.*`
keys in the eval config override them, for another background text or task. Each length is one fixed set of
samples of the test split, run through Lightning's validation loop: no gradients, and the segment loop keeps one
segment's activations plus the memory, so memory use is flat in the length. Samples are generated as they are
read, so nothing of size length x samples is ever held.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from memlm.curriculum import SegmentCurriculum
from memlm.module import load_checkpoint
from memlm.plots import plot_accuracy
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


def evaluate(cfg: DictConfig) -> dict[int, float]:
    """Accuracy by segment count; writes accuracy_by_length.csv and accuracy_by_length.png into cfg.out_dir."""
    model, checkpoint = load_checkpoint(cfg.ckpt_path)
    data = OmegaConf.merge(model.hparams.data, cfg.data, {"batch_size": cfg.batch_size})
    datamodule = build_datamodule(data, model)
    counts = segment_counts(list(cfg.lengths), cfg.unit, datamodule.segment_length)
    loaders = [datamodule.loader(datamodule.samples(cfg.split, n, cfg.samples)) for n in counts]
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    results = trainer.validate(model, dataloaders=loaders, verbose=False)
    accuracy = {n: results[i][f"val/accuracy_{n}seg"] for i, n in enumerate(counts)}
    write_report(Path(cfg.out_dir), accuracy, datamodule.segment_length, trained_segment_count(checkpoint), cfg)
    return accuracy


def trained_segment_count(checkpoint: dict) -> int | None:
    """The longest segment count the checkpoint's curriculum had reached, if it used one."""
    state = checkpoint.get("callbacks", {}).get(SegmentCurriculum.__qualname__)
    return state["segments"][state["stage"]] if state else None


def write_report(
    out_dir: Path, accuracy: dict[int, float], segment_length: int, trained_segments: int | None, cfg: DictConfig
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "accuracy_by_length.csv"
    with table.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["segments", "tokens", "accuracy", "samples"])
        for n, value in accuracy.items():
            writer.writerow([n, n * segment_length, f"{value:.4f}", cfg.samples])
    plot = plot_accuracy(accuracy, out_dir / "accuracy_by_length.png", title=f"accuracy by length ({cfg.split})",
                         trained_up_to=trained_segments)
    print(f"{'segments':>9} {'tokens':>9} {'accuracy':>9}")
    for n, value in accuracy.items():
        print(f"{n:>9} {n * segment_length:>9} {value:>9.3f}")
    print(f"table: {table}\nplot:  {plot}")
