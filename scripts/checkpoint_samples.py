"""What the scripts that study a trained checkpoint on its own fact task's samples share (`switch_openings.py`,
`reasoning_questions.py`, `armt_writes.py`, `qa1_answers.py`): their command line, the model and its samples, where
a sample's facts are, its story read back, what the model said for each answer, and the report written beside the
run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from memlm.checkpointing import load_checkpoint
from memlm.data.base import IGNORE
from memlm.data.facts import SamplePlan, Tokens
from memlm.module import MemoryLM
from memlm.runs import write_json
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


def unless_trained_on(task: str) -> Callable[[MemoryLM], str | None]:
    """The refusal (`model_and_samples`) of a checkpoint trained on any data.task but `task`."""

    def refusal(model: MemoryLM) -> str | None:
        trained_on = model.hparams.data.get("task")
        return None if trained_on == task else f"trained on data.task={trained_on}, not {task}"

    return refusal


def fact_segments(plan: SamplePlan) -> list[int]:
    """The segments holding a token of a fact: every literal piece but the last (the question and answer)."""
    starts, length = plan.piece_starts, plan.segment_length
    facts = [i for i, piece in enumerate(plan.pieces) if isinstance(piece.source, Tokens)][:-1]
    return sorted({k for i in facts for k in range(starts[i] // length, (starts[i + 1] - 1) // length + 1)})


def story_of(plan: SamplePlan, decode: Callable[[list[int]], str]) -> tuple[list[str], str]:
    """A sample's facts and question, read back from its literal pieces (the last holds the question and answer)."""
    literals = [decode(piece.read()).strip() for piece in plan.pieces if isinstance(piece.source, Tokens)]
    question = literals[-1][: literals[-1].index("?") + 1]
    return literals[:-1], question


@contextmanager
def answers_said(model: MemoryLM, batch: dict) -> Iterator[list[list[int]]]:
    """Within it, the model's unroll of `batch` is watched; once it is left, the list it gave holds, for each sample,
    the model's argmax at each of its answer positions, in order (as eval.py scores them)."""
    scored = batch["labels"] != IGNORE  # sample, segment, position
    answer_segments = set(scored.any(dim=2).nonzero()[:, 1].tolist())
    token_states = []

    def keep_answer_states(module, inputs, output):
        # Only the segments that hold answer tokens: keeping every segment's would grow with the length.
        token_states.append(output.token_states if len(token_states) in answer_segments else None)

    said = [[] for _ in range(scored.shape[0])]
    hook = model.head.register_forward_hook(keep_answer_states)
    try:
        yield said
    finally:
        hook.remove()
    positions = scored.nonzero().tolist()  # (sample, segment, position), each sample's in order
    states = torch.stack([token_states[segment][sample, position] for sample, segment, position in positions])
    for (sample, _, _), token in zip(positions, model.head.backbone.logits(states).argmax(dim=-1).tolist(),
                                     strict=True):
        said[sample].append(token)


def batches(plans: list[SamplePlan], size: int) -> Iterator[list[SamplePlan]]:
    for first in range(0, len(plans), size):
        yield plans[first : first + size]


def written_report(name: str, args: argparse.Namespace, figures: dict) -> dict:
    """The report (what was studied, then `figures`), written as <name>_<segments>seg.json beside the checkpoint's
    run directory."""
    report = {"checkpoint": str(args.checkpoint), "segments": args.segments, "samples": args.samples,
              "split": args.split, **figures}
    out = args.checkpoint.resolve().parent.parent / f"{name}_{args.segments}seg.json"
    write_json(out, report)
    print(f"written: {out}")
    return report
