"""`train(cfg)` end to end on tiny models: outputs, checkpoints, config errors, resume after SIGKILL, DDP, sweeps."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException, MissingConfigException

from memlm.checkpointing import load_initial_weights
from memlm.module import MemoryLM, clippable_norm
from memlm.training import build, train
from tests.conftest import FAST, REPO, SMALL_RMT, TINY_BERT, TINY_GPT2, compose_train
from tests.heads import HEADS
from tests.parameter_digest import digest_overrides, rank_digests


def test_quick_run_reports_accuracy_per_segment_count(memorize_run):
    checkpoint, metrics = memorize_run
    run_dir = checkpoint.parent.parent
    for n in (1, 2):
        assert 0.0 <= metrics[f"val/accuracy_{n}seg"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 6
    assert set(summary["val_accuracy_by_segments"]) == {"1", "2"}
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    assert list((run_dir / "csv").glob("version_*/metrics.csv"))


@pytest.mark.parametrize("head", list(HEADS.values()), ids=list(HEADS))
def test_every_head_trains_through_the_same_loop(fast_cfg, head):
    metrics = train(fast_cfg(head=head))
    assert 0.0 <= metrics["val/accuracy_2seg"] <= 1.0 and metrics["val/loss_2seg"] > 0


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(memorize_run):
    path, _ = memorize_run
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["num_mem_tokens"] == 2
    assert checkpoint["global_step"] == 6
    model = MemoryLM.load_from_checkpoint(path)
    memory = model.state_dict()["head.memory"]
    torch.testing.assert_close(memory, checkpoint["state_dict"]["head.memory"])


def test_encoder_backbone_trains_as_a_classifier(fast_cfg):
    metrics = train(fast_cfg(backbone=TINY_BERT))
    assert 0.0 <= metrics["val/accuracy_2seg"] <= 1.0


@pytest.mark.parametrize("override, message", [
    ("recurrence.bptt_depth=0", "recurrence.bptt_depth"),
    ("model.num_mem_tokens=300", "model.num_mem_tokens"),
    ("data.segment_length=600", "data.segment_length"),
    ("data.task=summarize", "data.task"),
    ("curriculum.segments=[4,2]", "curriculum.segments"),
    ("data.val_segments=[1]", "data.val_segments"),
    ("curriculum.segments=[]", r"curriculum.segments=\[\] must be a non-empty"),
    ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
    ("optim.lr=-1", "optim.lr=-1 must be positive"),
    ("optim.schedule=sawtooth", "optim.schedule='sawtooth' is not one of transformers' schedules"),
    ("optim.betas=[0.9,1.5]", r"optim.betas=\[0.9, 1.5\] must be two numbers"),
    ("optim.warmup_steps=-5", "optim.warmup_steps=-5"),
])
def test_impossible_settings_fail_at_start_naming_the_key(fast_cfg, override, message):
    with pytest.raises(ValueError, match=message):
        train(fast_cfg(override))


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "data.batch_size='abc' must be an integer"),
    ("model.num_mem_tokens=2.5", "model.num_mem_tokens=2.5 must be an integer"),
    ("curriculum.threshold=high", "curriculum.threshold='high' must be a number or null"),
    ("recurrence.recompute=maybe", "recurrence.recompute='maybe' must be true or false"),
    ("trainer.max_steps=ten", "trainer.max_steps='ten' must be an integer"),
    ("optim.lr=fast", "optim.lr='fast' must be a number"),
    ("seed=one", "seed='one' must be an integer"),
    ("keep_freed_memory=sometimes", "keep_freed_memory='sometimes' must be true or false"),
    ("curriculum.segments=[1,two]", r"curriculum.segments=\[1, 'two'\] must be a list of integers"),
])
def test_values_of_the_wrong_type_fail_at_start_naming_the_key(fast_cfg, override, message):
    with pytest.raises(TypeError, match=message):
        train(fast_cfg(override))


def test_unknown_head_is_refused_by_name(background, tmp_path):
    with pytest.raises(MissingConfigException, match="model"):
        compose_train([*TINY_GPT2, *FAST, "model=transformer_xl", f"run_dir={tmp_path}"])


@pytest.mark.parametrize("key", ["ckpt_path", "data.babi_file", "data.background"])
def test_missing_files_name_the_key_or_file(fast_cfg, tmp_path, key):
    # Errors raised inside a Hydra-instantiated constructor reach the user wrapped, message intact.
    with pytest.raises((FileNotFoundError, InstantiationException), match=f"{key}|nothing.txt"):
        train(fast_cfg(f"{key}={tmp_path}/nothing.txt"))


def train_command(*overrides: str, multirun: bool = False) -> list[str]:
    flags = ["--multirun"] if multirun else []
    return [sys.executable, str(REPO / "train.py"), *flags, *TINY_GPT2, *SMALL_RMT, *FAST, *overrides]


def run_cli(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    command = train_command(*overrides, multirun=multirun)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_validation(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    return {name: value for name, value in metrics.items() if name.startswith("val/")}


# Varied lengths too: the counts drawn after the resume must be the ones an uninterrupted run draws.
RESUMABLE = ["trainer.max_steps=12", "curriculum.max_steps_per_stage=3", "curriculum.segments=[1,2,4]",
             "curriculum.segment_range=upper_half"]


@pytest.mark.slow
def test_sigkill_then_resume_continues_and_matches_an_uninterrupted_run(background, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_cli(f"data.background={background}", f"hydra.run.dir={straight}", *RESUMABLE)

    process = subprocess.Popen(
        train_command(f"data.background={background}", f"hydra.run.dir={killed}", *RESUMABLE),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = torch.load(last, weights_only=True)
    assert first["global_step"] < 12, "the run was killed too late to test resuming"

    result = run_cli(f"data.background={background}", f"hydra.run.dir={killed}", *RESUMABLE)
    assert "Restoring states from the checkpoint path" in result.stdout + result.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["global_step"] == 12
    assert resumed["curriculum"] == json.loads((straight / "summary.json").read_text())["curriculum"]
    assert final_validation(killed) == final_validation(straight)


@pytest.mark.slow
def test_two_process_cpu_ddp_run_completes_with_equal_parameters_on_both_ranks(background, tmp_path):
    result = run_cli(f"data.background={background}", f"hydra.run.dir={tmp_path}", "trainer=ddp_cpu",
                     *digest_overrides(tmp_path))
    assert "world_size: 2" in result.stdout + result.stderr or "Initializing distributed" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["global_step"] == 6
    assert set(summary["val_accuracy_by_segments"]) == {"1", "2"}
    digests = rank_digests(tmp_path)
    assert len(digests) == 2 and len(set(digests.values())) == 1


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun_over_loopback_train_to_the_end_with_equal_parameters(background, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--master-addr=127.0.0.1", f"--master-port={port}"]
    train_args = train_command(f"data.background={background}", f"hydra.run.dir={tmp_path}", "trainer=ddp_cpu",
                               "trainer.devices=1", "trainer.num_nodes=2", *digest_overrides(tmp_path))[1:]
    nodes = [subprocess.Popen([*torchrun, f"--node-rank={rank}", *train_args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["global_step"] == 6
    digests = rank_digests(tmp_path)
    assert len(digests) == 2 and len(set(digests.values())) == 1
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step6.ckpt"]


@pytest.mark.slow
def test_multirun_sweep_runs_each_job(background, tmp_path):
    run_cli(f"data.background={background}", f"hydra.sweep.dir={tmp_path}", "model.num_mem_tokens=2,4", multirun=True)
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    memory_sizes = sorted(
        torch.load(path.parent / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["model"][
            "num_mem_tokens"
        ]
        for path in summaries
    )
    assert memory_sizes == [2, 4]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, pattern", [
    (["logger=wandb", "logger.wandb.offline=true"], "wandb/offline-run-*/run-*.wandb"),
    (["logger=tensorboard"], "tensorboard/version_0/events.out.tfevents.*"),
])
def test_other_loggers_write_their_runs(fast_cfg, tmp_path, monkeypatch, overrides, pattern):
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(fast_cfg(*overrides))
    assert len(list(tmp_path.glob(pattern))) == 1


HMT_SMALL = ["model.sensory_tokens=4", "model.summary_tokens=8", "model.cache_size=4"]


def test_hmt_stage2_starts_from_stage1_weights_with_a_fresh_run(fast_cfg, tmp_path):
    train(fast_cfg("experiment=hmt_stage1", head=HMT_SMALL))
    stage1 = tmp_path / "checkpoints" / "last.ckpt"
    stage2 = fast_cfg("experiment=hmt_stage2", f"stage1_checkpoint={stage1}", f"run_dir={tmp_path / 'stage2'}",
                      head=HMT_SMALL)
    assert stage2.model.memory_search and not compose_train(["experiment=hmt_stage1"]).model.memory_search
    _, model = build(stage2)
    load_initial_weights(model, stage2.init_weights)
    saved = torch.load(stage1, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    train(stage2)
    # A new run: its own step count and curriculum, not a resume of stage 1.
    assert json.loads((tmp_path / "stage2" / "summary.json").read_text())["global_step"] == 6


def test_initial_weights_from_another_head_are_refused(fast_cfg, memorize_run):
    checkpoint, _ = memorize_run
    with pytest.raises(ValueError, match="init_weights.*does not match"):
        train(fast_cfg(f"init_weights={checkpoint}", head=["model=hmt", *HMT_SMALL]))


def test_a_finite_gradient_whose_norm_overflows_float32_is_clipped_as_in_float64():
    torch.manual_seed(0)
    grads = [torch.randn(50, 40) * 1e25, torch.randn(7) * 1e24]
    assert not torch.isfinite(torch.nn.utils.get_total_norm(grads))  # squares past float32's range
    exact = torch.cat([grad.double().flatten() for grad in grads]).norm()
    clipped_exact = [grad.double() / exact for grad in grads]  # clipped to norm 1
    parameters = [torch.nn.Parameter(torch.zeros_like(grad)) for grad in grads]
    for parameter, grad in zip(parameters, grads, strict=True):
        parameter.grad = grad.clone()
    clip_norm, norm = clippable_norm([parameter.grad for parameter in parameters])
    assert norm.dtype == torch.float64 and norm.item() == pytest.approx(exact.item(), rel=1e-5)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm=1.0, total_norm=clip_norm)
    for parameter, expected in zip(parameters, clipped_exact, strict=True):
        torch.testing.assert_close(parameter.grad.double(), expected, rtol=1e-5, atol=1e-9)


def test_a_gradient_with_an_infinite_element_still_reads_as_non_finite():
    grads = [torch.tensor([1.0, float("inf")]), torch.ones(3)]
    assert not any(torch.isfinite(norm) for norm in clippable_norm(grads))
    assert torch.equal(grads[1], torch.ones(3))  # nothing rescaled


def test_training_steps_with_the_fused_adamw(memorize_run):
    checkpoint = torch.load(memorize_run[0], weights_only=True)
    assert [group["fused"] for group in checkpoint["optimizer_states"][0]["param_groups"]] == [True]


def test_mixed_precision_trains_with_the_fused_adamw_and_clips_to_the_norm(fast_cfg, tmp_path):
    # Lightning's mixed-precision plugin refuses to clip for a fused optimizer, bf16 included: the step clips.
    cfg = fast_cfg("trainer.precision=bf16-mixed", "optim.gradient_clip_val=1e-6")
    train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert [group["fused"] for group in checkpoint["optimizer_states"][0]["param_groups"]] == [True]
    assert checkpoint["global_step"] == cfg.trainer.max_steps
