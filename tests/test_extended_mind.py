"""Extended Mind: top-k retrieval by cosine, the threshold, the FIFO memory, chosen layers, rotary placement of
retrieved keys, citations, and a fact that retrieval brings back; on GPT-2- and Llama-shaped tiny backbones."""

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException

from memlm.backbones import load_backbone
from memlm.memory import Baseline, ExtendedMind
from memlm.memory.extended_mind import attend_with_memory, remember
from tests.conftest import compose_train
from tests.heads import build_head, unroll

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}
SEGMENT = 6


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def backbone(request):
    torch.manual_seed(0)
    return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=GPT2 if request.param == "gpt2" else LLAMA)


def extended(backbone, **settings) -> ExtendedMind:
    return ExtendedMind(backbone, **{"memory_size": 8, "topk": 2, "similarity_threshold": None, **settings}).eval()


def segments(batch: int, count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1000, 20000, (batch, count, SEGMENT), generator=torch.Generator().manual_seed(seed))


def causal(length: int, batch: int = 1) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length)


def test_top_k_picks_the_keys_most_similar_to_each_query():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2, 3, 8, generator=generator)
    memory = torch.randn(1, 1, 10, 8, generator=generator)
    # Two heads share one key head (grouped attention): each retrieves by its own query.
    memory[0, 0, 4] = 5 * query[0, 0, 1]
    memory[0, 0, 7] = 0.1 * query[0, 1, 2]
    local = torch.randn(1, 1, 3, 8, generator=generator)
    _, slots = attend_with_memory(query, local, local, causal(3), query, memory, memory, torch.ones(1, 10, dtype=bool),
                                  topk=3, threshold=None, scaling=1.0, dropout=0.0, training=False)
    expected = (F.normalize(query, dim=-1) @ F.normalize(memory[0, 0], dim=-1).T).topk(3, dim=-1).indices
    assert torch.equal(slots, expected)
    assert slots[0, 0, 1, 0] == 4 and slots[0, 1, 2, 0] == 7  # cosine, not dot product: the norm does not matter


def test_the_threshold_masks_weak_memories_out_of_the_softmax():
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 1, 2, 8, generator=generator)
    memory = torch.randn(1, 1, 6, 8, generator=generator)
    memory[0, 0, 2] = query[0, 0, 0]  # cosine 1 for the first query; the rest are random, |cos| < 0.9
    local_k, local_v = torch.randn(2, 1, 1, 2, 8, generator=generator)
    valid = torch.ones(1, 6, dtype=bool)

    def run(threshold):
        return attend_with_memory(query, local_k, local_v, causal(2), query, memory, memory, valid, topk=2,
                                  threshold=threshold, scaling=8 ** -0.5, dropout=0.0, training=False)

    strict_out, strict_slots = run(0.99)
    assert strict_slots[0, 0, 0].tolist() == [2, -1] and strict_slots[0, 0, 1].tolist() == [-1, -1]
    # The masked memories get no weight at all: the second query reads its own segment only, exactly as without
    # memory, and the first the surviving memory and its segment.
    alone = F.scaled_dot_product_attention(query, local_k, local_v, is_causal=True, scale=8 ** -0.5)
    torch.testing.assert_close(strict_out[:, 1], alone.transpose(1, 2)[:, 1])
    scores = torch.cat([query[0, 0, 0] @ memory[0, 0, 2:3].T, query[0, 0, 0] @ local_k[0, 0, :1].T]) * 8 ** -0.5
    expected = scores.softmax(-1) @ torch.cat([memory[0, 0, 2:3], local_v[0, 0, :1]])
    torch.testing.assert_close(strict_out[0, 0, 0], expected)
    open_out, open_slots = run(None)
    assert (open_slots >= 0).all() and not torch.allclose(open_out, strict_out)


def test_the_memory_keeps_the_newest_tokens_first_in_first_out_and_never_padding(backbone):
    head = extended(backbone, memory_size=8)
    ids = segments(2, 3)
    mask = torch.ones_like(ids)
    mask[1, 1, :2] = 0  # sample 1's second segment is left-padded by two
    state = unroll(head, ids, mask)[-1].state
    assert state["keys"][0].shape[2] == 8
    assert state["positions"][0].tolist() == list(range(10, 18))  # 18 tokens read, the oldest 10 dropped
    assert state["positions"][1].tolist() == list(range(8, 16))  # 16 read: padding takes no slot
    assert state["valid"].all() and state["read"].tolist() == [18, 16]
    # The kept slots are exactly the newest tokens' keys: a memory as large as the text holds them all, in order.
    # (The first layer's: its keys come before any retrieval, so they do not depend on what the memory held.)
    whole = unroll(extended(backbone, memory_size=64), ids, mask)[-1].state
    torch.testing.assert_close(state["keys"][0], whole["keys"][0][:, :, -8:])
    torch.testing.assert_close(state["values"][0][1], whole["values"][0][1, :, -8:])


def test_remember_keeps_a_sample_without_new_tokens_as_it_was():
    empty = {"keys": (torch.zeros(2, 1, 0, 4),), "values": (torch.zeros(2, 1, 0, 4),),
             "valid": torch.zeros(2, 0, dtype=bool), "positions": torch.zeros(2, 0, dtype=torch.long),
             "read": torch.zeros(2, dtype=torch.long)}
    keys = torch.arange(24.0).view(2, 1, 3, 4).requires_grad_()
    state = remember(empty, [keys], [keys], torch.tensor([[1, 1, 1], [0, 0, 0]]), capacity=2)
    assert state["valid"].tolist() == [[True, True], [False, False]]
    assert state["positions"][0].tolist() == [1, 2] and state["read"].tolist() == [3, 0]
    assert not state["keys"][0].requires_grad  # written detached


def test_with_an_empty_memory_the_head_is_the_plain_backbone(backbone):
    head, plain = extended(backbone), Baseline(backbone).eval()
    ids = segments(2, 2)
    mask = torch.ones_like(ids[:, 0])
    with torch.no_grad():
        first = head(ids[:, 0], mask, head.initial_state(2))
        assert torch.equal(first.token_states, plain(ids[:, 0], mask, None).token_states)
        # Sample 1 has no memory while sample 0 retrieves: its softmax gives the empty slots no weight.
        state = dict(first.state, valid=first.state["valid"].clone())
        state["valid"][1] = False
        second = head(ids[:, 1], mask, state)
        torch.testing.assert_close(second.token_states[1], plain(ids[:, 1], mask, None).token_states[1],
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(second.token_states[0], plain(ids[:, 1], mask, None).token_states[0], atol=1e-4)


def block_outputs(backbone, run) -> list[torch.Tensor]:
    outputs = []

    def keep(index, block_input, hidden):
        outputs.append(hidden.clone())

    with backbone.intercepting(after=keep):
        run()
    return outputs


def test_only_the_chosen_layers_keep_memory_and_retrieve(backbone):
    head = extended(backbone, layers=[1])
    ids = segments(1, 2)
    mask = torch.ones_like(ids[:, 0])
    with torch.no_grad():
        state = head(ids[:, 0], mask, head.initial_state(1)).state
        assert len(state["keys"]) == 1
        with_memory = block_outputs(backbone, lambda: head(ids[:, 1], mask, state))
        plain = block_outputs(backbone, lambda: backbone(backbone.embed(ids[:, 1]), mask))
    assert torch.equal(with_memory[0], plain[0])  # block 0 does not retrieve
    assert not torch.allclose(with_memory[1], plain[1], atol=1e-4)
    # Its memory is block 1's keys: a head on every layer keeps the same keys in its second slot.
    everywhere = extended(backbone)
    with torch.no_grad():
        both = everywhere(ids[:, 0], mask, everywhere.initial_state(1)).state
    torch.testing.assert_close(state["keys"][0], both["keys"][1])


def projected_keys(backbone, ids, layer: int) -> torch.Tensor:
    """Layer `layer`'s keys before rotary, (batch, kv_heads, positions, head_dim), from its key projection."""
    attention = backbone.blocks[layer].self_attn
    seen = []
    handle = attention.k_proj.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        backbone(backbone.embed(ids), torch.ones_like(ids))
    handle.remove()
    return seen[0].view(ids.shape[0], ids.shape[1], -1, attention.head_dim).transpose(1, 2)


def test_segment_start_and_query_store_keys_without_rotary_and_original_as_the_attention_saw_them():
    torch.manual_seed(0)
    llama = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=LLAMA)
    ids = segments(1, 1)[:, 0]
    before_rotary = projected_keys(llama, ids, 1)
    for mode in ("segment_start", "query"):
        head = extended(llama, memory_positions=mode)
        with torch.no_grad():
            stored = head(ids, torch.ones_like(ids), head.initial_state(1)).state["keys"][1]
        torch.testing.assert_close(stored, before_rotary, rtol=1e-5, atol=1e-5)
    head = extended(llama, memory_positions="original")
    with torch.no_grad():
        stored = head(ids, torch.ones_like(ids), head.initial_state(1)).state["keys"][1]
    assert not torch.allclose(stored[:, :, 1:], before_rotary[:, :, 1:], atol=1e-4)
    torch.testing.assert_close(stored[:, :, 0], before_rotary[:, :, 0])  # position 0: rotary is the identity


def test_memory_positions_change_nothing_for_gpt2():
    torch.manual_seed(0)
    gpt2 = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=GPT2)
    ids = segments(2, 3)
    with torch.no_grad():
        outputs = [unroll(extended(gpt2, memory_positions=mode), ids)[-1].token_states
                   for mode in ("original", "segment_start", "query")]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_query_placement_retrieves_by_content_alone():
    # Un-rotated on both sides, the score of a memory does not depend on where the query sits: the same token
    # read at two positions cites the same memories in the first layer (where its state is only its embedding).
    torch.manual_seed(0)
    llama = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=LLAMA)
    head = extended(llama, memory_positions="query", citations=True, layers=[0])
    ids = segments(1, 2)
    ids[0, 1, 1] = ids[0, 1, 4]
    with torch.no_grad():
        cited = unroll(head, ids)[1].diagnostics["citations"][0]
    assert torch.equal(cited[0, :, 1], cited[0, :, 4])
    at_start = extended(llama, memory_positions="segment_start", citations=True, layers=[0])
    with torch.no_grad():
        placed = unroll(at_start, ids)[1].diagnostics["citations"][0]
    assert not torch.equal(placed[0, :, 1], placed[0, :, 4])


def test_citations_name_the_document_positions_each_query_retrieved(backbone):
    ids = segments(2, 3)
    quiet = unroll(extended(backbone), ids)
    assert all(out.diagnostics == {} for out in quiet)  # nothing kept unless asked for
    head = extended(backbone, citations=True, memory_size=8)
    outputs = unroll(head, ids)
    assert outputs[0].diagnostics["citations"] == {}  # nothing to retrieve yet
    for k, out in enumerate(outputs[1:], start=1):
        cited = out.diagnostics["citations"]
        assert set(cited) == {0, 1}
        heads = backbone.model.config.num_attention_heads
        assert cited[0].shape == (2, heads, SEGMENT, 2)
        # Only earlier text, and only what the memory still holds: the last 8 tokens before this segment.
        assert cited[0].min() >= max(0, k * SEGMENT - 8) and cited[0].max() < k * SEGMENT
    # The memory position a query cites holds the key it retrieved: with the whole text in memory, slot = position.
    whole = extended(backbone, citations=True, memory_size=64, topk=1)
    out = unroll(whole, ids)[2]
    slots = out.diagnostics["citations"][1]
    state = unroll(whole, ids[:, :2])[-1].state
    assert torch.equal(state["positions"], torch.arange(12).expand(2, 12))
    assert slots.max() < 12


def test_retrieval_brings_back_a_value_from_an_earlier_segment():
    # A query identical to one stored key (and unlike everything else) reads that key's value: the memory adds to
    # the output exactly what the one right memory holds, and attention over its own segment cannot.
    generator = torch.Generator().manual_seed(3)
    dim, slots = 16, 32
    memory_keys = torch.randn(1, 1, slots, dim, generator=generator)
    memory_values = torch.randn(1, 1, slots, dim, generator=generator)
    query = 8 * memory_keys[:, :, 17:18].clone()
    local_k, local_v = torch.randn(2, 1, 1, 1, dim, generator=generator)
    out, cited = attend_with_memory(query, local_k, local_v, causal(1), query, memory_keys, memory_values,
                                    torch.ones(1, slots, dtype=bool), topk=4, threshold=0.25,
                                    scaling=dim ** -0.5, dropout=0.0, training=False)
    assert cited[0, 0, 0, 0] == 17
    fact = memory_values[0, 0, 17]
    assert F.cosine_similarity(out[0, 0, 0], fact, dim=0) > 0.85
    assert F.cosine_similarity(local_v[0, 0, 0], fact, dim=0) < 0.5


def test_the_head_trains_the_backbone_through_retrieval(backbone):
    head = extended(backbone).train()
    ids = segments(2, 2)
    state = unroll(head, ids[:, :1])[-1].state
    out = head(ids[:, 1], torch.ones_like(ids[:, 1]), state)
    backbone.zero_grad(set_to_none=True)
    out.token_states.sum().backward()
    assert all(parameter.grad is not None for parameter in backbone.blocks.parameters())
    assert list(head.parameters()) == list(backbone.parameters())  # no parameters of its own


@pytest.mark.parametrize("override, message", [
    ("model.memory_size=0", "model.memory_size=0"),
    ("model.topk=0", "model.topk=0"),
    ("model.similarity_threshold=2", "model.similarity_threshold=2"),
    ("model.memory_positions=middle", "model.memory_positions='middle'"),
])
def test_impossible_settings_name_the_key(backbone, override, message):
    with pytest.raises(InstantiationException, match=message):
        build_head("extended_mind", backbone, override)


def test_the_config_selects_the_head():
    config = compose_train(["model=extended_mind"]).model
    assert config._target_ == "memlm.memory.ExtendedMind"
    assert config.similarity_threshold is None and config.memory_positions == "segment_start"


@pytest.mark.slow
def test_smollm2_recalls_a_code_from_an_earlier_segment():
    from memlm import assets

    backbone = load_backbone(str(assets.folder("smollm2-135m")))
    tokenizer = backbone.tokenizer
    fact = " The secret password of the blue door is pineapple. It must never be written down."
    filler = " The weather was mild and the market was busy with traders from the hills."
    question = " Someone asked me about the blue door. The secret password of the blue door is"
    first = tokenizer(fact + filler, add_special_tokens=False)["input_ids"]
    second = tokenizer(filler + question, add_special_tokens=False)["input_ids"]
    answer = tokenizer(" pineapple", add_special_tokens=False)["input_ids"][0]

    def probability(head):
        state = head.initial_state(1)
        with torch.no_grad():
            for ids in (first, second):
                out = head(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), state)
                state = out.state
        return backbone.logits(out.token_states[:, -1]).softmax(-1)[0, answer].item()

    # Measured: 0.56 with the memory, 1.3e-6 reading the second segment alone (0.66 reading both at once).
    assert probability(ExtendedMind(backbone).eval()) > 0.3
    assert probability(Baseline(backbone).eval()) < 1e-3
