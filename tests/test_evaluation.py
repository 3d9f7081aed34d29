"""eval.py's pure function: the same model and samples give the training run's validation figures; lengths,
tables and plots."""

import csv
import signal
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from memlm.backbones import Backbone
from memlm.evaluation import EVAL_CONFIG, evaluate
from memlm.evaluation.lengths import segment_counts
from memlm.runs import SIGTERM_EXIT_CODE
from tests.conftest import CONF, REPO


def eval_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=EVAL_CONFIG, overrides=["accelerator=cpu", *overrides])


@pytest.fixture
def trained(memorize_run):
    return memorize_run


def test_eval_on_the_validation_split_reproduces_training_validation(trained, tmp_path):
    checkpoint, metrics = trained
    accuracy = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "lengths=[1,2]", "split=validation", "samples=8",
                                 "batch_size=3", f"out_dir={tmp_path / 'eval'}")).by_length
    assert accuracy == pytest.approx({1: metrics["val/accuracy_1seg"], 2: metrics["val/accuracy_2seg"]})


def test_eval_goes_beyond_the_trained_length_and_writes_table_and_plot(trained, tmp_path):
    checkpoint, _ = trained
    out = tmp_path / "eval"
    accuracy = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "lengths=[30,100]", "unit=tokens", "samples=4",
                                 f"out_dir={out}")).by_length
    assert list(accuracy) == [2, 5]  # 24-token segments: 30 tokens need 2, 100 need 5
    with (out / "accuracy_by_length.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["segments"], row["tokens"], row["samples"]) for row in rows] == [("2", "48", "4"), ("5", "120", "4")]
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    assert (out / "accuracy_by_length.png").stat().st_size > 1000


def test_eval_overrides_the_training_task(trained, tmp_path):
    checkpoint, _ = trained
    accuracy = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "lengths=[2]", "samples=4", "data.task=detect",
                                 f"out_dir={tmp_path / 'eval'}")).by_length
    assert set(accuracy) == {2}


def test_bf16_mixed_runs_the_backbone_under_bf16_autocast_and_scores_as_float32_does(trained, tmp_path,
                                                                                     monkeypatch):
    checkpoint, _ = trained
    forward = Backbone.forward
    autocasts = set()

    def recording_forward(self, *args, **kwargs):
        autocasts.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Backbone, "forward", recording_forward)
    figures = {}
    for precision, autocast in (("32-true", None), ("bf16-mixed", torch.bfloat16)):
        autocasts.clear()
        figures[precision] = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "lengths=[1,4]", "samples=8",
                                               f"precision={precision}", f"out_dir={tmp_path / precision}")).by_length
        assert autocasts == {autocast}
    assert figures["bf16-mixed"] == pytest.approx(figures["32-true"], abs=1 / 8)


def test_token_lengths_round_up_to_whole_segments():
    assert segment_counts([10, 24, 25, 100], "tokens", 24) == [1, 2, 5]
    assert segment_counts([8, 1, 8], "segments", 24) == [1, 8]


@pytest.mark.parametrize("lengths, unit", [([], "segments"), ([0, 4], "segments"), ([4], "bytes")])
def test_bad_lengths_are_refused(lengths, unit):
    with pytest.raises(ValueError, match="lengths|unit"):
        segment_counts(lengths, unit, 32)


def test_missing_checkpoint_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        evaluate(eval_cfg(f"ckpt_path={tmp_path}/none.ckpt", f"out_dir={tmp_path}"))


def test_without_a_checkpoint_eval_builds_the_model_from_the_groups(tmp_path, background):
    # A training-free head over the backbone's own weights (random here), measured as a checkpoint would be.
    report = evaluate(eval_cfg("backbone=tiny_gpt2", "model=extended_mind", "model.memory_size=64", "data=memorize",
                               f"data.background={background}", "data.segment_length=24", "lengths=[1,3]",
                               "samples=4", "batch_size=4", f"out_dir={tmp_path}"))
    assert set(report.by_length) == {1, 3} and all(0 <= value <= 1 for value in report.by_length.values())
    assert (tmp_path / "accuracy_by_length.csv").exists()


@pytest.mark.parametrize("overrides, message", [
    (["model=extended_mind", "data=memorize"], "backbone is not chosen: add e.g. backbone=smollm2"),
    (["backbone=tiny_gpt2"], "model, data are not chosen"),
    (["ckpt_path=x.ckpt", "model=baseline"], "ckpt_path=x.ckpt holds its own model; model= build a model only"),
])
def test_eval_names_the_groups_it_misses_or_cannot_use(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        evaluate(eval_cfg(*overrides, f"out_dir={tmp_path}"))


@pytest.mark.slow
def test_sigterm_ends_a_long_evaluation_at_once_with_143(trained, tmp_path):
    checkpoint, _ = trained
    process = subprocess.Popen([sys.executable, str(REPO / "eval.py"), f"ckpt_path={checkpoint}", "accelerator=cpu",
                                "lengths=[100000]", "samples=2", "batch_size=2", f"hydra.run.dir={tmp_path}"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    try:
        while "segment " not in seen and process.poll() is None:  # the progress bar: segments are being read
            seen += process.stderr.read(1)
        process.send_signal(signal.SIGTERM)
        # Lightning's own handler alone would let it read all 100,000 segments (minutes) before exiting 0.
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == SIGTERM_EXIT_CODE, seen[-2000:]
