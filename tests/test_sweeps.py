"""What train.py hands a sweeper, and an Optuna search end to end (hparams_search=rmt_optuna)."""

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import FAST, REPO, TINY_GPT2
from train import optimized_value


def test_the_named_metric_is_returned_and_none_without_a_name():
    metrics = {"val/accuracy_2seg": 0.5, "val/loss_2seg": 1.2}
    assert optimized_value(metrics, "val/accuracy_2seg") == 0.5
    assert optimized_value(metrics, None) is None


def test_an_unlogged_metric_is_refused_naming_it_and_the_logged_ones():
    with pytest.raises(KeyError, match=r"optimized_metric='val/accuracy_8seg'.*val/accuracy_2seg"):
        optimized_value({"val/accuracy_2seg": 0.5}, "val/accuracy_8seg")


@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_records_the_best(background, tmp_path):
    # Not run_cli: it fixes model.num_mem_tokens, which would take it out of the search space.
    command = [sys.executable, str(REPO / "train.py"), "hparams_search=rmt_optuna", "hydra.sweeper.n_trials=2",
               *TINY_GPT2, *FAST, "optimized_metric=val/accuracy_2seg", f"data.background={background}",
               f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(path.parent for path in tmp_path.glob("*/summary.json"))
    assert [run.name for run in runs] == ["0", "1"]
    accuracies = [json.loads((run / "summary.json").read_text())["metrics"]["val/accuracy_2seg"] for run in runs]
    searched = []
    for run in runs:
        hyper_parameters = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
        searched.append({"optim.lr": hyper_parameters["optim"]["lr"],
                         "model.num_mem_tokens": hyper_parameters["model"]["num_mem_tokens"]})
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert OmegaConf.to_container(results.best_params) in searched
    assert results.best_value == max(accuracies)
