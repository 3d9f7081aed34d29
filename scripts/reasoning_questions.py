"""Which reasoning questions a checkpoint answers, by what the question asks about.

    python scripts/reasoning_questions.py <checkpoint trained on data=reasoning> [--segments 1] [--samples 256]
                                          [--split test] [--batch-size 32]

A reasoning story holds two relations that share one place ("The kitchen is north of the garden. The garden is
east of the office.") and asks about one of them. A question that names a place only one fact names ("What is
north of the office?") is answered by the shared place, the one place both facts name: finding it needs no
direction. A question that names the shared place ("What is west of the garden?") has two candidate answers, and
only composing the question's direction with each fact's (and its word order: the garden is *east of* the office,
so the office is *west of* the garden) picks one. Scoring the two kinds apart tells a model that has learnt the
relations from one that picks between the candidates, and, at long lengths, a memory that lost a fact from a
backbone that never learnt to compose. Prints the table and writes reasoning_questions_<segments>seg.json beside
the checkpoint's run directory.
"""

from __future__ import annotations

import os
import re
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from checkpoint_samples import (  # noqa: E402
    batches,
    command_line,
    model_and_samples,
    story_of,
    unless_trained_on,
    written_report,
)
from torch.utils.data import default_collate  # noqa: E402

from memlm.data.facts import SamplePlan  # noqa: E402

# The sentences memlm.data.babi.relation_story writes.
FACT = re.compile(r"The (\w+) is \w+ of the (\w+)\.")
QUESTION = re.compile(r"What is (?:\w+ of the (\w+)|the (\w+) \w+ of)\?")
KINDS = ("names the shared place", "names one fact's place")


def question_kind(facts: list[str], question: str) -> str:
    """Whether `question` names the place both `facts` name (its answer needs the directions composed) or a place
    only one of them names (its answer is the shared place)."""
    relations = [FACT.fullmatch(fact) for fact in facts]
    match = QUESTION.fullmatch(question)
    if len(facts) != 2 or None in relations or match is None:
        raise ValueError(f"not a reasoning story: facts {facts}, question {question!r}")
    places = Counter(place for relation in relations for place in relation.groups())
    return KINDS[0] if places[match[1] or match[2]] == 2 else KINDS[1]


@torch.no_grad()
def answered(model, plans: list[SamplePlan]) -> list[bool]:
    """Whether each sample is answered right, as eval.py scores it."""
    _, tally = model.unroll(default_collate([plan.whole() for plan in plans]))
    return [bool(right) for right in tally.correct]


def main(argv: list[str] | None = None) -> dict:
    parser = command_line(__doc__, segments=1, samples=256, batch_size=32)
    args = parser.parse_args(argv)
    model, plans = model_and_samples(parser, args, unless_trained_on("reasoning"))
    right, total = Counter(), Counter()
    for batch in batches(plans, args.batch_size):
        for plan, correct in zip(batch, answered(model, batch), strict=True):
            kind = question_kind(*story_of(plan, model.tokenizer.decode))
            total[kind] += 1
            right[kind] += correct
    rows = [{"question": kind, "samples": total[kind], "accuracy": right[kind] / total[kind]}
            for kind in KINDS if total[kind]]
    accuracy = sum(right.values()) / args.samples
    print(f"{args.samples} {args.split} samples of {args.segments} segments: accuracy {accuracy:.3f}")
    print("| question | samples | accuracy |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['question']} | {row['samples']} | {row['accuracy']:.3f} |")
    return written_report("reasoning_questions", args, {"accuracy": accuracy, "rows": rows})


if __name__ == "__main__":
    main()
