"""What loses an ARMT fact over a long sample: the write strengths β on the fact's segments against background,
and the answers again with every write after the fact undone.

    python scripts/armt_writes.py <checkpoint of model=armt on data=memorize|detect|reasoning>
                                  [--segments 4096] [--samples 64] [--split test] [--batch-size 32]

A sample's fact segments come from its plan (as in switch_openings.py). The interventions answer the same samples
with each memory layer's write on a segment after the last fact's replaced, for that sample, by the memory as it
was: the matrices A kept (the normalisers z written as usual), z kept (A written as usual), or both. If keeping A
turns wrong answers right, what loses the fact is the later segments' writes into A, not the fact's own write and
not the reads. β is σ(W_β m) (hardsigmoid with `model.write=gated`) of each memory token's write, summarised per
memory layer over the fact's segments and over the background (every other segment but the question's), with the
share of writes closed (β exactly 0). Each wrong answer is listed with the argmax at each of its positions
(" office office" for " office<|endoftext|>": the place said again where the answer ends).
Prints the three tables and writes armt_writes_<segments>seg.json beside the checkpoint's run directory; the
README's ARMT paragraph was measured so.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager

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

from memlm.data.base import IGNORE  # noqa: E402
from memlm.data.facts import SamplePlan  # noqa: E402
from memlm.memory import ARMT  # noqa: E402

KEPT = {"as trained": "", "A kept after the fact": "A", "z kept after the fact": "z", "A and z kept": "Az"}
"""Each intervention: which of a layer's (A, z) a write after the sample's last fact segment leaves as it was."""


@contextmanager
def writes_undone_after(head: ARMT, last_fact: torch.Tensor, kept: str):
    """Within it, a memory layer's write on a segment after `last_fact` (one index per sample) keeps that sample's
    A if `kept` holds "A" and its z if it holds "z"; the segment count restarts at 0."""
    segment = [0] * len(head.memories)

    def undoing(slot: int, write):
        def write_or_keep(states, matrix, normaliser, **options):
            written_matrix, written_normaliser = write(states, matrix, normaliser, **options)
            after = segment[slot] > last_fact
            segment[slot] += 1
            if "A" in kept:
                written_matrix = torch.where(after[:, None, None], matrix, written_matrix)
            if "z" in kept:
                written_normaliser = torch.where(after[:, None], normaliser, written_normaliser)
            return written_matrix, written_normaliser

        return write_or_keep

    for slot, memory in enumerate(head.memories):
        memory.write = undoing(slot, memory.write)
    try:
        yield
    finally:
        for memory in head.memories:
            del memory.write


@torch.no_grad()
def answered(model, plans: list[SamplePlan],
             kept: str) -> tuple[list[bool], list[torch.Tensor], list[tuple[list[int], list[int]]]]:
    """With `kept` undone after each sample's fact: whether each sample is answered right, each memory layer's β
    as (sample, segment, memory token), and each sample's answer tokens with the argmax at their positions."""
    batch = default_collate([plan.whole() for plan in plans])
    last_fact = torch.tensor([fact_segments(plan)[-1] for plan in plans])
    betas = [[] for _ in model.head.memories]
    hooks = [memory.strength.register_forward_hook(
        lambda module, inputs, logits, slot=slot, beta=memory.activation:
            betas[slot].append(beta(logits.float()).squeeze(-1)))
        for slot, memory in enumerate(model.head.memories)]
    try:
        with answers_said(model, batch) as said, writes_undone_after(model.head, last_fact, kept):
            _, tally = model.unroll(batch)
    finally:
        for hook in hooks:
            hook.remove()
    scored = batch["labels"] != IGNORE
    answers = [batch["labels"][sample][scored[sample]].tolist() for sample in range(len(plans))]
    return ([bool(right) for right in tally.correct], [torch.stack(layer, dim=1) for layer in betas],
            list(zip(answers, said, strict=True)))


def betas_by_place(betas: list[torch.Tensor], plans: list[SamplePlan]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per memory layer, the β of every write on a fact's segment and of every write on background."""
    facts = torch.zeros(betas[0].shape[:2], dtype=torch.bool)
    for i, plan in enumerate(plans):
        facts[i, fact_segments(plan)] = True
    background = ~facts
    background[:, -1] = False  # the question's segment: its write is read by nothing
    return [(layer[facts].flatten(), layer[background].flatten()) for layer in betas]


def beta_summary(fact: torch.Tensor, background: torch.Tensor) -> dict:
    quantiles = torch.quantile(background, torch.tensor([0.5, 0.9, 0.99])).tolist()
    return {"fact": fact.mean().item(), "background": background.mean().item(),
            "background_quantiles": dict(zip(["0.5", "0.9", "0.99"], quantiles, strict=True)),
            "fact_closed": (fact == 0).float().mean().item(),
            "background_closed": (background == 0).float().mean().item()}


def main(argv: list[str] | None = None) -> dict:
    parser = command_line(__doc__, segments=4096, samples=64, batch_size=32)
    args = parser.parse_args(argv)
    model, plans = model_and_samples(
        parser, args, lambda model: None if isinstance(model.head, ARMT) else "not a model=armt checkpoint")
    right = {name: [] for name in KEPT}
    betas = [([], []) for _ in model.head.memories]
    wrong = Counter()
    for batch in batches(plans, args.batch_size):
        for name, kept in KEPT.items():
            answers, batch_betas, said = answered(model, batch, kept)
            right[name] += answers
            if not kept:
                for (answer, argmax), right_answer in zip(said, answers, strict=True):
                    if not right_answer:
                        wrong[(model.tokenizer.decode(answer), model.tokenizer.decode(argmax))] += 1
                for (fact, background), (on_fact, on_background) in zip(
                        betas, betas_by_place(batch_betas, batch), strict=True):
                    fact.append(on_fact)
                    background.append(on_background)
    trained = right["as trained"]
    interventions = [{"writes after the fact": name, "accuracy": sum(answers) / args.samples,
                      "turned_right": sum(new and not old for new, old in zip(answers, trained, strict=True)),
                      "turned_wrong": sum(old and not new for new, old in zip(answers, trained, strict=True))}
                     for name, answers in right.items()]
    print(f"{args.samples} {args.split} samples of {args.segments} segments")
    print("| writes after the fact | accuracy | wrong answers turned right | right answers turned wrong |")
    print("|---|---|---|---|")
    for row in interventions:
        print(f"| {row['writes after the fact']} | {row['accuracy']:.3f} | {row['turned_right']} | "
              f"{row['turned_wrong']} |")
    per_layer = [beta_summary(torch.cat(fact), torch.cat(background)) for fact, background in betas]
    print("| memory layer | β on the fact's segments (closed) | β on background (closed) | "
          "its quantiles 0.5 / 0.9 / 0.99 |")
    print("|---|---|---|---|")
    for block, layer in zip(model.head.layers, per_layer, strict=True):
        quantiles = " / ".join(f"{q:.3f}" for q in layer["background_quantiles"].values())
        print(f"| {block} | {layer['fact']:.3f} ({layer['fact_closed']:.0%}) | {layer['background']:.3f} "
              f"({layer['background_closed']:.0%}) | {quantiles} |")
    print("| answer | said instead (argmax at each answer position) | samples |")
    print("|---|---|---|")
    for (answer, said), count in wrong.most_common():
        print(f"| {answer!r} | {said!r} | {count} |")
    return written_report("armt_writes", args, {
        "interventions": interventions, "beta": per_layer,
        "wrong_answers": [{"answer": answer, "said": said, "samples": count}
                          for (answer, said), count in wrong.most_common()]})


if __name__ == "__main__":
    main()
