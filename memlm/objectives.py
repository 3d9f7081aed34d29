"""How segment outputs become a loss: the objective is chosen once, from the data and the backbone.

- Answers (the fact tasks). Decoders answer generatively (`generate_answer`): cross-entropy on the answer tokens
  only, and a sample counts as correct only if every answer token is the argmax. With teacher forcing that is
  exactly what greedy decoding would emit, so it is an exact-match accuracy without a separate generation pass.
  Encoders classify the last segment's summary (CLS) over a fixed set of answers (`classify_answer`).
- Language modelling (`next_token`): cross-entropy on every labelled token; perplexity is token-weighted over the
  whole text (`memlm.metrics`).

The loss an objective returns per segment is already divided by the batch's number of targets, so the chunked
backward in `memlm.recurrence` adds up to the same gradient as one backward. Each objective also names the batch
keys the data must produce for it (`batch_keys`); the DataModule is built for one objective and checks it serves it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memlm.backbones import Backbone
from memlm.data.base import IGNORE, SegmentedBatch
from memlm.memory.base import SegmentOutput
from memlm.metrics import AnswerScore, AnswerTally, SegmentPerplexity, TokenTally

DATA_KINDS = ("answer", "language_model")


class AnswerObjective(nn.Module):
    """What the two ways of answering share: exact-match accuracy is their figure."""

    headline = "accuracy"
    higher_is_better = True
    score = AnswerScore

    @staticmethod
    def tally(errors: torch.Tensor, num_targets: int) -> AnswerTally:
        return AnswerTally(errors, num_targets, errors.new_zeros((), dtype=torch.float))

    def batch_figures(self, tally: AnswerTally) -> dict[str, torch.Tensor]:
        return {"accuracy": tally.correct.float().mean()}


class GenerativeAnswer(AnswerObjective):
    """Next-token loss on answer tokens (`labels` != IGNORE, already aligned to the position that predicts them)."""

    batch_keys = ("input_ids", "attention_mask", "labels")

    def start(self, batch: SegmentedBatch) -> AnswerTally:
        return self.tally(torch.zeros(batch.size, dtype=torch.long, device=batch.device), batch.num_scored)

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, segment: dict, batch: SegmentedBatch,
                     tally: AnswerTally):
        if not batch.is_scored(k):
            return None
        labels = segment["labels"]
        scored = labels != IGNORE
        logits, targets = scored_logits(backbone, out, labels, scored)
        wrong = (logits.argmax(-1) != targets).long()
        tally.errors.index_add_(0, scored.nonzero()[:, 0], wrong)
        nll = F.cross_entropy(logits, targets, reduction="sum")
        tally.nll = tally.nll + nll.detach()
        return nll / tally.num_targets


class Classification(AnswerObjective):
    """A linear classifier over the last segment's summary; `class_label` holds the answer's index."""

    batch_keys = ("input_ids", "attention_mask", "class_label")

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_classes)

    def start(self, batch: SegmentedBatch) -> AnswerTally:
        return self.tally(torch.zeros(batch.size, dtype=torch.long, device=batch.device), batch.size)

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, segment: dict, batch: SegmentedBatch,
                     tally: AnswerTally):
        if k != batch.num_segments - 1:
            return None
        logits = self.classifier(out.summary).float()
        targets = batch["class_label"]
        tally.errors += (logits.argmax(-1) != targets).long()
        nll = F.cross_entropy(logits, targets, reduction="sum")
        tally.nll = tally.nll + nll.detach()
        return nll / tally.num_targets


class LanguageModeling(nn.Module):
    """Next-token loss on every labelled token (`labels` are the inputs shifted by one, IGNORE on padding)."""

    headline = "ppl"
    higher_is_better = False
    score = SegmentPerplexity
    batch_keys = ("input_ids", "attention_mask", "labels")

    def start(self, batch: SegmentedBatch) -> TokenTally:
        zeros = torch.zeros(batch.num_segments, dtype=torch.float, device=batch.device)
        return TokenTally(zeros, zeros.clone(), batch.num_scored)

    def segment_loss(self, backbone: Backbone, k: int, out: SegmentOutput, segment: dict, batch: SegmentedBatch,
                     tally: TokenTally):
        if not batch.is_scored(k):
            return None
        labels = segment["labels"]
        scored = labels != IGNORE
        nll = F.cross_entropy(*scored_logits(backbone, out, labels, scored), reduction="sum")
        tally.nll[k] = nll.detach()
        tally.tokens[k] = scored.sum()
        return nll / tally.num_targets

    def batch_figures(self, tally: TokenTally) -> dict[str, torch.Tensor]:
        return {"ppl": (tally.nll.sum() / tally.tokens.sum()).exp()}


OBJECTIVES = {"generate_answer": GenerativeAnswer, "classify_answer": Classification, "next_token": LanguageModeling}


def choose_objective(data_kind: str, is_decoder: bool) -> str:
    """The one place that decides how a model learns its data: decoders answer in words, encoders pick a class,
    and corpora are modelled token by token, which needs a decoder."""
    if data_kind not in DATA_KINDS:
        raise ValueError(f"data kind {data_kind!r} is not one of {DATA_KINDS}")
    if data_kind == "language_model":
        if not is_decoder:
            raise ValueError("language modelling needs a decoder backbone; this one is an encoder (choose "
                             "backbone=tiny_gpt2, smollm2 or another causal LM)")
        return "next_token"
    return "generate_answer" if is_decoder else "classify_answer"


def build_objective(name: str, backbone: Backbone, num_classes: int) -> nn.Module:
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not one of {tuple(OBJECTIVES)}")
    if name == "classify_answer":
        return Classification(backbone.hidden_size, num_classes)
    return OBJECTIVES[name]()


def scored_logits(backbone: Backbone, out: SegmentOutput, labels: torch.Tensor, scored: torch.Tensor):
    """Next-token logits (float32) and targets at the scored positions only: the vocabulary projection is the
    costliest step, and positions without a label need none."""
    return backbone.logits(out.token_states[scored]).float(), labels[scored]
