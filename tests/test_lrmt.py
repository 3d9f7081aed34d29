"""LRMT: segment means in a bounded first-in-first-out store per sample, read by gated cross-attention."""

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from memlm.backbones import load_backbone
from memlm.memory import LRMT
from memlm.memory.lrmt import LayerRead
from memlm.module import MemoryLM
from memlm.recurrence import Recurrence
from memlm.training import train
from tests.conftest import compose_train
from tests.heads import HEADS, unroll
from tests.test_recurrence import make_batch, run, tiny_rmt

D = 32
LENGTH = 16


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    size = {"model_type": "gpt2", "n_layer": 2, "n_embd": D, "n_head": 2, "n_positions": 64}
    return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=size).eval()


def lrmt(backbone, **settings) -> LRMT:
    torch.manual_seed(1)
    return LRMT(backbone, **{"memory_size": 3, **settings}).eval()


def segments(batch: int, count: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1000, 20000, (batch, count, LENGTH), generator=torch.Generator().manual_seed(seed))


def bare_block_outputs(backbone, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each block's output hidden states for the backbone alone."""
    outputs = {}
    with torch.no_grad(), backbone.intercepting(after=lambda index, _, hidden: outputs.setdefault(index, hidden)):
        backbone(backbone.embed(ids))
    return outputs


def test_the_memory_vector_is_the_mean_of_the_unpadded_token_states(backbone):
    head = lrmt(backbone)
    ids = segments(2, 1)[:, 0]
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    changed_padding, changed_token = ids.clone(), ids.clone()
    changed_padding[1, 12] += 9
    changed_token[1, 4] += 9
    with torch.no_grad():
        state = head(ids, mask, head.initial_state(2)).state
        padding_moved = head(changed_padding, mask, head.initial_state(2)).state
        token_moved = head(changed_token, mask, head.initial_state(2)).state
    assert state["valid"].tolist() == [[False, False, True]] * 2
    # The first segment reads nothing, so its layer states are the bare backbone's; sample 1 is its 10 tokens.
    for sample, length in ((0, LENGTH), (1, 10)):
        blocks = bare_block_outputs(backbone, ids[sample : sample + 1, :length])
        for layer in (0, 1):
            torch.testing.assert_close(state["memories"][sample, layer, -1], blocks[layer][0].mean(dim=0))
    assert not state["memories"][:, :, :-1].any()  # the empty slots hold nothing
    torch.testing.assert_close(padding_moved["memories"], state["memories"])
    assert not torch.allclose(token_moved["memories"][1], state["memories"][1])


def test_the_store_keeps_the_last_memory_size_means_in_order(backbone):
    head = lrmt(backbone, memory_size=3)
    layer_states = {slot: [] for slot in (0, 1)}
    for slot, read in enumerate(head.reads):
        read.register_forward_hook(lambda module, inputs, output, slot=slot: layer_states[slot].append(output[0]))
    with torch.no_grad():
        outputs = unroll(head, segments(2, 5))
    # Each segment's mean is of the states its block hands on, after that block's read.
    means = [torch.stack([layer_states[slot][k].mean(dim=1) for slot in (0, 1)], dim=1) for k in range(5)]
    valid = [out.state["valid"].tolist() for out in outputs]
    assert valid[:3] == [[[False, False, True]] * 2, [[False, True, True]] * 2, [[True, True, True]] * 2]
    assert valid[3] == valid[4] == [[True, True, True]] * 2
    store = outputs[-1].state["memories"]
    for slot, k in enumerate((2, 3, 4)):  # oldest first; segments 0 and 1 have fallen out
        torch.testing.assert_close(store[:, :, slot], means[k])
    assert not torch.allclose(means[1], means[2])  # the means differ, so the order is tested


def test_the_first_segment_reads_exactly_zero_and_runs_as_the_bare_backbone(backbone):
    head = lrmt(backbone, gate_bias=5.0)  # a wide-open gate: the zero is the read's, not the gate's
    ids = segments(2, 2)
    mask = torch.ones_like(ids[:, 0])
    first, second = unroll(head, ids)
    with torch.no_grad():
        assert torch.equal(first.token_states, backbone(backbone.embed(ids[:, 0]), mask))
        assert not torch.allclose(second.token_states, backbone(backbone.embed(ids[:, 1]), mask))
    # An empty store's softmax gives no NaN, not even in the gradient.
    backbone.logits(first.token_states).logsumexp(-1).mean().backward()
    query = head.reads[0].query.weight.grad
    assert torch.equal(query, torch.zeros_like(query))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    head.zero_grad()


def test_empty_slots_take_no_weight():
    torch.manual_seed(0)
    read = LayerRead(D, projections=True, gate_bias=0.0)
    hidden, stored = torch.randn(1, 5, D), torch.randn(1, 1, D)
    padded = torch.cat([torch.full((1, 2, D), 1e4), stored], dim=1)  # junk in the slots marked empty
    with torch.no_grad():
        alone = read(hidden, stored, torch.tensor([[True]]))[0]
        beside_empty = read(hidden, padded, torch.tensor([[False, False, True]]))[0]
        torch.testing.assert_close(beside_empty, alone)
        assert torch.equal(read(hidden, padded, torch.zeros(1, 3, dtype=torch.bool))[0], hidden)
        assert not torch.allclose(alone, hidden)


def test_untrained_projections_read_the_reference_formula():
    torch.manual_seed(0)
    projected = LayerRead(D, projections=True, gate_bias=0.0)
    reference = LayerRead(D, projections=False, gate_bias=0.0)
    reference.query.load_state_dict(projected.query.state_dict())
    hidden, stored, valid = torch.randn(2, 5, D), torch.randn(2, 3, D), torch.ones(2, 3, dtype=torch.bool)
    queries = projected.query(hidden)
    expected = hidden + 0.5 * (queries @ stored.transpose(1, 2) / D**0.5).softmax(-1) @ stored
    with torch.no_grad():
        torch.testing.assert_close(projected(hidden, stored, valid)[0], expected)
        torch.testing.assert_close(reference(hidden, stored, valid)[0], expected)
    assert not any(isinstance(module, torch.nn.Linear) for module in (reference.key, reference.value))


def test_samples_in_a_batch_do_not_share_memory(backbone):
    head = lrmt(backbone)
    ids = segments(2, 3)
    other = ids.clone()
    other[1, 0] = segments(1, 1, seed=7)[0, 0]  # sample 1's first segment only
    with torch.no_grad():
        together, changed, alone = unroll(head, ids), unroll(head, other), unroll(head, ids[:1])
    torch.testing.assert_close(changed[-1].state["memories"][0], together[-1].state["memories"][0])
    torch.testing.assert_close(changed[-1].token_states[0], together[-1].token_states[0])
    torch.testing.assert_close(alone[-1].state["memories"][0], together[-1].state["memories"][0])
    # Sample 1's first segment reaches its own third segment's predictions, through the store.
    assert not torch.allclose(changed[-1].token_states[1], together[-1].token_states[1])


def test_a_segment_that_is_all_padding_writes_nothing(backbone):
    head = lrmt(backbone)
    ids = segments(2, 2)
    mask = torch.ones_like(ids)
    mask[1, 1] = 0
    with torch.no_grad():
        first, second = unroll(head, ids, mask)
    assert torch.equal(second.state["memories"][1], first.state["memories"][1])
    assert torch.equal(second.state["valid"][1], first.state["valid"][1])
    assert second.state["valid"][0].sum() == 2  # sample 0 wrote its second segment


def test_a_later_segment_depends_on_earlier_ones_only_through_the_state(backbone):
    head = lrmt(backbone)
    ids = segments(1, 3)
    mask = torch.ones_like(ids[:, 0])
    embedded = []
    handle = backbone.embedding.register_forward_hook(lambda module, inputs, output: embedded.append(output))
    try:
        for cut in (False, True):
            embedded.clear()
            state = head.initial_state(1)
            for k in range(3):
                out = head(ids[:, k], mask, state)
                embedded[-1].retain_grad()
                state = {name: value.detach() for name, value in out.state.items()} if cut and k == 1 else out.state
            backbone.logits(out.token_states).logsumexp(-1).mean().backward()
            reached = [e.grad is not None and e.grad.abs().sum() > 0 for e in embedded]
            # Through the store the third segment's loss reaches the first two; with the store detached, nothing.
            assert reached == ([False, False, True] if cut else [True, True, True])
            head.zero_grad()
    finally:
        handle.remove()
    # And the head keeps nothing between documents: a second run of the same text gives the same outputs.
    with torch.no_grad():
        before = unroll(head, ids)[-1].token_states
        unroll(head, segments(1, 3, seed=5))
        assert torch.equal(unroll(head, ids)[-1].token_states, before)
    assert all(name.startswith("backbone.") for name, _ in head.named_buffers())  # no store of its own


def test_only_the_chosen_layers_read_and_write(backbone):
    last_only = lrmt(backbone, layers=[1])
    assert last_only.layers == (1,) and len(last_only.reads) == 1
    assert last_only.initial_state(2)["memories"].shape == (2, 1, 3, D)
    ids = segments(1, 2)
    inputs = []

    def keep_input(index, hidden):
        if index == 1:
            inputs.append(hidden)

    with torch.no_grad(), backbone.intercepting(before=keep_input):
        unroll(last_only, ids)
    # Block 1 reads block 0's output, unchanged by memory when block 0 has none.
    torch.testing.assert_close(inputs[1], bare_block_outputs(backbone, ids[:, 1])[0])
    inputs.clear()
    with torch.no_grad(), backbone.intercepting(before=keep_input):
        unroll(lrmt(backbone), ids)
    assert not torch.allclose(inputs[1], bare_block_outputs(backbone, ids[:, 1])[0], atol=1e-3)


def test_the_backbone_is_untouched_outside_the_head(backbone):
    embeds = backbone.embed(torch.randint(1000, 20000, (1, 8)))
    with torch.no_grad():
        plain = backbone(embeds)
        unroll(lrmt(backbone), segments(1, 2))
        assert torch.equal(backbone(embeds), plain)
    assert all(not block._forward_hooks and not block._forward_pre_hooks for block in backbone.blocks)


def test_the_state_stays_float32_under_bfloat16_autocast(backbone):
    head = lrmt(backbone)
    dtypes = []
    head.reads[0].query.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = unroll(head, segments(2, 2))
        assert torch.nn.Linear(D, D)(torch.randn(1, D)).dtype == torch.bfloat16  # where autocast reaches
    assert dtypes == [torch.float32, torch.float32]  # the read's projections run outside it
    state = outputs[-1].state
    assert state["memories"].dtype == torch.float32 and state["valid"].dtype == torch.bool
    assert state["memories"][:, :, -2:].abs().sum() > 0


@pytest.mark.parametrize("depth, recompute", [(-1, False), (2, False), (-1, True)])
def test_chunked_backward_gives_the_plain_gradients_through_the_store(depth, recompute):
    torch.manual_seed(0)
    head = LRMT(tiny_rmt().backbone, memory_size=2, projections=True)
    batch = make_batch(5)
    plain_loss, plain = run(head, batch, Recurrence(depth), chunked=False)
    chunked_loss, chunked = run(head, batch, Recurrence(depth, recompute=recompute), chunked=True)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == chunked.keys() and "reads.0.key.weight" in plain
    assert plain["reads.0.key.weight"].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_checkpoint_round_trip_holds_parameters_and_no_memory(fast_cfg, tmp_path):
    train(fast_cfg(head=HEADS["lrmt"]))
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["model"]["_target_"] == "memlm.memory.LRMT"
    restored = MemoryLM.load_from_checkpoint(path).state_dict()
    assert restored.keys() == saved["state_dict"].keys()
    for name, value in restored.items():
        torch.testing.assert_close(value, saved["state_dict"][name])
    head_keys = {name for name in restored if name.startswith("head.") and not name.startswith("head.backbone.")}
    assert "head.reads.0.gate" in head_keys and all(name.startswith("head.reads.") for name in head_keys)


@pytest.mark.parametrize("override, message", [
    ("model.memory_size=0", "model.memory_size=0"),
])
def test_bad_settings_name_the_key(backbone, override, message):
    config = compose_train(["model=lrmt", override]).model
    with pytest.raises(InstantiationException, match=message):
        instantiate(config, backbone=backbone)


def test_the_configured_defaults_build_on_the_default_backbone():
    config = compose_train(["model=lrmt"])
    head = instantiate(config.model, backbone=instantiate(config.backbone))
    assert head.memory_size == 32 and head.layers == (0, 1) and head.extra_positions() == 0
    assert isinstance(head.reads[0].key, torch.nn.Identity)  # the reference's read: the memories are the keys
    assert torch.equal(head.reads[0].gate, torch.zeros(128))
