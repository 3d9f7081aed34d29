"""scripts/qa1_answers.py: each place said is put under the one kind the story gives it, every generated qa1
story is read back, and the report counts every sample."""

import importlib.util
import json
import random

import pytest

from memlm.data.babi import qa1_story
from memlm.training import train
from tests.conftest import REPO, fast_config

spec = importlib.util.spec_from_file_location("qa1_answers", REPO / "scripts" / "qa1_answers.py")
qa1_answers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qa1_answers)

RIGHT, LEFT, ANOTHER, NONE = qa1_answers.KINDS
MOVES = [("Mary", "kitchen"), ("John", "office"), ("Mary", "garden"), ("Sandra", "hallway")]


@pytest.mark.parametrize("said, kind", [
    ("garden", RIGHT), ("kitchen", LEFT), ("office", ANOTHER), ("hallway", ANOTHER), ("bedroom", NONE), ("Mary", NONE),
])
def test_a_place_said_is_put_under_the_kind_the_story_gives_it(said, kind):
    assert qa1_answers.answer_kind(MOVES, "Mary", said) == kind


def test_a_place_the_asked_person_left_counts_as_theirs_even_if_another_went_there_too():
    moves = [("Mary", "office"), ("John", "office"), ("Mary", "garden")]
    assert qa1_answers.answer_kind(moves, "Mary", "office") == LEFT


def test_moves_after_the_asked_persons_last_are_counted_and_bucketed():
    assert [qa1_answers.moves_after(MOVES, person) for person in ("Sandra", "Mary", "John")] == ["0", "1", "2"]
    assert qa1_answers.moves_after([("Mary", "office")] + [("John", "garden")] * 5, "Mary") == "3 or more"


def test_only_two_moves_by_two_people_need_the_name_alone():
    assert qa1_answers.two_people_two_moves(MOVES[:2])
    assert not qa1_answers.two_people_two_moves([("Mary", "office"), ("Mary", "garden")])
    assert not qa1_answers.two_people_two_moves(MOVES[:3])


def test_every_generated_story_is_read_back_and_its_own_answer_is_right():
    rng = random.Random(0)
    for _ in range(300):
        story = qa1_story(rng)
        moves = qa1_answers.moves_of(list(story.facts))
        asked = qa1_answers.QUESTION.fullmatch(story.question)[1]
        assert len(moves) == len(story.facts)
        assert qa1_answers.answer_kind(moves, asked, story.answer) == RIGHT


def test_a_story_of_another_task_is_refused():
    with pytest.raises(ValueError, match="not a qa1 story"):
        qa1_answers.moves_of(["The kitchen is north of the garden."])


@pytest.fixture(scope="module")
def qa1_run(tmp_path_factory, background):
    run_dir = tmp_path_factory.mktemp("qa1")
    train(fast_config(background, run_dir, "model=baseline", "data=babilong", "data.task=qa1",
                      "data.segment_length=128", "data.val_samples=4", "curriculum.segments=[1]", head=[]))
    return run_dir / "checkpoints" / "last.ckpt"


def test_the_report_counts_every_sample_and_is_written_beside_the_run(qa1_run):
    report = qa1_answers.main([str(qa1_run), "--samples", "10", "--batch-size", "4"])
    assert sum(row["samples"] for row in report["answers"]) == 10
    assert sum(row["samples"] for row in report["by_moves_after"]) == 10
    right = sum(row["accuracy"] * row["samples"] for row in report["by_moves_after"])
    assert right == pytest.approx(report["accuracy"] * 10) == pytest.approx(report["answers"][0]["samples"])
    assert json.loads((qa1_run.parent.parent / "qa1_answers_1seg.json").read_text()) == report


def test_a_checkpoint_of_another_task_is_refused(memorize_run, capsys):
    with pytest.raises(SystemExit):
        qa1_answers.main([str(memorize_run[0]), "--samples", "2"])
    assert "not qa1" in capsys.readouterr().err
