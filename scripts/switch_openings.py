"""Where an RMT switch opens over a fact task's test samples, against where the facts are, and whether each sample
was answered right.

    python scripts/switch_openings.py <checkpoint of model.write=switch on data=memorize|detect|reasoning>
                                      [--segments 512] [--samples 32] [--split test] [--batch-size 16]

A segment "opens" the switch when any memory element's gate is above 1/2, so its write replaces that element. Each
sample is counted by whether the switch opened on a segment before the first fact's, on a fact's segment (a fact
may straddle two), and after the last fact's; with its answer right or wrong, as eval.py scores it.
Each wrong answer is also placed by the word the model said (its first answer token): a place that another fact of
the sample names (a decoy's move), one that only the background text names (Austen's "the office of high
sheriff"), or neither. Prints those tables and how many segments opened per sample, and writes
switch_openings_<segments>seg.json beside the checkpoint's run directory. This is how the README's accounts of
detect at long lengths were found.

`--interventions` answers the same samples again with the switch forced on chosen segments (its logits set to
±1e4, so every element is kept or replaced): shut on the segments before the fact, shut after it, shut on all
background, or fully open on the fact's last segment. Which forcing turns wrong answers right says which writes
lose the fact: a background write before it, one after it, or a fact written into too few elements.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from checkpoint_samples import (  # noqa: E402
    answers_said,
    batches,
    command_line,
    fact_segments,
    model_and_samples,
    written_report,
)
from torch.utils.data import default_collate  # noqa: E402

from memlm.data.facts import SamplePlan, Tokens  # noqa: E402
from memlm.memory import RMT  # noqa: E402


def where_opened(opened: list[int], facts: list[int]) -> tuple[bool, bool, bool]:
    """Whether the switch opened before the first fact's segment, on a fact's segment, after the last one's."""
    return (any(s < facts[0] for s in opened), any(s in facts for s in opened), any(s > facts[-1] for s in opened))


@torch.no_grad()
def openings(model, plans: list[SamplePlan]) -> list[tuple[list[int], bool, int]]:
    """For each sample, the segments on which the switch opened, whether the model's objective scored its answer
    right (as eval.py does), and the token the model predicted for the answer's first."""
    batch = default_collate([plan.whole() for plan in plans])
    gates = []
    hook = model.head.write_gate.register_forward_hook(lambda module, inputs, output: gates.append(output > 0))
    try:
        with answers_said(model, batch) as said:
            _, tally = model.unroll(batch)
    finally:
        hook.remove()
    opened = torch.stack([gate.flatten(1).any(dim=1) for gate in gates], dim=1)  # logit > 0: gate > 1/2
    return [(opened[i].nonzero().flatten().tolist(), bool(tally.correct[i]), said[i][0]) for i in range(len(plans))]


FORCINGS: dict[str, Callable[[int, list[int]], str | None]] = {
    "shut before the fact": lambda segment, facts: "shut" if segment < facts[0] else None,
    "shut after the fact": lambda segment, facts: "shut" if segment > facts[-1] else None,
    "shut on all background": lambda segment, facts: None if segment in facts else "shut",
    "fully open on the fact's last segment": lambda segment, facts: "open" if segment == facts[-1] else None,
}
"""What each intervention does to the switch of a segment, given the sample's fact segments: "shut", "open" or
None (left to the gate)."""


@torch.no_grad()
def answered_with_switch_forced(model, plans: list[SamplePlan],
                                forcing: Callable[[int, list[int]], str | None]) -> list[bool]:
    """Whether each sample is answered right when `forcing` sets the switch of its segments."""
    facts = [fact_segments(plan) for plan in plans]
    segment = 0

    def force(module, inputs, logits):
        nonlocal segment
        forced = [forcing(segment, sample_facts) for sample_facts in facts]
        segment += 1
        if not any(forced):
            return logits
        logits = logits.clone()
        for i, action in enumerate(forced):
            if action is not None:
                logits[i] = 1e4 if action == "open" else -1e4
        return logits

    hook = model.head.write_gate.register_forward_hook(force)
    try:
        _, tally = model.unroll(default_collate([plan.whole() for plan in plans]))
    finally:
        hook.remove()
    return [bool(right) for right in tally.correct]


def named_by(word: str, plan: SamplePlan, decode) -> str:
    """Where a sample names a word: "another fact" (a fact piece other than the question's), "background" (only
    the background text), or "nowhere"."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    # True for a fact piece that names it, False for a background piece.
    named = {isinstance(piece.source, Tokens) for piece in plan.pieces[:-1] if pattern.search(decode(piece.read()))}
    if True in named:
        return "another fact"
    return "background" if named else "nowhere"


def main(argv: list[str] | None = None) -> dict:
    parser = command_line(__doc__, segments=512, samples=32, batch_size=16)
    parser.add_argument("--interventions", action="store_true",
                        help="answer again with the switch forced shut or open on chosen segments (FORCINGS)")
    args = parser.parse_args(argv)

    def refusal(model) -> str | None:
        switched = isinstance(model.head, RMT) and model.head.write == "switch"
        return None if switched else "not an RMT with model.write=switch"

    model, plans = model_and_samples(parser, args, refusal)
    table, opened_per_sample, wrong_words = Counter(), [], Counter()
    forcings = FORCINGS if args.interventions else {}
    trained, forced = [], {name: [] for name in forcings}
    for batch in batches(plans, args.batch_size):
        for name, forcing in forcings.items():
            forced[name] += answered_with_switch_forced(model, batch, forcing)
        for plan, (opened, right, said) in zip(batch, openings(model, batch), strict=True):
            trained.append(right)
            table[(*where_opened(opened, fact_segments(plan)), right)] += 1
            opened_per_sample.append(len(opened))
            if not right:
                word = model.tokenizer.decode([said]).strip()
                wrong_words[(word, named_by(word, plan, model.tokenizer.decode))] += 1

    print(f"{args.samples} {args.split} samples of {args.segments} segments; switch opened ...")
    print("| before the fact | on the fact | after the fact | right | wrong |")
    print("|---|---|---|---|---|")
    rows = sorted({key[:3] for key in table})
    yes = {True: "yes", False: "no"}
    for row in rows:
        print(f"| {' | '.join(yes[flag] for flag in row)} | {table[(*row, True)]} | {table[(*row, False)]} |")
    accuracy = sum(count for key, count in table.items() if key[3]) / args.samples
    print(f"accuracy {accuracy:.3f}; segments opened per sample: mean {sum(opened_per_sample) / args.samples:.2f}, "
          f"max {max(opened_per_sample)}")
    print("| wrong answer said | named by | samples |")
    print("|---|---|---|")
    for (word, where), count in wrong_words.most_common():
        print(f"| {word} | {where} | {count} |")
    interventions = [{"switch": name, "accuracy": sum(right) / args.samples,
                      "turned_right": sum(new and not old for new, old in zip(right, trained, strict=True)),
                      "turned_wrong": sum(old and not new for new, old in zip(right, trained, strict=True))}
                     for name, right in {"as trained": trained, **forced}.items()] if forcings else []
    if interventions:
        print("| switch | accuracy | wrong answers turned right | right answers turned wrong |")
        print("|---|---|---|---|")
        for row in interventions:
            print(f"| {row['switch']} | {row['accuracy']:.3f} | {row['turned_right']} | {row['turned_wrong']} |")
    return written_report("switch_openings", args, {
        "accuracy": accuracy, "opened_per_sample": opened_per_sample,
        "rows": [{"before": row[0], "on": row[1], "after": row[2], "right": table[(*row, True)],
                  "wrong": table[(*row, False)]} for row in rows],
        "wrong_answers": [{"said": word, "named_by": where, "samples": count}
                          for (word, where), count in wrong_words.most_common()],
        "interventions": interventions})


if __name__ == "__main__":
    main()
