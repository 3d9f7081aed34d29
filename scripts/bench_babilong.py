"""Every memory head against the no-memory baseline on BABILong: accuracy by length under the official rule.

    python scripts/bench_babilong.py [--heads lm2 rmt hmt baseline] [--task qa1] [--steps-per-stage 300]
                                     [--segments 1 2 4] [--lengths 0k 1k 2k 4k 8k] [--samples 100]
                                     [--out outputs/bench_babilong]

Every head trains with the same backbone (the default 2-layer GPT-2 shape), segment length (`data=babilong`: 128
tokens), batch, optimiser and number of steps: a curriculum over `--segments`, `--steps-per-stage` optimiser steps
each. Each last checkpoint is then evaluated by `eval.py` on `--samples` generated prompts per length (test split
of the background, so unseen books), answers generated greedily and scored with BABILong's rule. Prints a table
and writes bench_babilong.json (and each run's directory) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarking import composed, machine, train_on_budget  # noqa: E402

from memlm.evaluation import EVAL_CONFIG, evaluate  # noqa: E402
from memlm.metrics import metric_name  # noqa: E402

HEADS = {"lm2": ["model=lm2"], "rmt": ["model=rmt"], "hmt": ["model=hmt"], "baseline": ["model=baseline"]}


def bench_head(head: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / head
    metrics, train_seconds = train_on_budget([*HEADS[head], "data=babilong", f"data.task={args.task}"], run_dir,
                                             args.segments, args.steps_per_stage)
    started = time.perf_counter()
    report = evaluate(composed(EVAL_CONFIG, [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"babilong.lengths=[{','.join(args.lengths)}]",
        f"samples={args.samples}",
        f"out_dir={run_dir / 'eval'}",
        "accelerator=cpu",
    ]))
    return {
        "head": head,
        "overrides": HEADS[head],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "steps": args.steps_per_stage * len(args.segments),
        "val_exact_match_by_segments": {n: metrics[metric_name("accuracy", n)] for n in args.segments},
        "accuracy_by_length": report.accuracy[args.task],
    }


def print_table(results: list[dict], lengths: list[str]) -> None:
    print(f"| head | train time | steps | {' | '.join(lengths)} |")
    print("|" + "---|" * (3 + len(lengths)))
    for result in results:
        minutes, seconds = divmod(result["train_seconds"], 60)
        accuracy = " | ".join(f"{result['accuracy_by_length'][length]:.2f}" for length in lengths)
        print(f"| {result['head']} | {int(minutes)}m{seconds:04.1f}s | {result['steps']} | {accuracy} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=list(HEADS))
    parser.add_argument("--task", choices=["qa1", "qa2", "qa3", "qa4", "qa5"], default="qa1")
    parser.add_argument("--steps-per-stage", type=int, default=300)
    parser.add_argument("--segments", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--lengths", nargs="+", default=["0k", "1k", "2k", "4k", "8k"])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_babilong"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    results = [bench_head(head, args) for head in args.heads]
    report = {
        "machine": machine(),
        "task": args.task,
        "segments_trained": args.segments,
        "steps_per_stage": args.steps_per_stage,
        "samples_per_length": args.samples,
        "results": results,
    }
    (args.out / "bench_babilong.json").write_text(json.dumps(report, indent=2))

    print(f"BABILong {args.task}, accuracy (official rule) by length:")
    print_table(results, args.lengths)
    print(f"\nwritten: {args.out / 'bench_babilong.json'}")


if __name__ == "__main__":
    main()
