"""The embedded default against the no-memory baseline: training time and accuracy by length.

    python scripts/bench_default.py [--heads rmt baseline] [--lengths 1 2 4 8 16 32] [--out outputs/bench_default]

Trains each head with the default config (`python train.py model=<head>`), then evaluates its last checkpoint on
the test split at each length. Prints a table and writes bench_default.json (and each run's directory) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarking import composed, machine  # noqa: E402

from memlm.evaluation import EVAL_CONFIG, evaluate  # noqa: E402
from memlm.metrics import metric_name  # noqa: E402
from memlm.training import train  # noqa: E402


def bench_head(head: str, lengths: list[int], samples: int, out: Path) -> dict:
    run_dir = out / head
    started = time.perf_counter()
    metrics = train(composed("train", [f"model={head}", f"run_dir={run_dir}", "callbacks.progress_bar=null"]))
    train_seconds = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    test_accuracy = evaluate(composed(EVAL_CONFIG, [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"lengths=[{','.join(map(str, lengths))}]",
        f"samples={samples}",
        f"out_dir={run_dir / 'eval'}",
        "accelerator=cpu",
    ])).by_length
    return {
        "head": head,
        "train_seconds": round(train_seconds, 1),
        "steps": summary["global_step"],
        "curriculum": summary["curriculum"]["history"],
        "val_accuracy_by_segments": {n: metrics[metric_name("accuracy", n)] for n in summary["curriculum"]["segments"]
                                     if metric_name("accuracy", n) in metrics},
        "test_accuracy_by_segments": test_accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", default=["rmt", "baseline"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_default"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results = [bench_head(head, args.lengths, args.samples, args.out) for head in args.heads]
    report = {
        "machine": machine(),
        "lengths_in_segments_of_32_tokens": args.lengths,
        "results": results,
    }
    (args.out / "bench_default.json").write_text(json.dumps(report, indent=2))

    header = "| head | train time | steps | " + " | ".join(f"{n} seg" for n in args.lengths) + " |"
    print(header)
    print("|" + "---|" * (3 + len(args.lengths)))
    for result in results:
        accuracy = " | ".join(f"{result['test_accuracy_by_segments'][n]:.3f}" for n in args.lengths)
        minutes, seconds = divmod(result["train_seconds"], 60)
        print(f"| {result['head']} | {int(minutes)}m{seconds:04.1f}s | {result['steps']} | {accuracy} |")
    print(f"\nwritten: {args.out / 'bench_default.json'}")


if __name__ == "__main__":
    main()
