"""scripts/plot_attention.py: the maps are the attention the model computes, with memory positions labelled, and
heads with their own read report its weights."""

import importlib.util

import pytest
import torch

from memlm.backbones import load_backbone
from tests.conftest import REPO
from tests.heads import build_head, unroll

spec = importlib.util.spec_from_file_location("plot_attention", REPO / "scripts" / "plot_attention.py")
plot_attention = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_attention)

SIZES = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64},
    "llama": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
}


def tiny(family: str):
    torch.manual_seed(0)
    return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=SIZES[family])


@pytest.mark.parametrize("family", sorted(SIZES))
def test_maps_equal_eager_attention_probabilities_averaged_over_heads(family):
    backbone = tiny(family).eval()
    ids = torch.randint(0, 1000, (1, 1, 12))
    mask = torch.ones_like(ids)
    mask[0, 0, :3] = 0  # left padding: the mask the model builds reaches the recorded scores
    head = build_head("baseline", backbone).eval()
    maps = plot_attention.trace(type("Model", (), {"head": head})(), ids, mask)[0][0]
    backbone.model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = backbone.model(input_ids=ids[:, 0], attention_mask=mask[:, 0], output_attentions=True).attentions
    backbone.model.set_attn_implementation("sdpa")
    assert sorted(maps) == [0, 1]
    for layer, probabilities in enumerate(eager):
        torch.testing.assert_close(torch.from_numpy(maps[layer])[3:], probabilities[0].mean(dim=0)[3:])


def test_rmt_positions_are_labelled_read_tokens_write():
    head = build_head("rmt", tiny("gpt2"))
    before, after = plot_attention.memory_roles(head, 6 + 2 * head.num_mem_tokens, 6)
    assert before == ["[read 0]", "[read 1]"] and after == ["[write 0]", "[write 1]"]


@pytest.mark.parametrize("name", ["lm2", "lrmt"])
def test_heads_with_their_own_read_report_one_weight_row_per_token(name):
    head = build_head(name, tiny("gpt2")).eval()
    with torch.no_grad():
        outputs = unroll(head, torch.randint(0, 1000, (2, 3, 5)))
    for k, out in enumerate(outputs):
        weights = out.diagnostics["read_weights"]
        assert weights.shape[:3] == (2, 2, 5)
        # LRMT reads nothing while its store is empty (the first segment): zero weights, not a softmax over nothing.
        expected = 0.0 if name == "lrmt" and k == 0 else 1.0
        torch.testing.assert_close(weights.sum(dim=-1), torch.full(weights.shape[:3], expected))


def test_a_checkpoint_gives_a_png(memorize_run, tmp_path):
    checkpoint, _ = memorize_run
    path = plot_attention.main([str(checkpoint), "--segments", "2", "--out", str(tmp_path)])
    assert path == tmp_path / "attention_rmt.png" and path.stat().st_size > 20000


def test_extended_mind_is_plotted_from_its_citations_without_a_checkpoint(background, tmp_path):
    path = plot_attention.main(["--build", "backbone=tiny_gpt2", "backbone.tiny.n_layer=1", "backbone.tiny.n_embd=32",
                                "backbone.tiny.n_head=2", "model=extended_mind", "model.topk=2", "data=memorize",
                                f"data.background={background}", "data.segment_length=12", "--segments", "2",
                                "--out", str(tmp_path)])
    assert path == tmp_path / "attention_extendedmind.png" and path.stat().st_size > 20000


def test_a_checkpoint_or_a_build_is_required():
    with pytest.raises(SystemExit):
        plot_attention.main([])
