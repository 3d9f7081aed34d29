"""Training on a CUDA GPU: bf16 mixed precision through the chunked backward, and the DDP strategy. Skipped without
a GPU."""

import json
import math
from pathlib import Path

import pytest
import torch

from memlm.checkpointing import load_checkpoint
from memlm.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def check_finished(metrics: dict[str, float], run_dir: Path) -> None:
    assert math.isfinite(metrics["train/loss"])
    for n in (1, 2):
        assert math.isfinite(metrics[f"val/loss_{n}seg"])
        assert 0.0 <= metrics[f"val/accuracy_{n}seg"] <= 1.0
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 6


def test_bf16_run_backpropagating_one_segment_at_a_time_finishes_with_finite_figures(fast_cfg, tmp_path):
    # bptt_depth=1 cuts the graph after every segment, so backward runs chunk by chunk under autocast.
    check_finished(train(fast_cfg("trainer=gpu", "recurrence.bptt_depth=1")), tmp_path)


def test_ddp_run_on_one_gpu_finishes(fast_cfg, tmp_path):
    check_finished(train(fast_cfg("trainer=ddp", "trainer.devices=1")), tmp_path)


def test_fsdp_run_on_one_gpu_finishes_and_writes_a_checkpoint_eval_reads(fast_cfg, tmp_path):
    check_finished(train(fast_cfg("trainer=fsdp", "trainer.devices=1", "recurrence.bptt_depth=1")), tmp_path)
    model, _ = load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
