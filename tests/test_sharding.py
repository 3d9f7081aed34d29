"""trainer=fsdp (FSDP2, memlm/sharding.py) on two CPU processes over gloo: the sharded chunked backward gives one
process's gradients for every head shape; a run lands where DDP's (one all-reduce per step) lands, writes a full
checkpoint that eval.py reads, and resumes. Slow: each starts two processes."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.device_mesh import init_device_mesh
from torch.multiprocessing import spawn

from memlm.checkpointing import load_checkpoint
from memlm.sharding import shard
from memlm.training import build
from tests.conftest import FAST_LM, REPO, SMALL_RMT, TINY_GPT2, fast_config
from tests.parameter_digest import digest_overrides, rank_digests

pytestmark = pytest.mark.slow

FSDP_ON_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worst_gradient_difference(rank: int, cfg: dict, port: int, out: str) -> None:
    """On each of two processes: one process's gradients of the whole batch, then the sharded model's of this
    rank's half; rank 0 writes the largest difference relative to each tensor's largest gradient."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    datamodule, model = build(OmegaConf.create(cfg))
    batch = next(iter(datamodule.loader(datamodule.samples("validation", 3, 4))))
    single = copy.deepcopy(model)
    single.unroll(batch, backward=torch.Tensor.backward)
    shard(model, model.head.backbone.blocks, init_device_mesh("cpu", (2,)))
    model({key: value[2 * rank:2 * rank + 2] for key, value in batch.items()}, backward=torch.Tensor.backward)
    expected = {name: p.grad for name, p in single.named_parameters() if p.grad is not None}
    sharded = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
    assert sharded.keys() == expected.keys()
    worst = max(((sharded[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-12)).item()
                for name, grad in expected.items())
    if rank == 0:
        Path(out).write_text(str(worst))
    dist.destroy_process_group()


@pytest.mark.parametrize("head", [["model=rmt", "model.num_mem_tokens=2"], ["model=armt"], ["model=lm2"]],
                         ids=["rmt", "armt", "lm2"])
def test_sharded_chunked_backward_gives_one_process_gradients(background, tmp_path, head):
    # bptt_depth=1: a backward per segment, each inside the sharded model's call.
    cfg = fast_config(background, tmp_path, "recurrence.bptt_depth=1", head=head)
    out = tmp_path / "worst"
    spawn(worst_gradient_difference, args=(OmegaConf.to_container(cfg, resolve=True), free_port(), str(out)),
          nprocs=2)
    assert float(out.read_text()) < 1e-5


def lm_run(background: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """train.py on the generated PG-19 books with a backward per segment: in a two-segment batch the first
    segment's loss is backpropagated alone, before the last."""
    command = [sys.executable, str(REPO / "train.py"), *TINY_GPT2, *SMALL_RMT, *FAST_LM, f"data.source={background}",
               f"data.cache_dir={run_dir.parent / 'datasets'}", f"hydra.run.dir={run_dir}", "recurrence.bptt_depth=1",
               *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_fsdp_and_ddp_runs_land_on_the_same_weights_and_fsdp_resumes(background, tmp_path):
    # DDP all-reduces once per step (the first segment's backward runs without syncing), FSDP reduce-scatters
    # after every backward: the same data on each rank and the same averaged gradients, so six AdamW steps land
    # on the same weights up to the order of float32 sums. The initial memory gets its gradient only from the
    # unsynced backward: a lost all-reduce would show there first.
    sharded, replicated = tmp_path / "fsdp", tmp_path / "ddp"
    lm_run(background, sharded, *FSDP_ON_CPU)
    lm_run(background, replicated, "trainer=ddp_cpu", *digest_overrides(replicated))
    digests = rank_digests(replicated)
    assert len(digests) == 2 and len(set(digests.values())) == 1
    assert json.loads((sharded / "summary.json").read_text())["global_step"] == 6
    last = sharded / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(type(tensor) is torch.Tensor for tensor in state.values())
    expected = torch.load(replicated / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state.keys() == expected.keys() and "head.memory" in state
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-3 * float(tensor.abs().max()), msg=name)
    model, _ = load_checkpoint(str(last))
    assert all(torch.isfinite(p).all() for p in model.parameters())

    result = lm_run(background, sharded, *FSDP_ON_CPU, "trainer.max_steps=8")
    assert "Restoring states from the checkpoint path" in result.stdout + result.stderr
    assert json.loads((sharded / "summary.json").read_text())["global_step"] == 8
