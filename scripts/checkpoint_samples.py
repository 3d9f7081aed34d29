"""What the scripts that study a trained checkpoint on its own fact task's samples share (`switch_openings.py`,
`reasoning_questions.py`, `armt_writes.py`): their command line, the model and its samples, where a sample's facts
are, and the report written beside the run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from memlm.checkpointing import load_checkpoint
from memlm.data.facts import SamplePlan, Tokens
from memlm.module import MemoryLM
from memlm.training import build_datamodule


def command_line(description: str, segments: int, samples: int, batch_size: int) -> argparse.ArgumentParser:
    """The checkpoint, --segments, --samples, --split and --batch-size, with these defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--segments", type=int, default=segments)
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    return parser


def model_and_samples(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      refusal: Callable[[MemoryLM], str | None]) -> tuple[MemoryLM, list[SamplePlan]]:
    """The checkpoint's model, in eval mode, and `args.samples` samples of `args.segments` segments of its own fact
    task from `args.split`. `refusal(model)` says why the script cannot study this checkpoint, or None."""
    model, _ = load_checkpoint(str(args.checkpoint))
    model.eval()
    reason = refusal(model)
    if reason:
        parser.error(f"{args.checkpoint}: {reason}")
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, model.head.backbone.is_decoder)
    if not hasattr(datamodule, "task"):
        parser.error(f"{args.checkpoint}: trained on {model.hparams.data['_target_']}, not a fact task")
    return model, list(datamodule.samples(args.split, args.segments, args.samples, streamed=True))


def fact_segments(plan: SamplePlan) -> list[int]:
    """The segments holding a token of a fact: every literal piece but the last (the question and answer)."""
    starts, length = plan.piece_starts, plan.segment_length
    facts = [i for i, piece in enumerate(plan.pieces) if isinstance(piece.source, Tokens)][:-1]
    return sorted({k for i in facts for k in range(starts[i] // length, (starts[i + 1] - 1) // length + 1)})


def batches(plans: list[SamplePlan], size: int) -> Iterator[list[SamplePlan]]:
    for first in range(0, len(plans), size):
        yield plans[first : first + size]


def written_report(name: str, args: argparse.Namespace, figures: dict) -> dict:
    """The report (what was studied, then `figures`), written as <name>_<segments>seg.json beside the checkpoint's
    run directory."""
    report = {"checkpoint": str(args.checkpoint), "segments": args.segments, "samples": args.samples,
              "split": args.split, **figures}
    out = args.checkpoint.resolve().parent.parent / f"{name}_{args.segments}seg.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return report
