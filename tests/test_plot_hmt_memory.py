"""scripts/plot_hmt_memory.py: the seed notebook's views of HMT's memory, from a trained checkpoint."""

import importlib.util

import numpy as np
import pytest

from memlm.checkpointing import load_checkpoint
from memlm.training import build_datamodule, train
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("plot_hmt_memory", REPO / "scripts" / "plot_hmt_memory.py")
plot_hmt_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_hmt_memory)

HMT = ["model=hmt", "model.sensory_tokens=4", "model.summary_tokens=8"]


@pytest.fixture
def hmt_checkpoint(lm_cfg, tmp_path):
    train(lm_cfg("trainer.max_steps=3", head=HMT))
    return tmp_path / "checkpoints" / "last.ckpt"


def test_cache_fills_to_n_and_each_search_weighs_the_memories_still_cached(hmt_checkpoint, tmp_path):
    out = tmp_path / "views"
    written = plot_hmt_memory.main([str(hmt_checkpoint), "--segments", "6", "--cache-size", "3", "--out", str(out)])
    assert [path.name for path in written] == ["cache_growth.png", "retrieval_weights.png", "augmented_input.png"]
    assert all(path.stat().st_size > 5000 for path in written)

    model, _ = load_checkpoint(str(hmt_checkpoint))
    model.head.cache_size = 3
    sample = build_datamodule(model.hparams.data, model.tokenizer, True).samples("test", 6, 1)[0]
    sizes, weights = plot_hmt_memory.memory_trace(model.head.eval(), sample["input_ids"][None],
                                                  sample["attention_mask"][None])
    assert sizes == [1, 2, 3, 3, 3, 3]
    assert np.isnan(weights[0]).all()  # nothing cached yet: the learned vector stands in
    for n in range(1, 6):
        cached = np.arange(max(0, n - 3), n)  # FIFO: the last three segments' memories
        assert weights[n, cached].sum() == pytest.approx(1.0, abs=1e-5)
        assert np.isnan(np.delete(weights[n], cached)).all()


def test_other_heads_are_refused(memorize_run, tmp_path):
    checkpoint, _ = memorize_run
    with pytest.raises(SystemExit):
        plot_hmt_memory.main([str(checkpoint), "--out", str(tmp_path / "views")])
