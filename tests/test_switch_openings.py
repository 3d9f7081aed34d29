"""scripts/switch_openings.py: a fact's segments come from the sample's own plan, a segment whose gate passes 1/2
counts as open, openings are placed against the facts, a wrong answer's word is placed by the piece that names
it, and every sample is counted."""

import importlib.util
import json

import numpy as np
import pytest

from memlm import objectives
from memlm.checkpointing import load_checkpoint
from memlm.data.background import TokenRun
from memlm.data.facts import Piece, SamplePlan, literal
from memlm.training import build_datamodule
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("switch_openings", REPO / "scripts" / "switch_openings.py")
switch_openings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(switch_openings)


def plan_with_fact_at(start: int, length: int, tokens: np.ndarray | None = None) -> SamplePlan:
    tokens = np.arange(1000) if tokens is None else tokens
    noise = TokenRun(tokens, np.arange(0, 1001, 10), 0, 100)
    pieces = [Piece(noise, 0, start), literal([7] * length), Piece(noise, start, 100), literal([1, 2, 3])]
    return SamplePlan(pieces, answer_length=2, num_segments=4, segment_length=32, pad_token=0, class_label=-1)


@pytest.mark.parametrize("start, length, segments", [(40, 10, [1]), (60, 10, [1, 2]), (0, 5, [0])])
def test_a_facts_segments_are_every_segment_holding_one_of_its_tokens(start, length, segments):
    assert switch_openings.fact_segments(plan_with_fact_at(start, length)) == segments


def test_openings_are_placed_before_on_and_after_the_facts():
    assert switch_openings.where_opened([], [3, 4]) == (False, False, False)
    assert switch_openings.where_opened([0, 4], [3, 4]) == (True, True, False)
    assert switch_openings.where_opened([5], [3, 4]) == (False, False, True)


WORDS = {7: "garden", 8: "office"}


@pytest.mark.parametrize("word, where", [("garden", "another fact"), ("Office", "background"),
                                         ("kitchen", "nowhere"), ("gard", "nowhere")])
def test_a_wrong_answers_word_is_placed_by_the_piece_that_names_it(word, where):
    background = np.full(1000, 5)
    background[50] = 8
    plan = plan_with_fact_at(40, 10, background)  # the fact's tokens are 7s; the background names 8 once

    def decode(ids):
        return " ".join(WORDS.get(int(i), "the") for i in ids)

    assert switch_openings.named_by(word, plan, decode) == where


@pytest.mark.parametrize("bias, opened", [(30.0, [0, 1, 2]), (-30.0, [])])
def test_every_segment_whose_gate_is_past_one_half_is_counted_open(memorize_run, bias, opened):
    model, _ = load_checkpoint(str(memorize_run[0]))
    model.eval().head.write_gate.bias.data.fill_(bias)
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, True)
    plans = list(datamodule.samples("test", 3, 5, streamed=True))
    results = switch_openings.openings(model, plans)
    assert [segments for segments, _, _ in results] == [opened] * 5


def test_the_word_said_is_the_models_argmax_where_eval_py_scores_the_first_answer_token(memorize_run, monkeypatch):
    model, _ = load_checkpoint(str(memorize_run[0]))
    model.eval()
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, True)
    plans = list(datamodule.samples("test", 3, 6, streamed=True))
    first_argmax = {}
    scored_logits = objectives.scored_logits

    def spy(backbone, out, labels, scored):
        logits, targets = scored_logits(backbone, out, labels, scored)
        for sample, token in zip(scored.nonzero()[:, 0].tolist(), logits.argmax(-1).tolist(), strict=True):
            first_argmax.setdefault(sample, token)
        return logits, targets

    monkeypatch.setattr(objectives, "scored_logits", spy)
    said = [said for _, _, said in switch_openings.openings(model, plans)]
    assert said == [first_argmax[i] for i in range(len(plans))]


def test_the_report_counts_every_sample_and_is_written_beside_the_run(memorize_run):
    checkpoint, _ = memorize_run
    report = switch_openings.main([str(checkpoint), "--segments", "3", "--samples", "7", "--batch-size", "3"])
    assert sum(row["right"] + row["wrong"] for row in report["rows"]) == 7 == len(report["opened_per_sample"])
    assert json.loads((checkpoint.parent.parent / "switch_openings_3seg.json").read_text()) == report


@pytest.mark.parametrize("action, bias", [("shut", -30.0), ("open", 30.0)])
def test_a_forced_switch_answers_as_a_gate_that_is_always_shut_or_open(memorize_run, action, bias):
    model, _ = load_checkpoint(str(memorize_run[0]))
    model.eval()
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, True)
    plans = list(datamodule.samples("test", 3, 8, streamed=True))
    forced = switch_openings.answered_with_switch_forced(model, plans, lambda segment, facts: action)
    model.head.write_gate.bias.data.fill_(bias)
    model.head.write_gate.weight.data.zero_()
    assert forced == [right for _, right, _ in switch_openings.openings(model, plans)]


def test_interventions_score_every_sample_and_leave_the_as_trained_answers_alone(memorize_run):
    checkpoint, _ = memorize_run
    report = switch_openings.main([str(checkpoint), "--segments", "3", "--samples", "5", "--interventions"])
    rows = {row["switch"]: row for row in report["interventions"]}
    assert list(rows) == ["as trained", *switch_openings.FORCINGS]
    assert rows["as trained"]["accuracy"] == report["accuracy"]
    assert rows["as trained"]["turned_right"] == rows["as trained"]["turned_wrong"] == 0
    for row in rows.values():
        right = round(row["accuracy"] * 5)
        assert right == round(report["accuracy"] * 5) + row["turned_right"] - row["turned_wrong"]
