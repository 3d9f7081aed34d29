"""Figures people want to see: accuracy against input length."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no display
import matplotlib.pyplot as plt


def plot_accuracy(
    accuracy: Mapping[int, float],
    path: Path,
    title: str,
    xlabel: str = "segments",
    trained_up_to: int | None = None,
) -> Path:
    """Accuracy against length on a log2 axis, with the longest trained length marked if given."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = sorted(accuracy)
    ax.plot(lengths, [accuracy[n] for n in lengths], marker="o")
    if trained_up_to is not None:
        ax.axvline(trained_up_to, linestyle="--", color="grey", label=f"trained up to {trained_up_to}")
        ax.legend()
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
