"""ARMT: the delta rule and its normaliser, a memory per sample in the recurrent state, and the settings it refuses."""

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from memlm.memory import ARMT
from memlm.memory.armt import LayerMemory, associate, dpfp, recall
from memlm.module import MemoryLM
from memlm.recurrence import Recurrence
from memlm.training import train
from tests.conftest import compose_train
from tests.heads import HEADS, tiny_gpt2, unroll
from tests.test_recurrence import make_batch, run, tiny_rmt

D = 32


@pytest.fixture(scope="module")
def backbone():
    return tiny_gpt2()


def with_values(head: ARMT) -> ARMT:
    """The head with random value projections: W_V starts at zero, so an untrained memory stores nothing."""
    for memory in head.memories:
        torch.nn.init.normal_(memory.value.weight, std=0.5)
    return head


def segments(batch: int, count: int, length: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(1000, 20000, (batch, count, length), generator=torch.Generator().manual_seed(seed))


def unit_features(*supports: list[int], size: int = 12) -> torch.Tensor:
    """One sample's n keys, (1, n, size): non-negative unit feature vectors on the given supports."""
    rows = torch.zeros(len(supports), size)
    for row, support in zip(rows, supports, strict=True):
        row[support] = torch.arange(1.0, len(support) + 1)
    return torch.nn.functional.normalize(rows, dim=-1).unsqueeze(0)


def empty(size: int = 12, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, size, d), torch.zeros(1, size)


def test_dpfp_multiplies_the_signed_parts_with_their_rolls():
    x = torch.tensor([[1.0, -2.0, 3.0]])
    # r = [relu(x), relu(-x)] = [1, 3, 0, 0, 2, 0] in the order [x+; x-] = [1, 0, 3, 0, 2, 0];
    # rolled by 1: [0, 1, 0, 3, 0, 2] (every product 0); by 2: [2, 0, 1, 0, 3, 0].
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0, 0.0, 6.0, 0.0]])
    torch.testing.assert_close(dpfp(x, nu=2), expected)
    wide = dpfp(torch.randn(3, 7, 16), nu=3)
    assert wide.shape == (3, 7, 2 * 3 * 16) and (wide >= 0).all() and wide.sum() > 0


def test_an_empty_memory_reads_zero():
    matrix, normaliser = empty()
    read = recall(matrix, normaliser, unit_features([0, 3], [5]))
    assert torch.equal(read, torch.zeros(1, 2, 5))


def test_writing_a_key_again_with_its_own_value_leaves_the_memory_unchanged():
    keys = unit_features([0, 3], [5, 6, 7])
    values = torch.randn(1, 2, 5)
    once = associate(*empty(), keys, values, torch.ones(1, 2, 1))
    twice = associate(*once, keys, values, torch.ones(1, 2, 1))
    assert once[0].abs().sum() > 0
    # The delta rule adds only the difference from what the key already recalls; an additive rule would double A.
    torch.testing.assert_close(twice[0], once[0], atol=1e-4, rtol=0)
    # The keys are already covered by the normaliser (γ = 0), so it does not grow either.
    torch.testing.assert_close(twice[1], once[1])


def test_a_new_value_for_a_known_key_replaces_the_old_one_and_leaves_other_keys_alone():
    key, other = unit_features([0, 3]), unit_features([5, 6, 7])
    old, new, kept = torch.randn(1, 1, 5), torch.randn(1, 1, 5), torch.randn(1, 1, 5)
    beta = torch.ones(1, 1, 1)
    memory = associate(*empty(), key, old, beta)
    memory = associate(*memory, other, kept, beta)
    torch.testing.assert_close(recall(*memory, key), old, atol=1e-4, rtol=1e-4)

    memory = associate(*memory, key, new, beta)
    torch.testing.assert_close(recall(*memory, key), new, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recall(*memory, other), kept, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(recall(*memory, key), old, atol=1e-2)


def test_a_weak_write_moves_the_value_only_part_of_the_way():
    key = unit_features([1, 2])
    old, new = torch.zeros(1, 1, 5), torch.ones(1, 1, 5)
    memory = associate(*empty(), key, old, torch.ones(1, 1, 1))
    memory = associate(*memory, key, new, torch.full((1, 1, 1), 0.25))
    torch.testing.assert_close(recall(*memory, key), torch.full((1, 1, 5), 0.25), atol=1e-4, rtol=1e-4)


def test_a_layer_memory_writing_the_same_states_twice_keeps_its_matrix():
    torch.manual_seed(0)
    layer = LayerMemory(D, d_mem=8, nu=2)
    torch.nn.init.normal_(layer.value.weight)
    torch.nn.init.zeros_(layer.strength.weight)
    torch.nn.init.constant_(layer.strength.bias, 30.0)  # β = 1
    states = torch.randn(1, 1, D)
    start = (torch.zeros(1, 2 * 2 * 8, D), torch.zeros(1, 2 * 2 * 8))
    once = layer.write(states, *start)
    twice = layer.write(states, *once)
    assert once[0].abs().sum() > 0
    torch.testing.assert_close(twice[0], once[0], atol=1e-4, rtol=1e-4)
    # ... and what it reads back for that memory state's own key is the value it wrote.
    keys = layer.features(layer.key(states))
    torch.testing.assert_close(recall(*once, keys), layer.value(states), atol=1e-4, rtol=1e-4)


def with_strength(layer: LayerMemory, bias: float) -> LayerMemory:
    """The layer with every write's W_β m equal to `bias`."""
    torch.nn.init.zeros_(layer.strength.weight)
    torch.nn.init.constant_(layer.strength.bias, bias)
    return layer


def test_a_closed_gated_write_leaves_the_matrix_bit_for_bit_where_the_papers_sigmoid_leaks():
    torch.manual_seed(0)
    for gated in (True, False):
        layer = with_strength(LayerMemory(D, d_mem=8, nu=2, gated=gated), 30.0)
        torch.nn.init.normal_(layer.value.weight)
        held = layer.write(torch.randn(2, 2, D), torch.zeros(2, 2 * 2 * 8, D), torch.zeros(2, 2 * 2 * 8))
        with_strength(layer, -8.0)  # hardsigmoid: 0; σ: 3e-4
        matrix, _ = layer.write(torch.randn(2, 2, D), *held)
        assert torch.equal(matrix, held[0]) == gated


def test_a_gated_write_stores_a_unit_value_times_the_layers_gain():
    torch.manual_seed(0)
    layer = with_strength(LayerMemory(D, d_mem=8, nu=2, gated=True), 30.0)  # β = 1
    assert layer.value.weight.abs().sum() > 0  # a zero W_V would have no direction to normalise
    with torch.no_grad():
        layer.value_gain.fill_(2.5)
    states = torch.randn(1, 1, D)
    written = layer.write(states, torch.zeros(1, 2 * 2 * 8, D), torch.zeros(1, 2 * 2 * 8))
    read = recall(*written, layer.features(layer.key(states)))
    torch.testing.assert_close(read, 2.5 * torch.nn.functional.normalize(layer.value(states), dim=-1))


def test_a_gated_head_prices_its_writes_in_training_only(backbone):
    head = ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2, write="gated", write_penalty=0.5)
    for memory in head.memories:
        with_strength(memory, 30.0)  # β = 1 everywhere: the price is the weight itself
    ids = segments(2, 1)[:, 0]
    mask = torch.ones_like(ids)
    state = head.initial_state(2)
    assert head.train()(ids, mask, state).penalty.item() == 0.5
    assert head.eval()(ids, mask, state).penalty is None
    assert ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2).train()(ids, mask, state).penalty is None


def test_a_memory_that_holds_something_also_takes_the_next_samples_writes_and_an_empty_one_its_own_alone():
    torch.manual_seed(0)
    layer = LayerMemory(D, d_mem=8, nu=2)
    torch.nn.init.normal_(layer.value.weight)
    empty_memory = (torch.zeros(3, 2 * 2 * 8, D), torch.zeros(3, 2 * 2 * 8))
    matrix, normaliser = layer.write(torch.randn(3, 2, D), *empty_memory)
    matrix[2], normaliser[2] = 0, 0  # sample 2's memory is empty
    states = torch.randn(3, 2, D)
    taken = layer.write(states, matrix, normaliser, foreign_writes=1)
    alone = layer.write(states, matrix, normaliser)
    for sample, then in ((0, 1), (1, 2)):
        # As if the sample's own memory tokens were followed by the next sample's.
        both = layer.write(torch.cat([states[sample], states[then]]).unsqueeze(0), matrix[sample : sample + 1],
                           normaliser[sample : sample + 1])
        torch.testing.assert_close(taken[0][sample], both[0][0])
        torch.testing.assert_close(taken[1][sample], both[1][0])
        assert not torch.allclose(taken[0][sample], alone[0][sample])
    torch.testing.assert_close(taken[0][2], alone[0][2], atol=0, rtol=0)
    torch.testing.assert_close(taken[1][2], alone[1][2], atol=0, rtol=0)
    # More foreign writes than other samples: each takes every other sample's, none its own twice.
    every = layer.write(states, matrix, normaliser, foreign_writes=5)
    torch.testing.assert_close(every[0], layer.write(states, matrix, normaliser, foreign_writes=2)[0])


def test_foreign_writes_act_in_training_only_and_from_the_second_segment(backbone):
    torch.manual_seed(1)
    plain = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2))
    foreign = ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2, foreign_writes=1)
    foreign.load_state_dict(plain.state_dict())
    ids = segments(2, 3)
    other = ids.clone()
    other[1, 1] = segments(1, 1, seed=7)[0, 0]  # sample 1's second segment only
    with torch.no_grad():
        for head in (plain, foreign):
            head.eval()
        for (matrix, normaliser), (same_matrix, same_normaliser) in zip(
                unroll(plain, ids)[-1].state, unroll(foreign, ids)[-1].state, strict=True):
            torch.testing.assert_close(same_matrix, matrix, atol=0, rtol=0)
            torch.testing.assert_close(same_normaliser, normaliser, atol=0, rtol=0)
        try:
            for head in (plain, foreign):
                head.train()
            first_plain, second_plain = unroll(plain, ids)[:2]
            first, second, _ = unroll(foreign, ids)
            changed = unroll(foreign, other)[1]
            unchanged = unroll(plain, other)[1]
        finally:
            backbone.eval()
    for slot in range(2):
        # The first segment writes into empty memories: each takes its own writes alone.
        torch.testing.assert_close(first.state[slot][0], first_plain.state[slot][0], atol=0, rtol=0)
        # From the second on, sample 0's memory also takes sample 1's writes.
        assert not torch.allclose(second.state[slot][0][0], second_plain.state[slot][0][0])
        assert not torch.allclose(changed.state[slot][0][0], second.state[slot][0][0])
        torch.testing.assert_close(unchanged.state[slot][0][0], second_plain.state[slot][0][0])


def test_zero_initialised_values_leave_the_first_segments_write_unread(backbone):
    torch.manual_seed(1)
    head = ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2).eval()
    ids = segments(2, 2)
    with torch.no_grad():
        first, second = unroll(head, ids)
        fresh = head(ids[:, 1], torch.ones_like(ids[:, 1]), head.initial_state(2))
        for matrix, normaliser in first.state:
            assert torch.equal(matrix, torch.zeros_like(matrix))  # v = 0 and nothing to correct
            assert (normaliser > 0).any()  # the keys were still counted
        torch.testing.assert_close(second.token_states, fresh.token_states, atol=0, rtol=0)
        with_values(head)
        assert not torch.allclose(unroll(head, ids)[1].token_states, fresh.token_states)


def test_each_sample_has_its_own_memory_reset_for_every_document(backbone):
    torch.manual_seed(1)
    head = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2)).eval()
    ids = segments(2, 3)
    other = ids.clone()
    other[1, 0] = segments(1, 1, seed=7)[0, 0]  # sample 1's first segment only
    state = head.initial_state(2)
    assert len(state) == 2 and all(m.shape == (2, 32, D) and z.shape == (2, 32) for m, z in state)
    assert all(not m.any() and not z.any() for m, z in state)
    with torch.no_grad():
        together, changed, alone = unroll(head, ids), unroll(head, other), unroll(head, ids[:1])
    for (matrix, _), (changed_matrix, _), (alone_matrix, _) in zip(together[-1].state, changed[-1].state,
                                                                   alone[-1].state, strict=True):
        torch.testing.assert_close(changed_matrix[0], matrix[0])  # sample 1's text never reaches sample 0
        torch.testing.assert_close(alone_matrix[0], matrix[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed_matrix[1], matrix[1])
    torch.testing.assert_close(changed[-1].token_states[0], together[-1].token_states[0])
    # The first segment's text reaches the third segment's predictions through the memory.
    assert not torch.allclose(changed[-1].token_states[1], together[-1].token_states[1])


def second_segment_input_of_the_last_block(head: ARMT, ids: torch.Tensor) -> torch.Tensor:
    """What the last block's memory queries with in the second segment, at the token positions."""
    queries = []
    hook = head.memories[-1].query.register_forward_hook(lambda module, inputs, output: queries.append(inputs[0]))
    with torch.no_grad():
        unroll(head, ids)
    hook.remove()
    return queries[1][:, : ids.shape[-1]]


def test_only_the_chosen_layers_carry_memory(backbone):
    torch.manual_seed(1)
    last_only = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2, layers=[1])).eval()
    every = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2)).eval()
    assert last_only.layers == (1,) and len(last_only.memories) == 1 and len(last_only.initial_state(3)) == 1
    ids = segments(1, 2)
    block_outputs = {}
    with torch.no_grad(), backbone.intercepting(after=lambda index, _, hidden: block_outputs.setdefault(index, hidden)):
        backbone(backbone.embed(ids[:, 1]))
    # Block 1's input is block 0's output: unchanged by memory when block 0 carries none ...
    torch.testing.assert_close(second_segment_input_of_the_last_block(last_only, ids), block_outputs[0],
                               atol=1e-5, rtol=1e-5)
    # ... and moved by block 0's read when it does.
    assert not torch.allclose(second_segment_input_of_the_last_block(every, ids), block_outputs[0], atol=1e-3)


def test_the_backbone_is_untouched_outside_the_head(backbone):
    embeds = backbone.embed(torch.randint(1000, 20000, (1, 8)))
    with torch.no_grad():
        plain = backbone(embeds)
        head = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2))
        unroll(head, segments(1, 2))
        assert torch.equal(backbone(embeds), plain)
    assert all(not block._forward_hooks and not block._forward_pre_hooks for block in backbone.blocks)


def test_the_state_stays_float32_under_bfloat16_autocast(backbone):
    torch.manual_seed(1)
    head = with_values(ARMT(backbone, num_mem_tokens=2, d_mem=8, nu=2)).eval()
    ids = segments(2, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = unroll(head, ids)
    assert all(m.dtype == z.dtype == torch.float32 for m, z in outputs[-1].state)
    assert all(m.abs().sum() > 0 for m, _ in outputs[-1].state)


@pytest.mark.parametrize("write", ["delta", "gated"])
@pytest.mark.parametrize("depth, recompute", [(-1, False), (2, False), (-1, True)])
def test_chunked_backward_gives_the_plain_gradients_through_the_associative_state(depth, recompute, write):
    torch.manual_seed(0)
    head = with_values(ARMT(tiny_rmt().backbone, num_mem_tokens=2, d_mem=8, nu=2, write=write))
    batch = make_batch(5)
    plain_loss, plain = run(head, batch, Recurrence(depth), chunked=False)
    chunked_loss, chunked = run(head, batch, Recurrence(depth, recompute=recompute), chunked=True)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == chunked.keys() and "memories.0.key.weight" in plain
    assert plain["memories.0.key.weight"].abs().sum() > 0  # the write is trained through later segments' reads
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_checkpoint_round_trip_holds_parameters_and_no_memory(fast_cfg, tmp_path):
    train(fast_cfg(head=HEADS["armt"]))
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["model"]["_target_"] == "memlm.memory.ARMT"
    model = MemoryLM.load_from_checkpoint(path)
    restored = model.state_dict()
    assert restored.keys() == saved["state_dict"].keys()
    for name, value in restored.items():
        torch.testing.assert_close(value, saved["state_dict"][name])
    head_keys = {name for name in restored if name.startswith("head.") and not name.startswith("head.backbone.")}
    assert "head.memory" in head_keys and "head.memories.0.value.weight" in head_keys
    assert all(name == "head.memory" or name.startswith("head.memories.") for name in head_keys)


@pytest.mark.parametrize("override, message", [
    ("model.num_mem_tokens=0", "model.num_mem_tokens=0"),
    ("model.d_mem=1", "model.d_mem=1"),
    ("model.nu=0", "model.nu=0"),
    ("model.d_mem=3", "model.nu=3 must be between 1 and model.d_mem - 1 = 2"),
    ("model.foreign_writes=-1", "model.foreign_writes=-1"),
    ("model.write=hebbian", "model.write='hebbian' is not one of"),
    ("model.write_penalty=0.1", "model.write_penalty=0.1 must be 0, or positive with model.write=gated"),
    ("model.write_penalty=-1", "model.write_penalty=-1"),
])
def test_bad_settings_name_the_key(backbone, override, message):
    config = compose_train(["model=armt", override]).model
    with pytest.raises(InstantiationException, match=message):
        instantiate(config, backbone=backbone)


def test_the_configured_defaults_build_on_the_default_backbone():
    config = compose_train(["model=armt"])
    head = instantiate(config.model, backbone=instantiate(config.backbone))
    assert head.d_key == 2 * 3 * 32 and head.layers == (0, 1) and head.extra_positions() == 4
    assert not any(memory.gated for memory in head.memories) and head.write_penalty == 0  # the paper's write

