"""scripts/reasoning_questions.py: a question is placed by whether it names the place both facts share, the story
is read back from a sample's own pieces, and every sample is counted under one kind."""

import importlib.util
import json
import random

import pytest

from memlm.checkpointing import load_checkpoint
from memlm.data.babi import relation_story
from memlm.training import build_datamodule, train
from tests.conftest import REPO, fast_config

spec = importlib.util.spec_from_file_location("reasoning_questions", REPO / "scripts" / "reasoning_questions.py")
reasoning_questions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reasoning_questions)

SHARED, ONE_FACTS = reasoning_questions.KINDS
FACTS = ["The kitchen is north of the garden.", "The garden is east of the office."]


@pytest.mark.parametrize("question, kind", [
    ("What is north of the garden?", SHARED),
    ("What is the garden east of?", SHARED),
    ("What is south of the kitchen?", ONE_FACTS),
    ("What is the office west of?", ONE_FACTS),
])
def test_a_question_is_placed_by_whether_both_facts_name_its_place(question, kind):
    assert reasoning_questions.question_kind(FACTS, question) == kind


def test_a_story_of_another_task_is_refused():
    with pytest.raises(ValueError, match="not a reasoning story"):
        reasoning_questions.question_kind(["Mary went to the garden."], "Where is Mary?")


def test_generated_questions_are_placed_as_their_answers_say():
    # A question about a place one fact names is answered by the shared place; one about the shared place, by
    # another place.
    rng = random.Random(0)
    for _ in range(200):
        story = relation_story(rng)
        first, second = (set(reasoning_questions.FACT.fullmatch(fact).groups()) for fact in story.facts)
        (shared,) = first & second
        kind = reasoning_questions.question_kind(list(story.facts), story.question)
        assert (kind == ONE_FACTS) == (story.answer == shared)


@pytest.fixture(scope="module")
def reasoning_run(tmp_path_factory, background):
    run_dir = tmp_path_factory.mktemp("reasoning")
    train(fast_config(background, run_dir, "data=reasoning", "data.segment_length=32"))
    return run_dir / "checkpoints" / "last.ckpt"


def test_the_story_is_read_back_from_the_samples_pieces(reasoning_run, tokenizer):
    model, _ = load_checkpoint(str(reasoning_run))
    datamodule = build_datamodule(model.hparams.data, tokenizer, True)
    kinds = set()
    for plan in datamodule.samples("test", 3, 40, streamed=True):
        facts, question = reasoning_questions.story_of(plan, tokenizer.decode)
        assert all(reasoning_questions.FACT.fullmatch(fact) for fact in facts) and question.endswith("?")
        kinds.add(reasoning_questions.question_kind(facts, question))
    assert kinds == set(reasoning_questions.KINDS)


def test_the_report_counts_every_sample_and_is_written_beside_the_run(reasoning_run):
    report = reasoning_questions.main([str(reasoning_run), "--segments", "2", "--samples", "9", "--batch-size", "4"])
    assert sum(row["samples"] for row in report["rows"]) == 9
    right = sum(row["accuracy"] * row["samples"] for row in report["rows"])
    assert right == pytest.approx(report["accuracy"] * 9)
    assert json.loads((reasoning_run.parent.parent / "reasoning_questions_2seg.json").read_text()) == report
