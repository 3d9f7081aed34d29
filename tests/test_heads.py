"""Memory heads on tiny backbones: layouts, the memory really carried, errors for impossible sizes."""

import pytest
import torch
from hydra.errors import InstantiationException

from memlm.backbones import load_backbone
from memlm.data.base import IGNORE, WholeBatch
from memlm.memory import RMT, Baseline
from memlm.training import build
from tests.conftest import CONF
from tests.heads import HEADS, build_head

SEGMENT = 12


def tiny(kind: str):
    """Without dropout, as conf/backbone's tiny models: two forward passes compared in one test must agree whether
    or not an earlier test left the shared backbone in training mode."""
    torch.manual_seed(0)
    if kind == "causal":
        size = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=size)
    size = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}
    return load_backbone(kind="encoder", tokenizer="all-minilm-l6-v2", tiny=size)


@pytest.fixture(scope="module", params=["causal", "encoder"])
def backbone(request):
    return tiny(request.param)


def segment(batch: int = 2, vocab: int = 1000):
    ids = torch.randint(1000, 1000 + vocab, (batch, SEGMENT), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


def test_rmt_returns_token_states_and_next_memory(backbone):
    head = RMT(backbone, num_mem_tokens=3)
    ids, mask = segment()
    out = head(ids, mask, head.initial_state(2))
    assert out.token_states.shape == (2, SEGMENT, 32)
    assert out.summary.shape == (2, 32)
    assert out.state.shape == (2, 3, 32)


def test_rmt_outputs_depend_on_the_memory_it_reads(backbone):
    head = RMT(backbone, num_mem_tokens=3).eval()
    ids, mask = segment()
    memory = head.initial_state(2)
    first = head(ids, mask, memory)
    other = head(ids, mask, memory + torch.randn_like(memory))
    assert not torch.allclose(first.token_states, other.token_states)
    assert not torch.allclose(first.state, other.state)


def test_decoder_memory_is_written_from_the_whole_segment():
    head = RMT(tiny("causal"), num_mem_tokens=3).eval()
    ids, mask = segment()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50000
    memory = head.initial_state(2)
    # Write positions come after the tokens, so even the last token reaches the next memory ...
    assert not torch.allclose(head(ids, mask, memory).state, head(changed, mask, memory).state)
    # ... while causal attention keeps earlier token states blind to it.
    torch.testing.assert_close(head(ids, mask, memory).token_states[:, :-1],
                               head(changed, mask, memory).token_states[:, :-1])


def test_baseline_carries_nothing(backbone):
    head = Baseline(backbone).eval()
    ids, mask = segment()
    assert head.initial_state(2) is None
    out = head(ids, mask, None)
    assert out.state is None
    assert out.token_states.shape == (2, SEGMENT, 32)


def test_memory_that_does_not_fit_names_the_keys():
    head = RMT(tiny("causal"), num_mem_tokens=8)
    head.check_fits(64 - 16)
    with pytest.raises(ValueError, match="data.segment_length.*model.num_mem_tokens"):
        head.check_fits(64 - 15)


def test_encoder_layout_counts_cls_and_separators():
    head = RMT(tiny("encoder"), num_mem_tokens=8)
    head.check_fits(64 - 11)
    with pytest.raises(ValueError, match="data.segment_length"):
        head.check_fits(64 - 10)


def test_zero_memory_tokens_is_refused():
    with pytest.raises(ValueError, match="model.num_mem_tokens"):
        RMT(tiny("causal"), num_mem_tokens=0)


def test_every_configured_head_has_a_row_in_the_tests_heads_table():
    configured = {path.stem for path in (CONF / "model").glob("*.yaml")}
    assert set(HEADS) == configured, "add the new head to HEADS in tests/heads.py with its test-size overrides"


@pytest.mark.parametrize("gate_bias, kept", [(-30.0, True), (30.0, False)])
def test_a_gated_write_keeps_or_replaces_the_memory_as_its_gate_says(backbone, gate_bias, kept):
    torch.manual_seed(0)
    gated = RMT(backbone, num_mem_tokens=3, write="gated", gate_bias=gate_bias).eval()
    replacing = RMT(backbone, num_mem_tokens=3).eval()
    replacing.memory.data.copy_(gated.memory.data)
    ids, mask = segment()
    memory = gated.initial_state(2)
    with torch.no_grad():
        written = gated(ids, mask, memory).state
        replaced = replacing(ids, mask, memory).state
    torch.testing.assert_close(written, memory if kept else replaced)
    assert not torch.allclose(memory, replaced)  # the two cases differ: the test can tell them apart


def test_the_write_penalty_is_the_weighted_mean_write_gate(backbone):
    torch.manual_seed(0)
    head = RMT(backbone, num_mem_tokens=3, write="gated", gate_bias=-2.0, write_penalty=4.0)
    logits = []
    head.write_gate.register_forward_hook(lambda module, inputs, output: logits.append(output))
    ids, mask = segment()
    out = head(ids, mask, head.initial_state(2))

    assert out.penalty.requires_grad
    torch.testing.assert_close(out.penalty, 4.0 * torch.sigmoid(logits[0]).mean())
    unpenalised = RMT(backbone, num_mem_tokens=3, write="gated", write_penalty=0.0)
    assert unpenalised(ids, mask, head.initial_state(2)).penalty is None
    assert RMT(backbone, num_mem_tokens=3, write="switch").write_penalty == 1.0
    assert RMT(backbone, num_mem_tokens=3, write="replace").write_penalty == 0.0


def test_the_write_penalty_of_every_read_write_reaches_the_training_loss_only(fast_cfg):
    _, model = build(fast_cfg("model.write=gated", "model.write_penalty=2.0"))
    penalties = []
    model.head.write_gate.register_forward_hook(
        lambda module, inputs, output: penalties.append(2.0 * torch.sigmoid(output).mean().item()))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 3, 24), generator=generator)
    labels = torch.full_like(ids, IGNORE)
    labels[:, -1, -2:] = ids[:, -1, -2:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    with torch.no_grad():
        evaluated, _ = model.eval().unroll(WholeBatch(batch))
        penalties.clear()
        trained, _ = model.train().unroll(WholeBatch(batch))

    # The last segment's write, which nothing reads, is not priced.
    assert len(penalties) == 3
    assert trained.item() == pytest.approx(evaluated.item() + sum(penalties[:-1]) / 3, rel=1e-5)
    assert penalties[-1] > 1e-3


@pytest.mark.parametrize("write, penalty", [("replace", 1.0), ("gated", -1.0), ("switch", -1.0)])
def test_an_impossible_write_penalty_names_the_key(write, penalty):
    with pytest.raises(ValueError, match="model.write_penalty"):
        RMT(tiny("causal"), num_mem_tokens=2, write=write, write_penalty=penalty)


def test_a_switched_write_keeps_the_memory_bit_for_bit_or_replaces_it_and_learns_through_its_gate(backbone):
    torch.manual_seed(0)
    closed = RMT(backbone, num_mem_tokens=3, write="switch", gate_bias=-30.0)
    opened = RMT(backbone, num_mem_tokens=3, write="switch", gate_bias=30.0)
    replacing = RMT(backbone, num_mem_tokens=3)
    for head in (opened, replacing):
        head.memory.data.copy_(closed.memory.data)
    ids, mask = segment()
    memory = closed.initial_state(2)

    kept = closed(ids, mask, memory).state
    assert torch.equal(kept, memory)  # exactly: a fact survives any number of segments the switch keeps shut
    torch.testing.assert_close(opened(ids, mask, memory).state, replacing(ids, mask, memory).state)
    # The forward switch is 0/1, yet the gate still gets a gradient (straight through the soft gate).
    half_open = RMT(backbone, num_mem_tokens=3, write="switch", gate_bias=0.0)
    half_open(ids, mask, memory).state.sum().backward()
    assert half_open.write_gate.weight.grad.abs().sum() > 0


def test_an_unknown_write_names_the_key():
    with pytest.raises(ValueError, match="model.write='append'"):
        RMT(tiny("causal"), num_mem_tokens=2, write="append")


@pytest.mark.parametrize("name", ["armt", "lrmt", "extended_mind"])
def test_heads_that_write_from_causal_states_refuse_an_encoder_backbone(name):
    encoder = load_backbone(kind="encoder", tokenizer="gpt2-tokenizer", tiny={
        "model_type": "bert", "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
        "intermediate_size": 64})
    with pytest.raises(InstantiationException, match=f"model={name} needs a decoder backbone"):
        build_head(name, encoder)


@pytest.mark.parametrize("name", ["armt", "lrmt", "extended_mind"])
@pytest.mark.parametrize("layers, message", [
    ("[2]", r"model.layers=\[2\] must be distinct block indices in 0..1"),
    ("[0,0]", r"model.layers=\[0, 0\]"),
    ("[]", r"model.layers=\[\]"),
])
def test_heads_with_per_layer_memory_refuse_layers_the_backbone_lacks(name, layers, message):
    backbone = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny={
        "model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64})
    with pytest.raises(InstantiationException, match=message):
        build_head(name, backbone, f"model.layers={layers}")


def last_token_states(head, ids, mask, segments: int = 2) -> torch.Tensor:
    state = head.initial_state(ids.shape[0])
    with torch.no_grad():
        for _ in range(segments):
            out = head(ids, mask, state)
            state = out.state
    return out.token_states


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_reads_the_same_after_a_state_dict_round_trip(name, tmp_path):
    head = build_head(name, tiny("causal")).eval()
    torch.save(head.state_dict(), tmp_path / "head.pt")
    restored = build_head(name, tiny("causal")).eval()
    with torch.no_grad():
        for parameter in restored.parameters():
            parameter.add_(torch.randn_like(parameter))
    ids, mask = segment()
    assert not torch.allclose(last_token_states(restored, ids, mask), last_token_states(head, ids, mask))
    restored.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    torch.testing.assert_close(last_token_states(restored, ids, mask), last_token_states(head, ids, mask))
