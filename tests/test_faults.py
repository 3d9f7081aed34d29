"""Runs that never lie: divergence, resuming after faults and in moved directories, one run per directory, SIGTERM,
and checkpoints that cannot run code."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from memlm import runs
from memlm.checkpointing import AtomicCheckpointIO, load_checkpoint, remove_partial_saves, resume_checkpoint
from memlm.runs import SIGTERM_EXIT_CODE, RunLock, fitting_threads
from memlm.training import build, train
from tests.conftest import REPO, SMALL_RMT
from tests.heads import HEADS
from tests.test_train import train_command


def steps(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def finite(path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point())


def test_a_diverging_run_stops_naming_the_step_and_the_keys_and_writes_no_bad_checkpoint(fast_cfg, tmp_path):
    with pytest.raises(FloatingPointError, match=r"step \d+: .*optim.lr \(now 1000000000.0\)"):
        train(fast_cfg("optim.lr=1e9"))
    assert all(finite(path) for path in (tmp_path / "checkpoints").glob("*.ckpt"))


def test_weights_with_nan_are_never_saved(fast_cfg):
    _, model = build(fast_cfg())
    with torch.no_grad():
        model.head.memory[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="head.memory"):
        model.on_save_checkpoint({})


def test_eval_refuses_a_checkpoint_with_nan_weights(memorize_run, tmp_path):
    checkpoint = torch.load(memorize_run[0], weights_only=True)
    checkpoint["state_dict"]["head.memory"][0, 0] = float("inf")
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(ValueError, match="broken.ckpt: 1 weight tensors hold NaN or infinity \\(head.memory"):
        load_checkpoint(str(broken))


def test_a_checkpoint_from_an_older_memlm_names_the_dropped_key_and_the_fix(memorize_run, tmp_path):
    # RMT's gate_per key was dropped after checkpoints had been written with it.
    checkpoint = torch.load(memorize_run[0], weights_only=True)
    checkpoint["hyper_parameters"]["model"]["gate_per"] = "element"
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    with pytest.raises(ValueError, match="older.ckpt: its hyper_parameters hold a key this memlm does not take .*"
                                         r"gate_per.*delete it from checkpoint\['hyper_parameters'\]"):
        load_checkpoint(str(older))


@pytest.mark.parametrize("target", ["builtins.open", "os.system", "memlmx.evil"])
def test_a_checkpoint_naming_foreign_code_is_refused_naming_the_key(memorize_run, tmp_path, target):
    checkpoint = torch.load(memorize_run[0], weights_only=True)
    checkpoint["hyper_parameters"]["model"]["_target_"] = target
    foreign = tmp_path / "foreign.ckpt"
    torch.save(checkpoint, foreign)
    with pytest.raises(ValueError, match=rf"hyper_parameters.model._target_='{target}' is not one of memlm's own"):
        load_checkpoint(str(foreign))


def test_a_checkpoint_holding_pickled_objects_is_refused_without_running_them(fast_cfg, memorize_run, tmp_path):
    checkpoint = torch.load(memorize_run[0], weights_only=True)
    checkpoint["anything"] = shutil.Error("a pickled object")
    pickled = tmp_path / "pickled.ckpt"
    torch.save(checkpoint, pickled)
    with pytest.raises(ValueError, match="holds pickled objects"):
        train(fast_cfg(f"ckpt_path={pickled}"))


def test_a_truncated_checkpoint_is_named_as_such(memorize_run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(memorize_run[0].read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.ckpt is not a complete torch checkpoint"):
        load_checkpoint(str(truncated))


@pytest.mark.parametrize("override, head, message", [
    ("optim.lr=0.001", SMALL_RMT, r"optim.lr=0.001 differs from 0.0005 in .*init_weights="),
    ("optim.schedule=cosine", SMALL_RMT, "optim.schedule=cosine differs from constant_with_warmup"),
    ("seed=42", HEADS["hmt"], "holds model=RMT .* but this run asks for HMT"),
], ids=["lr", "schedule", "head"])
def test_resuming_with_settings_it_cannot_honour_is_refused(fast_cfg, tmp_path, override, head, message):
    train(fast_cfg("trainer.max_steps=3", "optim.lr=5e-4"))
    with pytest.raises(ValueError, match=message):
        train(fast_cfg("trainer.max_steps=6", "optim.lr=5e-4", override, head=head))


def test_a_copied_run_directory_resumes_in_place_and_keeps_writing_last_ckpt(fast_cfg, background, tmp_path):
    original = tmp_path / "original"
    train(fast_cfg(f"run_dir={original}", "trainer.max_steps=3"))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    train(fast_cfg(f"run_dir={copy}", "trainer.max_steps=6"))
    assert sorted(path.name for path in (copy / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert steps(copy / "checkpoints" / "last.ckpt") == 6
    assert resume_checkpoint(None, copy) == str(copy / "checkpoints" / "last.ckpt")


def test_resume_takes_the_newest_complete_checkpoint_and_drops_partial_saves(fast_cfg, tmp_path):
    train(fast_cfg("trainer.max_steps=3"))
    checkpoints = tmp_path / "checkpoints"
    # As if killed while writing the first last.ckpt: a complete step checkpoint and a partial file.
    (checkpoints / "last.ckpt").rename(checkpoints / ".last.ckpt.partial")
    assert resume_checkpoint(None, tmp_path) == str(checkpoints / "step3.ckpt")
    remove_partial_saves(tmp_path)
    assert not list(checkpoints.glob(".*"))
    # A file that does not read as a checkpoint is passed over, with a warning.
    (checkpoints / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="last.ckpt is not a complete checkpoint"):
        assert resume_checkpoint(None, tmp_path) == str(checkpoints / "step3.ckpt")
    # A SLURM requeue's checkpoint (Lightning writes it into the run directory) counts by its step too.
    requeued = torch.load(checkpoints / "step3.ckpt", weights_only=True)
    requeued["global_step"] = 4
    torch.save(requeued, tmp_path / "hpc_ckpt_1.ckpt")
    with pytest.warns(UserWarning):
        assert resume_checkpoint(None, tmp_path) == str(tmp_path / "hpc_ckpt_1.ckpt")


def test_a_second_live_run_in_one_directory_is_refused_and_a_dead_one_s_lock_taken_over(fast_cfg, tmp_path):
    host = socket.gethostname()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[:2] == [str(os.getpid()), host]
        with pytest.raises(RuntimeError, match=rf"in use by a live run \(pid {os.getpid()} on {host}"):
            train(fast_cfg())
    assert not (tmp_path / ".lock").exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid} {host} -")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_a_lock_on_another_host_is_respected_unless_it_is_this_slurm_job_s_before_a_requeue(tmp_path, monkeypatch):
    (tmp_path / ".lock").write_text("4242 node17 9001")
    with pytest.raises(RuntimeError, match="pid 4242 on node17"):
        RunLock(tmp_path).__enter__()
    monkeypatch.setenv("SLURM_JOB_ID", "9001")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes(background, tmp_path):
    overrides = (f"data.background={background}", f"hydra.run.dir={tmp_path}", "curriculum.stop_when_done=false")
    process = subprocess.Popen(train_command(*overrides, "trainer.max_steps=400"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)

    assert process.returncode == SIGTERM_EXIT_CODE, output[-2000:]
    stopped_at = steps(last)
    assert 0 < stopped_at < 400
    assert f"stopped by SIGTERM at step {stopped_at}" in output and f"hydra.run.dir={tmp_path}" in output
    assert not (tmp_path / ".lock").exists()

    resumed = subprocess.run(train_command(*overrides, f"trainer.max_steps={stopped_at + 3}"), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert steps(last) == stopped_at + 3


@pytest.fixture
def full_disk(monkeypatch):
    """Every path reports 1,000 bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))


def test_a_full_disk_is_found_at_start_not_after_a_validation_interval(fast_cfg, full_disk):
    with pytest.raises(OSError, match=r"has 0 MiB free, and a checkpoint of this model needs about"):
        train(fast_cfg())


def test_lightnings_default_checkpoint_is_checked_for_room_too(fast_cfg, full_disk):
    with pytest.raises(OSError, match=r"has 0 MiB free, and a checkpoint of this model needs about"):
        train(fast_cfg("callbacks.model_checkpoint=null"))


def test_a_run_without_periodic_checkpoints_does_not_ask_for_room_for_them(fast_cfg, tmp_path, full_disk):
    metrics = train(fast_cfg("callbacks.model_checkpoint=null", "trainer.enable_checkpointing=false"))
    assert "val/accuracy_2seg" in metrics
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_failed_save_leaves_no_partial_file_and_says_what_to_do(tmp_path, monkeypatch):
    def fill_the_disk(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", fill_the_disk)
    (tmp_path / "last.ckpt").write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match="could not write checkpoint .*last.ckpt .*No space left.* previous checkpoint"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]
    assert (tmp_path / "last.ckpt").read_bytes() == b"the previous checkpoint"


def test_a_report_killed_mid_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    report = tmp_path / "bench.json"
    runs.write_json(report, {"runs": [1]})
    real_write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        runs.write_json(report, {"runs": [1, 2]})
    monkeypatch.undo()
    assert [path.name for path in tmp_path.iterdir()] == ["bench.json"]
    assert json.loads(report.read_text()) == {"runs": [1]}
    runs.write_json(report, {"runs": [1, 2]})
    assert json.loads(report.read_text()) == {"runs": [1, 2]}


def test_a_backbone_that_is_neither_here_nor_on_the_hub_names_the_key(fast_cfg):
    with pytest.raises(OSError, match="backbone.name_or_path='models/nothing/here' is neither a model folder here"):
        train(fast_cfg(backbone=["backbone=hf", "backbone.name_or_path=models/nothing/here"]))
    with pytest.raises(OSError, match="backbone.tokenizer='no-such-tokenizer' is neither a model folder here"):
        train(fast_cfg("backbone.tokenizer=no-such-tokenizer"))


@pytest.mark.parametrize("threads, accelerator, devices, env, expected", [
    (None, "cpu", 1, {}, 8),
    (None, "cpu", 2, {}, 4),  # trainer=ddp_cpu: two processes share the cores
    (None, "cpu", 2, {"LOCAL_WORLD_SIZE": "8"}, 1),  # torchrun says how many share this machine
    (None, "gpu", 4, {}, 2),
    (None, "cpu", 16, {}, 1),
    (3, "cpu", 2, {}, 3),
    (None, "cpu", 2, {"OMP_NUM_THREADS": "3"}, 3),  # an explicit environment wins
])
def test_each_process_gets_its_share_of_the_cores(monkeypatch, threads, accelerator, devices, env, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(runs, "busy_cores", lambda cores: 0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fitting_threads(threads, accelerator, devices) == expected


@pytest.mark.parametrize("busy, devices, expected", [(3, 1, 5), (8, 1, 1), (3, 2, 4)])
def test_a_single_process_leaves_the_cores_others_keep_busy(monkeypatch, busy, devices, expected):
    # Beside one busy process a 2-thread run on 2 cores was 3.5x slower, a 1-thread run 1.04x (memlm.runs).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(runs, "busy_cores", lambda cores: busy)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert fitting_threads(None, "cpu", devices) == expected


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert runs.busy_cores(os.sched_getaffinity(0), seconds=0.5) >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_a_run_sets_its_threads_and_refuses_an_impossible_count(fast_cfg):
    with pytest.raises(ValueError, match="threads=0 must be a positive number"):
        train(fast_cfg("threads=0"))
    before = torch.get_num_threads()
    try:
        train(fast_cfg("threads=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from memlm.runs import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(4):  # 64 MiB, over glibc's largest mmap threshold; the heap settles within three
    torch.empty(2**24).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(2**24).fill_(1)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc and /proc's page-fault counts")
def test_keeping_freed_memory_stops_the_kernel_faulting_in_each_large_tensor_anew():
    # A 64 MiB tensor is 16,384 pages of 4 KiB: without the setting each allocation faults them all in again (and
    # the kernel zeroes them), which cost a language-model step 40% of its time (memlm.runs).
    def faults(mode: str) -> float:
        run = subprocess.run([sys.executable, "-c", FAULTS_PER_ALLOCATION, mode], capture_output=True, text=True,
                             check=True)
        return float(run.stdout)

    assert faults("release") > 10_000
    assert faults("keep") < 100


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_others_load_counts_another_process_busy_beside_a_measurement_and_not_this_ones_own_work():
    # The shell that starts the spinner exits at once, so the spinner is no descendant of this process.
    spinner = int(subprocess.run(["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                                 capture_output=True, text=True, check=True).stdout)
    try:
        time.sleep(0.2)
        with runs.OthersLoad() as beside:
            time.sleep(0.5)
    finally:
        os.kill(spinner, signal.SIGKILL)
    assert beside.cores > 0.6 and beside.noisy
    with runs.OthersLoad() as alone:  # this process's work and its child's are the measurement's own
        subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.4: pass"],
                       check=True)
        started = time.time()
        while time.time() - started < 0.3:
            pass
    assert alone.cores < 0.5
