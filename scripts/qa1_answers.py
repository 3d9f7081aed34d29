"""Which place a BABILong qa1 checkpoint answers, against its story: whether it has learnt whose move is whose.

    python scripts/qa1_answers.py <checkpoint trained on data=babilong data.task=qa1> [--segments 1]
                                  [--samples 512] [--split test] [--batch-size 32]

A qa1 story moves people between places and asks where one of them is; the place of that person's last move
answers it. The place each sample's answer starts with (its first token) is put under one kind: right, a place the
asked person moved to before (their move is found, not their last), another person's place (the place found is not
theirs), or none of the story's places. Accuracy is also given by how many moves follow the asked person's last
one (at 0 their move is the story's last, so the most recent place answers it), and on the stories of two moves by
two different people, where only the name tells the two places apart: a model that answers those at 1/2 has not
bound places to people, and guesses among the story's places. Prints the tables and writes
qa1_answers_<segments>seg.json beside the checkpoint's run directory.
"""

from __future__ import annotations

import os
import re
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from checkpoint_samples import (  # noqa: E402
    answers_said,
    batches,
    command_line,
    model_and_samples,
    story_of,
    unless_trained_on,
    written_report,
)
from torch.utils.data import default_collate  # noqa: E402

from memlm.data.babi import MOVE_VERBS  # noqa: E402

MOVE = re.compile(rf"(\w+) (?:{'|'.join(sorted(MOVE_VERBS, key=len, reverse=True))}) to the (\w+)\.")
QUESTION = re.compile(r"Where is (\w+)\?")
KINDS = ("right", "a place the asked person left", "another person's place", "none of the story's places")
AFTER = ("0", "1", "2", "3 or more")


def moves_of(facts: list[str]) -> list[tuple[str, str]]:
    """(person, place) of each of a qa1 story's facts, in order."""
    moves = [MOVE.fullmatch(fact) for fact in facts]
    if not moves or None in moves:
        raise ValueError(f"not a qa1 story: {facts}")
    return [move.groups() for move in moves]


def answer_kind(moves: list[tuple[str, str]], asked: str, said: str) -> str:
    """Where the place `said` comes from in the story (one of KINDS)."""
    theirs = [place for person, place in moves if person == asked]
    if said == theirs[-1]:
        return KINDS[0]
    if said in theirs:
        return KINDS[1]
    return KINDS[2] if said in {place for _, place in moves} else KINDS[3]


def moves_after(moves: list[tuple[str, str]], asked: str) -> str:
    """How many moves follow the asked person's last one (one of AFTER)."""
    last = max(i for i, (person, _) in enumerate(moves) if person == asked)
    return AFTER[min(len(moves) - 1 - last, len(AFTER) - 1)]


def two_people_two_moves(moves: list[tuple[str, str]]) -> bool:
    return len(moves) == 2 and moves[0][0] != moves[1][0]


def main(argv: list[str] | None = None) -> dict:
    parser = command_line(__doc__, segments=1, samples=512, batch_size=32)
    args = parser.parse_args(argv)
    model, plans = model_and_samples(parser, args, unless_trained_on("qa1"))
    kinds, right_after, after, right_two, two = Counter(), Counter(), Counter(), 0, 0
    for group in batches(plans, args.batch_size):
        batch = default_collate([plan.whole() for plan in group])
        with torch.no_grad(), answers_said(model, batch) as said:
            model.unroll(batch)
        for plan, tokens in zip(group, said, strict=True):
            facts, question = story_of(plan, model.tokenizer.decode)
            moves, asked = moves_of(facts), QUESTION.fullmatch(question)[1]
            kind = answer_kind(moves, asked, model.tokenizer.decode(tokens[:1]).strip())
            bucket = moves_after(moves, asked)
            kinds[kind] += 1
            after[bucket] += 1
            right_after[bucket] += kind == KINDS[0]
            if two_people_two_moves(moves):
                two += 1
                right_two += kind == KINDS[0]
    accuracy = kinds[KINDS[0]] / args.samples
    answers = [{"kind": kind, "samples": kinds[kind]} for kind in KINDS]
    by_moves_after = [{"moves_after": bucket, "samples": after[bucket], "accuracy": right_after[bucket] / after[bucket]}
                      for bucket in AFTER if after[bucket]]
    two_people = {"samples": two, "accuracy": right_two / two if two else None}
    print(f"{args.samples} {args.split} samples of {args.segments} segments: the place said is right in "
          f"{accuracy:.3f}")
    print("| place said | samples |\n|---|---|")
    for row in answers:
        print(f"| {row['kind']} | {row['samples']} |")
    print("| moves after the asked person's last | samples | accuracy |\n|---|---|---|")
    for row in by_moves_after:
        print(f"| {row['moves_after']} | {row['samples']} | {row['accuracy']:.3f} |")
    if two:
        print(f"two moves by two people: {right_two} of {two} right ({right_two / two:.3f}; 1/2 without binding)")
    return written_report("qa1_answers", args, {"accuracy": accuracy, "answers": answers,
                                                "by_moves_after": by_moves_after, "two_people_two_moves": two_people})


if __name__ == "__main__":
    main()
