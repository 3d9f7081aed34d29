"""Length generalisation: accuracy from one segment to a million tokens, for several seeds, with eval speed and memory.

    python scripts/bench_length.py [--models rmt baseline] [--seeds 0 1 2] [--data memorize]
                                   [--lengths 1 8 64 512 4096 32768] [--samples 32] [--precision 32-true]
                                   [--out outputs/bench_length] [--average-last N] [--overrides KEY=VALUE ...]

Trains each model with the default config and each seed (`python train.py model=<model> data=<data> seed=<seed>`),
then evaluates its last checkpoint on the test book at each length (in segments of 32 tokens: 32768 segments are
1,048,576 tokens); with `--average-last N`, the mean weights of its last N checkpoints instead
(`scripts/average_checkpoints.py`; the run then keeps every validation's checkpoint). Each length is evaluated by
its own `eval.py` process, so the process's peak resident memory is that length's. Prints a table (mean and worst
seed per length; tokens/s and peak memory per length) and writes bench_length_<data>_<models>.json and
accuracy_by_length_<data>_<models>.png (one line per model and seed) under --out, both rewritten as each seed's run
ends (`"complete": false` until the last), so a benchmark stopped after hours keeps the figures of its finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from average_checkpoints import write_average  # noqa: E402
from benchmarking import composed, machine, watched  # noqa: E402

from memlm.plots import plot_series_by_length  # noqa: E402
from memlm.runs import write_json  # noqa: E402
from memlm.training import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_seed(model: str, data: str, seed: int, run_dir: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    train(composed("train", [f"model={model}", f"data={data}", f"seed={seed}", f"run_dir={run_dir}",
                             "callbacks.progress_bar=null", *overrides]))
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"train_seconds": round(time.perf_counter() - started, 1), "steps": summary["global_step"],
            "trained_segments": summary["curriculum"]["segments"][summary["curriculum"]["stage"]]}


# eval.py run in a child that reports its own peak resident memory at exit. The child's kernel accounting carries
# the RSS the benchmark process had when it forked (getrusage's ru_maxrss survives exec); VmHWM is the new
# process image's own high-water mark.
EVAL_REPORTING_PEAK = """
import atexit, runpy, sys
def report_peak():
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM:")), flush=True)
atexit.register(report_peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def evaluate_length(checkpoint: Path, segments: int, samples: int, precision: str, out_dir: Path) -> dict:
    """One length in a fresh `eval.py` process: its accuracy, tokens/s, and the process's peak memory (Linux)."""
    # One segment first warms the process up (kernels, allocator), so the length's tokens/s is its steady rate;
    # one segment adds nothing to the peak memory of a longer length.
    lengths = ",".join(map(str, sorted({1, segments})))
    command = [sys.executable, "-c", EVAL_REPORTING_PEAK, str(REPO / "eval.py"), f"ckpt_path={checkpoint}",
               f"lengths=[{lengths}]", f"samples={samples}", f"batch_size={samples}", "accelerator=cpu",
               f"precision={precision}", f"hydra.run.dir={out_dir}"]
    log = out_dir.parent / f"eval_{segments}.log"
    with open(log, "w") as file:
        result = subprocess.run(command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"eval.py at {segments} segments failed: see {log}")
    peak_kib = next(int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("VmHWM:"))
    with open(out_dir / "accuracy_by_length.csv") as file:
        row = next(row for row in csv.DictReader(file) if int(row["segments"]) == segments)
    return {"accuracy": float(row["accuracy"]), "seconds": float(row["seconds"]),
            "tokens_per_s": float(row["tokens_per_s"]), "peak_rss_mib": round(peak_kib / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rmt", "baseline"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", default="memorize")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1, 8, 64, 512, 4096, 32768],
                        help="segment counts (32 tokens each)")
    parser.add_argument("--samples", type=int, default=32, help="samples per length (one evaluation batch)")
    parser.add_argument("--precision", default="32-true", help="eval.py's precision (bf16-mixed: bf16 autocast)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_length"))
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra train.py overrides (debug=limit for a smoke run); the figures use none")
    parser.add_argument("--average-last", type=int, default=None, metavar="N",
                        help="evaluate the mean weights of each run's last N checkpoints in place of last.ckpt")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    for model in args.models:
        for seed in args.seeds:
            run_dir = out / args.data / model / f"seed{seed}"
            keep_every = ["callbacks.model_checkpoint.save_top_k=-1"] if args.average_last else []
            loads = {}
            with watched(f"{model} seed {seed}'s training", loads):
                trained = train_seed(model, args.data, seed, run_dir, [*args.overrides, *keep_every])
            run = {"model": model, "seed": seed, **trained, "averaged_last": args.average_last, "lengths": {},
                   "others_cores": loads}
            checkpoint = run_dir / "checkpoints" / "last.ckpt"
            if args.average_last:
                checkpoint = write_average(run_dir, args.average_last)
            for n in args.lengths:
                with watched(f"{model} seed {seed}'s evaluation at {n} segments", loads):
                    result = evaluate_length(checkpoint, n, args.samples, args.precision, run_dir / f"eval{n}")
                run["lengths"][n] = result
                print(f"{model} seed {seed}: {n} segments, accuracy {result['accuracy']:.3f}, "
                      f"{result['tokens_per_s']:.0f} tokens/s, {result['peak_rss_mib']:.0f} MiB", flush=True)
            runs.append(run)
            report, written = write_report(args, out, runs, complete=len(runs) == len(args.models) * len(args.seeds))

    print_table(report)
    print("\n" + "\n".join(f"written: {path}" for path in written))


def write_report(args: argparse.Namespace, out: Path, runs: list[dict], complete: bool) -> tuple[dict, list[Path]]:
    """The JSON report and the plot of the runs finished so far; their paths."""
    models = [model for model in args.models if any(run["model"] == model for run in runs)]
    report = {"machine": machine(), "data": args.data, "samples": args.samples, "precision": args.precision,
              "segment_tokens": 32, "lengths_in_segments": args.lengths, "complete": complete, "runs": runs,
              "summary": summarise(runs, models, args.lengths)}
    name = f"{args.data}_{'_'.join(args.models)}"
    path = out / f"bench_length_{name}.json"
    write_json(path, report)
    plot = plot_series_by_length(
        {f"{run['model']} seed {run['seed']}": {n: r["accuracy"] for n, r in run["lengths"].items()} for run in runs},
        out / f"accuracy_by_length_{name}.png", title=f"{args.data}: test accuracy by length ({args.samples} "
        "samples)", ylabel="accuracy", xlabel="segments of 32 tokens")
    return report, [path, plot]


def summarise(runs: list[dict], models: list[str], lengths: list[int]) -> dict:
    summary = {}
    for model in models:
        mine = [run for run in runs if run["model"] == model]
        summary[model] = {
            "train_seconds_max": max(run["train_seconds"] for run in mine),
            "steps": [run["steps"] for run in mine],
            "lengths": {n: {
                "mean": statistics.mean(run["lengths"][n]["accuracy"] for run in mine),
                "worst": min(run["lengths"][n]["accuracy"] for run in mine),
                "tokens_per_s": statistics.median(run["lengths"][n]["tokens_per_s"] for run in mine),
                "peak_rss_mib": max(run["lengths"][n]["peak_rss_mib"] for run in mine),
            } for n in lengths},
        }
    return summary


def print_table(report: dict) -> None:
    lengths = report["lengths_in_segments"]
    print(f"\n{report['data']}: accuracy by length, mean (worst) over seeds; {report['samples']} samples per length")
    print("| model | train time (max) | " + " | ".join(f"{n * 32:,} tok" for n in lengths) + " |")
    print("|" + "---|" * (2 + len(lengths)))
    for model, summary in report["summary"].items():
        minutes, seconds = divmod(summary["train_seconds_max"], 60)
        cells = " | ".join(f"{summary['lengths'][n]['mean']:.3f} ({summary['lengths'][n]['worst']:.3f})"
                           for n in lengths)
        print(f"| {model} | {int(minutes)}m{seconds:02.0f}s | {cells} |")
    print("\nevaluation speed (median over seeds) and peak resident memory (max over seeds)")
    print("| model | " + " | ".join(f"{n:,} seg" for n in lengths) + " |")
    print("|" + "---|" * (1 + len(lengths)))
    for model, summary in report["summary"].items():
        cells = " | ".join(f"{summary['lengths'][n]['tokens_per_s'] / 1000:.0f}k tok/s, "
                           f"{summary['lengths'][n]['peak_rss_mib']:.0f} MiB" for n in lengths)
        print(f"| {model} | {cells} |")


if __name__ == "__main__":
    main()
