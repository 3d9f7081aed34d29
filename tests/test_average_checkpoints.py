"""scripts/average_checkpoints.py: the last N checkpoints by step, their weights' mean, a file eval.py loads and
resuming never picks, and clear refusals."""

import importlib.util

import pytest
import torch

from memlm.checkpointing import load_checkpoint, resume_checkpoint
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("average_checkpoints", REPO / "scripts" / "average_checkpoints.py")
average_checkpoints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_checkpoints)


@pytest.fixture
def run_of_three_steps(memorize_run, tmp_path):
    """A run directory with checkpoints at steps 10, 20 and 30 (and last.ckpt, step 30's twin) whose floating
    weights are the trained ones plus 0, 3 and 6."""
    trained = torch.load(memorize_run[0], map_location="cpu", weights_only=True)
    (tmp_path / "checkpoints").mkdir()
    for shift, step in enumerate((10, 20, 30)):
        checkpoint = {**trained, "global_step": step, "state_dict": {
            name: tensor + 3 * shift if tensor.is_floating_point() else tensor
            for name, tensor in trained["state_dict"].items()}}
        torch.save(checkpoint, tmp_path / "checkpoints" / f"step{step}.ckpt")
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    return tmp_path, trained


def test_the_last_checkpoints_by_step_are_averaged_into_a_file_eval_loads(run_of_three_steps):
    run_dir, trained = run_of_three_steps
    out = average_checkpoints.main([str(run_dir), "--last", "2"])
    assert out == run_dir / "averaged" / "last2.ckpt"
    saved = torch.load(out, weights_only=True)
    assert saved["averaged_steps"] == [20, 30] and saved["global_step"] == 30
    assert "optimizer_states" not in saved and "loops" not in saved
    model, _ = load_checkpoint(str(out))
    for name, tensor in model.state_dict().items():
        expected = trained["state_dict"][name]
        if expected.is_floating_point():
            expected = expected + 4.5  # the mean of +3 and +6
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-5)


def test_resuming_the_run_never_picks_the_averaged_file(run_of_three_steps):
    run_dir, _ = run_of_three_steps
    average_checkpoints.main([str(run_dir), "--last", "3"])
    assert torch.load(resume_checkpoint(None, run_dir), weights_only=True)["global_step"] == 30
    assert "optimizer_states" in torch.load(resume_checkpoint(None, run_dir), weights_only=True)


def test_too_few_checkpoints_name_the_setting_that_keeps_them(run_of_three_steps):
    run_dir, _ = run_of_three_steps
    with pytest.raises(ValueError, match="holds checkpoints of 3 steps .*save_top_k=-1"):
        average_checkpoints.main([str(run_dir), "--last", "4"])


def test_checkpoints_of_another_model_are_refused(run_of_three_steps):
    run_dir, trained = run_of_three_steps
    other = {**trained, "global_step": 40, "hyper_parameters": {**trained["hyper_parameters"], "optim": {}}}
    torch.save(other, run_dir / "checkpoints" / "step40.ckpt")
    with pytest.raises(ValueError, match="different hyper-parameters"):
        average_checkpoints.main([str(run_dir), "--last", "2"])
