"""Figures people want to see: accuracy or perplexity against input length, and perplexity by segment position."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no display
import matplotlib.pyplot as plt


def plot_by_length(
    values: Mapping[int, float],
    path: Path,
    title: str,
    ylabel: str,
    xlabel: str = "segments",
    trained_up_to: int | None = None,
) -> Path:
    """A figure against length on a log2 axis, with the longest trained length marked if given."""
    return plot_series_by_length({None: values}, path, title, ylabel, xlabel, trained_up_to)


def plot_series_by_length(
    series: Mapping[str | None, Mapping[int, float]],
    path: Path,
    title: str,
    ylabel: str,
    xlabel: str = "segments",
    trained_up_to: int | None = None,
) -> Path:
    """One line per series (a run, a seed) against length on a log2 axis; a series labelled None has no legend."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        lengths = sorted(values)
        ax.plot(lengths, [values[n] for n in lengths], marker="o", label=label, alpha=0.8)
    if trained_up_to is not None:
        ax.axvline(trained_up_to, linestyle="--", color="grey", label=f"trained up to {trained_up_to}")
    if trained_up_to is not None or any(label is not None for label in series):
        ax.legend(fontsize=8)
    _log2_lengths(ax, sorted({n for values in series.values() for n in values}))
    if ylabel == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, path, title, xlabel, ylabel)


def plot_by_segment(by_position: Mapping[str, Sequence[float]], path: Path, title: str, ylabel: str = "ppl") -> Path:
    """One line per series: a figure at segment positions 1, 2, ... of a sample."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in by_position.items():
        ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) <= 32 else None, label=label)
    ax.legend()
    return _finish(fig, ax, path, title, "segment position in the sample", ylabel)


def plot_heatmap(values: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """Rows by columns of accuracies in [0, 1] (BABILong: task by length), each cell labelled with its value."""
    rows = list(values)
    columns = list(next(iter(values.values())))
    grid = [[values[row][column] for column in columns] for row in rows]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns), 1.2 + 0.5 * len(rows)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_xlabel("length")
    ax.set_title(title)
    return _save(fig, path)


def _log2_lengths(ax, lengths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    # "tight": the figure grows to hold every label, a title wider than its axes included (a 4-column heatmap's).
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
