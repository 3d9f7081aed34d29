"""The segment curriculum: when it advances, when it stops, and that its stage survives a checkpoint."""

from types import SimpleNamespace

import pytest
import torch

from memlm.curriculum import SegmentCurriculum


def validation(curriculum, value: float, step: int, datamodule):
    """A validation that logged `value` as the curriculum's figure (accuracy, or perplexity) at its current count."""
    trainer = SimpleNamespace(
        sanity_checking=False,
        should_stop=False,
        global_step=step,
        callback_metrics={curriculum.monitor: torch.tensor(value)},
    )
    curriculum.on_validation_end(trainer, None)
    return trainer


def test_advances_at_the_threshold_and_stops_after_the_last_stage():
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [1, 2, 4], threshold=0.9)
    assert datamodule.num_segments == 1
    validation(curriculum, 0.5, 100, datamodule)
    assert datamodule.num_segments == 1
    validation(curriculum, 0.95, 200, datamodule)
    assert datamodule.num_segments == 2 and curriculum.stage_start_step == 200
    validation(curriculum, 0.92, 300, datamodule)
    assert datamodule.num_segments == 4
    assert validation(curriculum, 0.91, 400, datamodule).should_stop


def test_advances_when_the_stage_budget_is_spent_but_never_stops_below_threshold():
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [2, 8], threshold=0.99, max_steps_per_stage=150)
    validation(curriculum, 0.2, 100, datamodule)
    assert datamodule.num_segments == 2
    validation(curriculum, 0.2, 150, datamodule)
    assert datamodule.num_segments == 8
    trainer = validation(curriculum, 0.2, 1000, datamodule)
    assert not trainer.should_stop and datamodule.num_segments == 8
    assert [entry["reached"] for entry in curriculum.history] == [False]


def test_stage_round_trips_through_a_checkpoint_and_reaches_the_datamodule():
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [1, 2, 4])
    validation(curriculum, 1.0, 100, datamodule)
    validation(curriculum, 1.0, 200, datamodule)
    state = curriculum.state_dict()
    restored_datamodule = SimpleNamespace()
    restored = SegmentCurriculum(restored_datamodule, [1, 2, 4])
    assert restored_datamodule.num_segments == 1
    restored.load_state_dict(state)
    assert restored_datamodule.num_segments == 4
    assert restored.stage_start_step == 200 and restored.history == curriculum.history


@pytest.mark.parametrize("segments", [[], [0, 2], [4, 2], [2, 2]])
def test_bad_segment_lists_name_the_key(segments):
    with pytest.raises(ValueError, match="curriculum.segments"):
        SegmentCurriculum(SimpleNamespace(), segments)


def test_missing_validation_metric_is_an_error():
    curriculum = SegmentCurriculum(SimpleNamespace(), [3])
    trainer = SimpleNamespace(sanity_checking=False, global_step=1, callback_metrics={})
    with pytest.raises(KeyError, match="val/accuracy_3seg"):
        curriculum.on_validation_end(trainer, None)


def test_perplexity_advances_when_it_gets_under_the_threshold():
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [1, 2], threshold=50.0, metric="ppl", higher_is_better=False)
    assert curriculum.monitor == "val/ppl_1seg"
    validation(curriculum, 80.0, 100, datamodule)
    assert datamodule.num_segments == 1
    validation(curriculum, 49.0, 200, datamodule)
    assert datamodule.num_segments == 2
    assert curriculum.history == [{"segments": 1, "step": 200, "ppl": 49.0, "reached": True}]


def test_without_a_threshold_stages_advance_on_steps_alone_and_training_runs_to_max_steps():
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [1, 2], threshold=None, max_steps_per_stage=100, metric="ppl",
                                   higher_is_better=False)
    validation(curriculum, 1.0, 50, datamodule)
    assert datamodule.num_segments == 1
    validation(curriculum, 900.0, 100, datamodule)
    assert datamodule.num_segments == 2
    assert not validation(curriculum, 1.0, 5000, datamodule).should_stop


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0.95, "metric": "ppl", "higher_is_better": False}, "never below 1"),
    ({"threshold": None, "max_steps_per_stage": None}, "both null"),
])
def test_thresholds_that_cannot_move_training_on_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentCurriculum(SimpleNamespace(), [1, 2], **kwargs)


@pytest.mark.parametrize("segment_range, fewest", [("stage", [1, 2, 8]), ("upper_half", [1, 1, 4]),
                                                   ("up_to_stage", [1, 1, 1])])
def test_segment_range_sets_the_fewest_segments_of_each_stage(segment_range, fewest):
    datamodule = SimpleNamespace()
    curriculum = SegmentCurriculum(datamodule, [1, 2, 8], threshold=0.9, segment_range=segment_range)
    seen = [datamodule.fewest_segments]
    for step in (100, 200):
        validation(curriculum, 1.0, step, datamodule)
        seen.append(datamodule.fewest_segments)
    assert seen == fewest and datamodule.num_segments == 8


def test_an_unknown_segment_range_names_the_key():
    with pytest.raises(ValueError, match="curriculum.segment_range='some'"):
        SegmentCurriculum(SimpleNamespace(), [1, 2], segment_range="some")
