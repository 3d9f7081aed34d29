"""Memory heads on tiny backbones: layouts, the memory really carried, errors for impossible sizes."""

import pytest
import torch

from memlm.backbones import load_backbone
from memlm.memory import RMT, Baseline
from tests.conftest import CONF
from tests.heads import HEADS

SEGMENT = 12


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "causal":
        size = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}
        return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=size)
    size = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}
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


def test_an_unknown_write_names_the_key():
    with pytest.raises(ValueError, match="model.write='append'"):
        RMT(tiny("causal"), num_mem_tokens=2, write="append")
