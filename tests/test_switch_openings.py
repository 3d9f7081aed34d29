"""scripts/switch_openings.py: a fact's segments come from the sample's own plan, a segment whose gate passes 1/2
counts as open, openings are placed against the facts, and every sample is counted."""

import importlib.util
import json

import numpy as np
import pytest

from memlm.checkpointing import load_checkpoint
from memlm.data.background import TokenRun
from memlm.data.facts import Piece, SamplePlan, literal
from memlm.training import build_datamodule
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("switch_openings", REPO / "scripts" / "switch_openings.py")
switch_openings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(switch_openings)


def plan_with_fact_at(start: int, length: int) -> SamplePlan:
    tokens = np.arange(1000)
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


@pytest.mark.parametrize("bias, opened", [(30.0, [0, 1, 2]), (-30.0, [])])
def test_every_segment_whose_gate_is_past_one_half_is_counted_open(memorize_run, bias, opened):
    model, _ = load_checkpoint(str(memorize_run[0]))
    model.eval().head.write_gate.bias.data.fill_(bias)
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, True)
    plans = list(datamodule.samples("test", 3, 5, streamed=True))
    results = switch_openings.openings(model, plans)
    assert [segments for segments, _ in results] == [opened] * 5


def test_the_report_counts_every_sample_and_is_written_beside_the_run(memorize_run):
    checkpoint, _ = memorize_run
    report = switch_openings.main([str(checkpoint), "--segments", "3", "--samples", "7", "--batch-size", "3"])
    assert sum(row["right"] + row["wrong"] for row in report["rows"]) == 7 == len(report["opened_per_sample"])
    assert json.loads((checkpoint.parent.parent / "switch_openings_3seg.json").read_text()) == report
