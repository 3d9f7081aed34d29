"""scripts/armt_writes.py: a write after a sample's fact is undone for that sample only, in A, in z or in both, and
left alone elsewhere; the script's "as trained" answers, right and wrong, are the model's own; other heads are
refused."""

import importlib.util
import json

import pytest
import torch

from memlm.backbones import load_backbone
from memlm.checkpointing import load_checkpoint
from memlm.memory import ARMT
from memlm.memory.armt import LayerMemory
from memlm.training import build_datamodule, train
from tests.conftest import REPO, fast_config
from tests.heads import HEADS, unroll
from tests.test_armt import segments, with_values

spec = importlib.util.spec_from_file_location("armt_writes", REPO / "scripts" / "armt_writes.py")
armt_writes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(armt_writes)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    size = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
    backbone = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=size)
    return with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2)).eval()


@pytest.mark.parametrize("kept", ["A", "z", "Az"])
def test_a_sample_keeps_its_memory_from_its_last_fact_on_and_one_whose_fact_is_last_is_untouched(head, kept):
    ids = segments(2, 4)
    with torch.no_grad():
        written = [output.state for output in unroll(head, ids)]
        with armt_writes.writes_undone_after(head, torch.tensor([0, 3]), kept):
            undone = unroll(head, ids)[-1].state
    for slot, pair in enumerate(undone):
        for part, name in enumerate("Az"):
            after_fact, final = written[0][slot][part][0], written[-1][slot][part]
            if name in kept:
                torch.testing.assert_close(pair[part][0], after_fact, atol=0, rtol=0)
            else:
                assert not torch.allclose(pair[part][0], after_fact)  # written on after the fact
            torch.testing.assert_close(pair[part][1], final[1], atol=0, rtol=0)


def test_the_writes_are_the_heads_own_again_afterwards(head):
    with armt_writes.writes_undone_after(head, torch.tensor([0]), "Az"):
        assert all("write" in vars(memory) for memory in head.memories)
    assert all("write" not in vars(memory) and memory.write.__func__ is LayerMemory.write
               for memory in head.memories)


def test_as_trained_is_the_models_own_answer_and_other_heads_are_refused(tmp_path, background, memorize_run):
    train(fast_config(background, tmp_path, head=HEADS["armt"]))
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    report = armt_writes.main([str(checkpoint), "--segments", "3", "--samples", "6", "--batch-size", "4"])

    model, _ = load_checkpoint(str(checkpoint))
    model.eval()
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, True)
    plans = list(datamodule.samples("test", 3, 6, streamed=True))
    with torch.no_grad():
        right = torch.cat([model.unroll(armt_writes.default_collate([plan.whole() for plan in plans[i:i + 4]]))[1]
                           .correct for i in (0, 4)])
    rows = {row["writes after the fact"]: row for row in report["interventions"]}
    assert list(rows) == list(armt_writes.KEPT)
    assert rows["as trained"]["accuracy"] == right.float().mean().item()
    assert rows["as trained"]["turned_right"] == rows["as trained"]["turned_wrong"] == 0
    assert sum(row["samples"] for row in report["wrong_answers"]) == (~right).sum().item()
    assert all(row["answer"] != row["said"] for row in report["wrong_answers"])
    assert len(report["beta"]) == len(model.head.memories)
    assert all(0 < layer["fact"] < 1 and 0 < layer["background"] < 1 for layer in report["beta"])
    assert json.loads((tmp_path / "armt_writes_3seg.json").read_text()) == report

    with pytest.raises(SystemExit):
        armt_writes.main([str(memorize_run[0]), "--segments", "3", "--samples", "2"])
