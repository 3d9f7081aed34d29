"""Slow: the embedded default learns its task, and RMT trains on the real pretrained backbones."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from memlm.evaluation import EVAL_CONFIG, evaluate
from memlm.training import build, train
from tests.conftest import CONF, compose_train


@pytest.mark.slow
def test_default_run_learns_memorize_and_holds_the_fact_at_16_times_its_trained_length(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}", "callbacks.progress_bar=null"])
    longest = max(cfg.curriculum.segments)
    assert longest >= 4
    metrics = train(cfg)
    assert metrics[f"val/accuracy_{longest}seg"] >= 0.95

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        eval_cfg = compose(config_name=EVAL_CONFIG, overrides=[
            f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}", f"lengths=[{16 * longest}]", "samples=32",
            "batch_size=32", f"out_dir={tmp_path / 'eval'}", "accelerator=cpu"])
    assert evaluate(eval_cfg).by_length[16 * longest] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["smollm2", "minilm"])
def test_rmt_trains_on_a_pretrained_backbone(tmp_path, backbone):
    cfg = compose_train([
        f"backbone={backbone}", f"run_dir={tmp_path}", "model.num_mem_tokens=4", "data.batch_size=2",
        "data.val_samples=2", "curriculum.segments=[2]", "trainer.max_steps=1", "trainer.limit_train_batches=1",
        "callbacks.model_checkpoint=null", "trainer.enable_checkpointing=false", "callbacks.progress_bar=null",
        "logger=none",
    ])
    datamodule, model = build(cfg)
    datamodule.prepare_data()
    batch = next(iter(datamodule.loader(datamodule.samples("validation", 2, 2))))
    before = model.head.memory.detach().clone()
    loss, tally = model.unroll(batch, backward=torch.Tensor.backward)
    assert torch.isfinite(loss) and tally.correct.shape == (2,)
    assert model.head.memory.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1e-2).step()
    assert not torch.equal(before, model.head.memory.detach())
    # And the whole training entry point runs one step on it.
    assert 0.0 <= train(cfg)["val/accuracy_2seg"] <= 1.0


@pytest.mark.slow
def test_hmt_on_smollm2_runs_forward_backward_and_generates(tmp_path):
    from memlm.generation import Sampling, generate

    cfg = compose_train([
        "backbone=smollm2", "model=hmt", "model.sensory_tokens=4", "model.summary_tokens=8", f"run_dir={tmp_path}",
        "data.batch_size=2", "data.segment_length=32",
    ])
    datamodule, model = build(cfg)
    datamodule.prepare_data()
    batch = next(iter(datamodule.loader(datamodule.samples("validation", 3, 2))))
    loss, _ = model.unroll(batch, backward=torch.Tensor.backward)
    assert torch.isfinite(loss)
    # Three segments: the third searches a cache of two, so the search weights get gradient too.
    for name in ("head.query.weight", "head.key.weight", "head.summary_prompt", "head.empty_cache_memory"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    model.eval()
    tokenizer = model.tokenizer
    prompt = torch.tensor([tokenizer(" The capital of France is a city called", add_special_tokens=False)["input_ids"]])
    new = generate(model.head, prompt, segment_length=4, sampling=Sampling(max_new_tokens=6, stop_at_eos=False))
    assert new.shape == (1, 6)
    assert tokenizer.decode(new[0]).strip()
