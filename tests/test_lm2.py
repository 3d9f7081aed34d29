"""LM2: a memory bank in every decoder block, read by tokens, written by slots, carried across segments."""

import pytest
import torch

from memlm.backbones import load_backbone
from memlm.memory import LM2
from tests.heads import tiny_gpt2, unroll

D = 32


@pytest.fixture(scope="module")
def backbone():
    return tiny_gpt2(n_positions=128)


def test_sixteen_slots_with_segments_of_64_tokens_train_every_part(backbone):
    torch.manual_seed(1)
    head = LM2(backbone, memory_slots=16)
    ids = torch.randint(1000, 20000, (2, 3, 64), generator=torch.Generator().manual_seed(2))
    outputs = unroll(head, ids)
    assert outputs[0].token_states.shape == (2, 64, D)
    assert all(out.state.shape == (2, 2, 16, D) for out in outputs)  # (batch, blocks, slots, hidden)
    head.backbone.logits(outputs[-1].token_states).logsumexp(-1).mean().backward()
    # The last segment's loss reaches the reads directly and the writes through the memory it read.
    for name, parameter in head.memories.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    head.zero_grad()


def test_bank_starts_as_identity_rows_and_carries_what_earlier_segments_wrote(backbone):
    torch.manual_seed(1)
    head = LM2(backbone, memory_slots=4).eval()
    initial = head.initial_state(2)
    assert torch.equal(initial[0, 1], torch.eye(4, D))
    ids = torch.randint(1000, 20000, (2, 3, 16), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 0, 3] += 5
    with torch.no_grad():
        before, after = unroll(head, ids), unroll(head, changed)
    assert not torch.allclose(before[2].token_states, after[2].token_states)  # segment 1's change reached segment 3


def test_padding_is_not_written_into_memory(backbone):
    torch.manual_seed(1)
    head = LM2(backbone, memory_slots=4).eval()
    ids = torch.randint(1000, 20000, (1, 1, 16), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[..., 10:] = 0
    changed = ids.clone()
    changed[..., 12] += 9
    with torch.no_grad():
        assert torch.allclose(unroll(head, ids, mask)[0].state, unroll(head, changed, mask)[0].state, atol=1e-6)


def test_the_backbone_is_untouched_outside_the_head(backbone):
    embeds = backbone.embed(torch.randint(1000, 20000, (1, 8)))
    with torch.no_grad():
        plain = backbone(embeds)
        head = LM2(backbone, memory_slots=4)
        assert torch.equal(backbone(embeds), plain)
        head(torch.randint(1000, 20000, (1, 8)), torch.ones(1, 8, dtype=torch.long), head.initial_state(1))
        assert torch.equal(backbone(embeds), plain)
    assert all(not block._forward_hooks and not block._forward_pre_hooks for block in backbone.blocks)


def test_llama_blocks_are_found_without_forking_their_code():
    llama = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny={
        "model_type": "llama", "num_hidden_layers": 3, "hidden_size": D, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64})
    assert llama.blocks is llama.model.model.layers
    head = LM2(llama, memory_slots=5)
    out = head(torch.randint(1000, 20000, (2, 8)), torch.ones(2, 8, dtype=torch.long), head.initial_state(2))
    assert out.state.shape == (2, 3, 5, D)


def test_bad_settings_name_the_key(backbone):
    with pytest.raises(ValueError, match="model.memory_slots=0"):
        LM2(backbone, memory_slots=0)
    encoder = load_backbone(kind="encoder", tokenizer="gpt2-tokenizer", tiny={
        "model_type": "bert", "num_hidden_layers": 1, "hidden_size": D, "num_attention_heads": 2,
        "intermediate_size": 64})
    with pytest.raises(ValueError, match="needs a decoder backbone"):
        LM2(encoder)
