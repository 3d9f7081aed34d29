"""Slow: the embedded default learns its task, and RMT trains on the real pretrained backbones."""

import pytest
import torch

from memlm.training import build_datamodule, build_model, train
from tests.conftest import compose_train


@pytest.mark.slow
def test_default_run_learns_memorize_at_its_longest_segment_count(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}", "callbacks.progress_bar=null"])
    longest = max(cfg.curriculum.segments)
    assert longest >= 4
    metrics = train(cfg)
    assert metrics[f"val/accuracy_{longest}seg"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["smollm2", "minilm"])
def test_rmt_trains_on_a_pretrained_backbone(tmp_path, backbone):
    cfg = compose_train([
        f"backbone={backbone}", f"run_dir={tmp_path}", "model.num_mem_tokens=4", "data.batch_size=2",
        "data.val_samples=2", "curriculum.segments=[2]", "trainer.max_steps=1", "trainer.limit_train_batches=1",
        "callbacks.model_checkpoint=null", "callbacks.progress_bar=null", "logger=none",
    ])
    model = build_model(cfg)
    datamodule = build_datamodule(cfg.data, model)
    batch = next(iter(datamodule.loader(datamodule.samples("validation", 2, 2))))
    before = model.head.memory.detach().clone()
    loss, correct = model.unroll(batch, backward=torch.Tensor.backward)
    assert torch.isfinite(loss) and correct.shape == (2,)
    assert model.head.memory.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1e-2).step()
    assert not torch.equal(before, model.head.memory.detach())
    # And the whole training entry point runs one step on it.
    assert 0.0 <= train(cfg)["val/accuracy_2seg"] <= 1.0
