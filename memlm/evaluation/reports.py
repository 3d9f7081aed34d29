"""What an evaluation writes: tables (CSV), plots and a printout, one report class per kind of result."""

from __future__ import annotations

import csv
from pathlib import Path

from memlm.data.babilong import length_tokens
from memlm.metrics import metric_name
from memlm.plots import plot_by_length, plot_by_segment, plot_heatmap


class LengthReport:
    """The figures of one length sweep (`by_length`: segment count -> figure; `by_position`: segment count ->
    {position: figure}), written as tables, plots and a printout."""

    def __init__(self, headline: str, samples: dict[int, int], metrics: dict[str, float], segment_length: int,
                 seconds: dict[int, float]):
        """`samples`: how many samples were scored at each segment count; `metrics`: the logged validation figures;
        `seconds`: the time each segment count took."""
        counts = list(samples)
        self.headline = headline
        self.samples = samples
        self.segment_length = segment_length
        self.seconds = seconds
        self.tokens_per_second = {n: samples[n] * n * segment_length / max(seconds[n], 1e-9) for n in counts}
        self.by_length = {n: metrics[metric_name(headline, n)] for n in counts}
        self.loss = {n: metrics[metric_name("loss", n)] for n in counts}
        # Language modelling also reports each segment position (positions no sample reached are absent).
        self.by_position = {
            n: {k: metrics[name] for k in range(1, n + 1) if (name := metric_name(headline, n, k)) in metrics}
            for n in counts
        }

    def write(self, out_dir: Path, split: str, trained_segments: int | None) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = self.headline
        table = out_dir / f"{name}_by_length.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["segments", "tokens", name, "loss", "samples", "seconds", "tokens_per_s"])
            for n, value in self.by_length.items():
                writer.writerow([n, n * self.segment_length, f"{value:.4f}", f"{self.loss[n]:.4f}", self.samples[n],
                                 f"{self.seconds[n]:.1f}", f"{self.tokens_per_second[n]:.0f}"])
        written = [table, plot_by_length(self.by_length, out_dir / f"{name}_by_length.png",
                                         title=f"{name} by length ({split})", ylabel=name,
                                         trained_up_to=trained_segments)]
        print(f"{'segments':>9} {'tokens':>9} {name:>9} {'tokens/s':>9}")
        for n, value in self.by_length.items():
            print(f"{n:>9} {n * self.segment_length:>9} {value:>9.3f} {self.tokens_per_second[n]:>9.0f}")
        if any(self.by_position.values()):
            written += self.write_by_position(out_dir, split)
        print("\n".join(f"written: {path}" for path in written))
        return written

    def write_by_position(self, out_dir: Path, split: str) -> list[Path]:
        name = self.headline
        table = out_dir / f"{name}_by_segment.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["segments", "position", name])
            for n, positions in self.by_position.items():
                writer.writerows([n, k, f"{value:.4f}"] for k, value in positions.items())
        series = {f"{n} segments": list(positions.values()) for n, positions in self.by_position.items() if n > 1}
        plot = plot_by_segment(series, out_dir / f"{name}_by_segment.png",
                               title=f"{name} by segment position ({split})", ylabel=name)
        print(f"{name} by segment position (first, last): " + ", ".join(
            f"{n} segments {positions[1]:.2f} -> {positions[max(positions)]:.2f}"
            for n, positions in self.by_position.items() if positions
        ))
        return [table, plot]


class TaskLengthReport:
    """Accuracy by task and length (`accuracy[task][length]`), written as a table, a heatmap and a printout."""

    def __init__(self, accuracy: dict[str, dict[str, float]], samples: dict[str, dict[str, int]]):
        self.accuracy = accuracy
        self.samples = samples

    def write(self, out_dir: Path, title: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        table = out_dir / "babilong_accuracy.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["task", "length", "tokens", "accuracy", "samples"])
            for task, by_length in self.accuracy.items():
                writer.writerows([task, length, length_tokens(length), f"{value:.4f}", self.samples[task][length]]
                                 for length, value in by_length.items())
        heatmap = plot_heatmap(self.accuracy, out_dir / "babilong_accuracy.png", title=title)
        lengths = list(next(iter(self.accuracy.values())))
        print(f"{'task':>6} " + " ".join(f"{length:>6}" for length in lengths))
        for task, by_length in self.accuracy.items():
            print(f"{task:>6} " + " ".join(f"{by_length[length]:>6.2f}" for length in lengths))
        print(f"written: {table}\nwritten: {heatmap}")
        return [table, heatmap]
