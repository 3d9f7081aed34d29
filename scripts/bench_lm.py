"""HMT against RMT and the no-memory baseline on language modelling: token-weighted test perplexity.

    python scripts/bench_lm.py [--heads hmt hmt_published rmt baseline] [--data pg19] [--steps-per-stage 150]
                               [--segments 1 2 4] [--lengths 1 4 16] [--out outputs/bench_lm]

Every head trains with the same backbone (the default 2-layer GPT-2 shape), segment length, batch, optimiser and
number of steps: a curriculum over `--segments`, `--steps-per-stage` optimiser steps each (`data=<data>`, which
advances on steps alone). Each last checkpoint is then evaluated by `eval.py` on every token of the test split at
each of `--lengths` segments (memory empty at the start of each window). `hmt` is HMT's causal default
(`model.summary_source=previous`); `hmt_published` is the published summary of the segment's own first tokens,
whose predictions can see later tokens, so its perplexity is not a language model's. Prints a table and writes
bench_lm.json, rewritten as each head is evaluated (`"complete": false` until the last), and each run's directory
under --out.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarking import composed, machine, train_on_budget  # noqa: E402

from memlm.evaluation import EVAL_CONFIG, evaluate  # noqa: E402
from memlm.runs import write_json  # noqa: E402

HEADS = {
    "hmt": ["model=hmt"],
    "hmt_published": ["model=hmt", "model.summary_source=current"],
    "rmt": ["model=rmt"],
    "baseline": ["model=baseline"],
}


def bench_head(head: str, args: argparse.Namespace) -> dict:
    run_dir = args.out / head
    _, train_seconds, others_cores = train_on_budget([*HEADS[head], f"data={args.data}"], run_dir, args.segments,
                                                     args.steps_per_stage)
    started = time.perf_counter()
    report = evaluate(composed(EVAL_CONFIG, [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"lengths=[{','.join(map(str, args.lengths))}]",
        "samples=null",
        f"out_dir={run_dir / 'eval'}",
        "accelerator=cpu",
    ]))
    return {
        "head": head,
        "overrides": HEADS[head],
        "train_seconds": round(train_seconds, 1),
        "others_cores_in_training": others_cores,
        "eval_seconds": round(time.perf_counter() - started, 1),
        "steps": args.steps_per_stage * len(args.segments),
        "test_ppl_by_segments": report.by_length,
        "test_ppl_by_segment_position": {n: list(positions.values()) for n, positions in report.by_position.items()},
    }


def print_table(results: list[dict], lengths: list[int]) -> None:
    """Perplexity at each length; and at the longest, the first segment of each window (no memory in any head)
    against the geometric mean over the later ones. Positions hold different text, so compare heads at the same
    position, not one position with another."""
    longest = max(lengths)
    print(f"| head | train time | steps | {' | '.join(f'ppl at {n} seg' for n in lengths)} "
          f"| at {longest} seg: segment 1 / segments 2-{longest} |")
    print("|" + "---|" * (4 + len(lengths)))
    for result in results:
        ppl = " | ".join(f"{result['test_ppl_by_segments'][n]:.1f}" for n in lengths)
        first, *later = result["test_ppl_by_segment_position"][longest]
        later_mean = math.exp(sum(map(math.log, later)) / len(later)) if later else float("nan")
        minutes, seconds = divmod(result["train_seconds"], 60)
        print(f"| {result['head']} | {int(minutes)}m{seconds:04.1f}s | {result['steps']} | {ppl} "
              f"| {first:.1f} / {later_mean:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=list(HEADS))
    parser.add_argument("--data", choices=["pg19", "wikitext103"], default="pg19")
    parser.add_argument("--steps-per-stage", type=int, default=150)
    parser.add_argument("--segments", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_lm"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for head in args.heads:
        results.append(bench_head(head, args))
        report = {
            "machine": machine(),
            "data": args.data,
            "segments_trained": args.segments,
            "steps_per_stage": args.steps_per_stage,
            "lengths_in_segments": args.lengths,
            "complete": len(results) == len(args.heads),
            "results": results,
        }
        write_json(args.out / "bench_lm.json", report)

    print_table(results, args.lengths)
    print(f"\nwritten: {args.out / 'bench_lm.json'}")


if __name__ == "__main__":
    main()
