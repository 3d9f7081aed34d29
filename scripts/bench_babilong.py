"""Every memory head against the no-memory baseline on BABILong: accuracy by task and length under the official rule.

    python scripts/bench_babilong.py [--heads armt rmt lm2 hmt lrmt baseline] [--tasks qa1 qa2 qa3 qa4 qa5]
                                     [--segments 1 2 4] [--steps-per-stage 300] [--segment-range upper_half]
                                     [--lengths 0k 1k 4k 16k] [--samples 100] [--reuse] [--overrides ...]
                                     [--out outputs/bench_babilong]

Every head trains on each task with the same backbone (the default 2-layer GPT-2 shape unless --overrides says
otherwise), segment length (`data=babilong`: 128 tokens), batch, optimiser and number of steps: a curriculum over
`--segments`, `--steps-per-stage` optimiser steps each, each batch drawing its segment count from the stage's
`--segment-range`. Each last checkpoint is evaluated by `eval.py` on `--samples` generated prompts per length
(test split of the background, so unseen books), answers generated greedily and scored with BABILong's rule.
`--reuse` evaluates existing checkpoints under --out instead of training again (longer lengths for the best heads:
`--heads armt rmt --tasks qa1 --lengths 64k 128k 1M --reuse`), and refuses before evaluating anything if a head x
task has no training record there. Prints a head x task table per length and writes
bench_babilong_<lengths>.json, rewritten as each head x task is evaluated (`"complete": false` until the last), and
a task x length heatmap per head (`<head>/babilong_accuracy.png`) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarking import composed, machine, train_on_budget  # noqa: E402

from memlm.evaluation import EVAL_CONFIG, evaluate  # noqa: E402
from memlm.evaluation.reports import TaskLengthReport  # noqa: E402
from memlm.metrics import metric_name  # noqa: E402
from memlm.runs import write_json  # noqa: E402

HEADS = {"armt": ["model=armt"], "rmt": ["model=rmt"], "lm2": ["model=lm2"], "hmt": ["model=hmt"],
         "lrmt": ["model=lrmt"], "baseline": ["model=baseline"]}
TASKS = ["qa1", "qa2", "qa3", "qa4", "qa5"]


def trained_run(head: str, task: str, args: argparse.Namespace) -> tuple[Path, dict]:
    """The run directory of `head` on `task`, trained on the budget unless --reuse finds it trained; and what
    the training recorded (time, steps, validation figures)."""
    run_dir = args.out / head / task
    if args.reuse:
        return run_dir, json.loads(training_record(run_dir).read_text())
    overrides = [*HEADS[head], "data=babilong", f"data.task={task}",
                 f"curriculum.segment_range={args.segment_range}", *args.overrides]
    metrics, seconds, others_cores = train_on_budget(overrides, run_dir, args.segments, args.steps_per_stage)
    training = {"overrides": overrides, "train_seconds": round(seconds, 1), "others_cores": others_cores,
                "steps": args.steps_per_stage * len(args.segments),
                "val_exact_match_by_segments": {n: metrics[metric_name("accuracy", n)] for n in args.segments}}
    write_json(training_record(run_dir), training)
    return run_dir, training


def training_record(run_dir: Path) -> Path:
    return run_dir / "bench_training.json"


def missing_records(args: argparse.Namespace) -> list[Path]:
    """The training records --reuse would need and --out lacks. Training those runs instead would silently use
    this call's --steps-per-stage and --overrides, not the ones the other runs were trained with."""
    records = (training_record(args.out / head / task) for head in args.heads for task in args.tasks)
    return [record for record in records if not record.is_file()]


def evaluated(run_dir: Path, task: str, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    report = evaluate(composed(EVAL_CONFIG, [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"babilong.lengths=[{','.join(args.lengths)}]",
        f"samples={args.samples}",
        f"out_dir={run_dir / 'eval'}",
        f"accelerator={args.accelerator}",
        f"precision={args.precision}",
    ]))
    return report.accuracy[task], time.perf_counter() - started


def print_tables(results: dict, lengths: list[str], tasks: list[str]) -> None:
    print("\n| head | train time (all tasks) | steps per task | task | " + " | ".join(lengths) + " |")
    print("|" + "---|" * (4 + len(lengths)))
    for head, by_task in results.items():
        seconds = sum(run["train_seconds"] for run in by_task.values())
        minutes, rest = divmod(seconds, 60)
        for task in tasks:
            run = by_task[task]
            cells = " | ".join(f"{run['accuracy_by_length'][length]:.2f}" for length in lengths)
            print(f"| {head} | {int(minutes)}m{rest:02.0f}s | {run['steps']} | {task} | {cells} |")
        if len(tasks) > 1:
            means = " | ".join(f"{statistics.mean(by_task[t]['accuracy_by_length'][length] for t in tasks):.2f}"
                               for length in lengths)
            print(f"| {head} | | | mean | {means} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=list(HEADS))
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    parser.add_argument("--steps-per-stage", type=int, default=300)
    parser.add_argument("--segments", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--segment-range", default="upper_half", help="curriculum.segment_range of every run")
    parser.add_argument("--lengths", nargs="+", default=["0k", "1k", "4k", "16k"])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--accelerator", default="cpu", help="eval.py's accelerator (the training's: --overrides)")
    parser.add_argument("--precision", default="32-true", help="eval.py's precision (bf16-mixed: bf16 autocast)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the checkpoints already under --out")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_babilong"))
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.reuse and (missing := missing_records(args)):
        parser.error(f"--reuse: no training record {', '.join(map(str, missing))}; train those heads and tasks "
                     "first (the same call without --reuse), or drop them from --heads / --tasks")

    results: dict[str, dict[str, dict]] = {}
    for head in args.heads:
        results[head] = {}
        for task in args.tasks:
            run_dir, training = trained_run(head, task, args)
            accuracy, eval_seconds = evaluated(run_dir, task, args)
            results[head][task] = {**training, "eval_seconds": round(eval_seconds, 1), "accuracy_by_length": accuracy}
            print(f"{head} {task}: " + ", ".join(f"{length} {value:.2f}" for length, value in accuracy.items()),
                  flush=True)
            written = write_report(args, results, complete=head == args.heads[-1] and task == args.tasks[-1])
        TaskLengthReport({task: run["accuracy_by_length"] for task, run in results[head].items()},
                         {task: dict.fromkeys(args.lengths, args.samples) for task in args.tasks}
                         ).write(args.out / head, title=f"BABILong accuracy, {head} ({args.samples} prompts each)")

    print_tables(results, args.lengths, args.tasks)
    print(f"\nwritten: {written}")


def write_report(args: argparse.Namespace, results: dict, complete: bool) -> Path:
    """The JSON report of the heads and tasks evaluated so far; its path."""
    path = args.out / f"bench_babilong_{'_'.join(args.lengths)}.json"
    write_json(path, {
        "machine": machine(), "segments_trained": args.segments, "steps_per_stage": args.steps_per_stage,
        "segment_range": args.segment_range, "overrides": args.overrides, "samples_per_length": args.samples,
        "precision": args.precision, "complete": complete, "results": results})
    return path


if __name__ == "__main__":
    main()
