"""The backbone's seams for heads that work inside its layers: block interceptors and the attention function, each
acting for one `with` block, on GPT-2- and Llama-shaped backbones, and leaving the model as it was afterwards."""

import pytest
import torch

from memlm.backbones import ATTENDING, load_backbone
from tests.heads import build_head, unroll
from tests.test_causality import GPT2, LLAMA

LENGTH = 7
BLOCKS = {"gpt2": "h", "llama": "layers"}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def backbone(request):
    torch.manual_seed(0)
    tiny = GPT2 if request.param == "gpt2" else LLAMA
    return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=tiny).eval()


@pytest.fixture
def embeds(backbone):
    return backbone.embed(torch.randint(1000, 20000, (2, LENGTH), generator=torch.Generator().manual_seed(1)))


def padded_mask() -> torch.Tensor:
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, 5:] = 0
    return mask


def no_hooks_left(backbone) -> bool:
    return all(not block._forward_hooks and not block._forward_pre_hooks for block in backbone.blocks)


def pass_through(module, query, key, value, attention_mask, attend, **kwargs):
    return attend(module, query, key, value, attention_mask, **kwargs)


def with_one_more_key(module, query, key, value, attention_mask, attend, **kwargs):
    """Attention over one extra key/value pair, in front of the layer's own and visible to every query, as a head
    that attends to a memory would add it (causal masking stays explicit, so the pair is not shifted out)."""
    batch, _, length, _ = key.shape
    key = torch.cat([torch.ones_like(key[:, :, :1]), key], dim=2)
    value = torch.cat([torch.ones_like(value[:, :, :1]), value], dim=2)
    causal = torch.ones(length, length, dtype=torch.bool, device=key.device).tril()
    visible = torch.cat([causal.new_ones(length, 1), causal], dim=1).expand(batch, 1, length, length + 1)
    return attend(module, query, key, value, visible, **kwargs)


# ---------------------------------------------------------------------------------------------- blocks


def test_blocks_are_the_stack_of_layers(backbone):
    assert backbone.blocks is getattr(backbone.model.base_model, BLOCKS[backbone.model.config.model_type])
    assert len(backbone.blocks) == backbone.model.config.num_hidden_layers


@pytest.mark.parametrize("mask", [None, padded_mask()], ids=["unpadded", "padded"])
def test_identity_interceptors_give_the_plain_forward(backbone, embeds, mask):
    seen = []

    def keep(index, hidden):
        seen.append(("before", index))

    def same(index, block_input, hidden):
        seen.append(("after", index))
        return hidden

    with torch.no_grad():
        plain = backbone(embeds, mask)
        with backbone.intercepting(before=keep, after=same):
            intercepted = backbone(embeds, mask)
    assert torch.equal(intercepted, plain)
    assert seen == [(stage, index) for index in range(len(backbone.blocks)) for stage in ("before", "after")]
    assert no_hooks_left(backbone)


def test_interceptors_replace_a_blocks_input_and_output(backbone, embeds):
    def run(before=None):
        """Last hidden states with every block's output shifted, and the inputs the blocks read."""
        inputs = {}

        def keep_input_shift_output(index, block_input, hidden):
            inputs[index] = block_input
            return hidden + 0.5

        with torch.no_grad(), backbone.intercepting(before=before, after=keep_input_shift_output):
            return backbone(embeds), inputs

    with torch.no_grad():
        plain = backbone(embeds)
    shifted_output, inputs = run()
    shifted_both, shifted_inputs = run(before=lambda index, hidden: hidden + 1.0 if index == 0 else None)
    assert not torch.allclose(shifted_output, plain)
    assert not torch.allclose(shifted_both, shifted_output)
    torch.testing.assert_close(shifted_inputs[0], inputs[0] + 1.0)  # `after` sees what the block read
    assert no_hooks_left(backbone)


def test_blocks_called_by_keyword_returning_tuples_are_intercepted(backbone, monkeypatch):
    # Families differ: hidden states may arrive as `hidden_states=` and leave first in a tuple.
    block = backbone.blocks[0]
    monkeypatch.setattr(block, "forward", lambda hidden_states, **kwargs: (hidden_states * 2, "extra"))
    hidden = torch.ones(1, 3, backbone.hidden_size)
    with backbone.intercepting(before=lambda index, x: x + 1, after=lambda index, x, out: out + x):
        output = block(hidden_states=hidden)
    assert output[1] == "extra"
    torch.testing.assert_close(output[0], torch.full_like(hidden, 2 * 2 + 2))
    assert no_hooks_left(backbone)


def test_interceptors_are_removed_when_the_forward_raises(backbone, embeds):
    def fail(index, block_input, hidden):
        raise RuntimeError("inside the block")

    with torch.no_grad():
        plain = backbone(embeds)
        with pytest.raises(RuntimeError, match="inside the block"), backbone.intercepting(after=fail):
            backbone(embeds)
        assert no_hooks_left(backbone)
        assert torch.equal(backbone(embeds), plain)


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mask", [None, padded_mask()], ids=["unpadded", "padded"])
def test_a_pass_through_attention_gives_the_plain_forward(backbone, embeds, implementation, mask):
    backbone.model.set_attn_implementation(implementation)
    try:
        with torch.no_grad():
            plain = backbone(embeds, mask)
            with backbone.attending(pass_through):
                assert backbone.model.config._attn_implementation == ATTENDING
                through = backbone(embeds, mask)
        assert torch.equal(through, plain)
        assert backbone.model.config._attn_implementation == implementation
    finally:
        backbone.model.set_attn_implementation("sdpa")


def test_the_attention_function_sees_every_layer_once_per_forward(backbone, embeds):
    config = backbone.model.config
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = config.hidden_size // heads
    seen = []

    def record(module, query, key, value, attention_mask, attend, **kwargs):
        seen.append((module.layer_idx, (tuple(query.shape), tuple(key.shape), tuple(value.shape))))
        return attend(module, query, key, value, attention_mask, **kwargs)

    with torch.no_grad(), backbone.attending(record):
        backbone(embeds)
        backbone(embeds)
    layers = list(range(len(backbone.blocks)))
    assert [layer for layer, _ in seen] == layers + layers
    assert {shapes for _, shapes in seen} == {((2, heads, LENGTH, head_dim), (2, kv_heads, LENGTH, head_dim),
                                               (2, kv_heads, LENGTH, head_dim))}


def test_an_extra_key_and_value_change_the_outputs(backbone, embeds):
    with torch.no_grad():
        plain = backbone(embeds)
        with backbone.attending(with_one_more_key):
            extended = backbone(embeds)
        assert not torch.allclose(extended, plain)
        assert torch.equal(backbone(embeds), plain)


def test_the_model_is_restored_after_an_exception_inside(backbone, embeds):
    with torch.no_grad():
        plain = backbone(embeds)
        with pytest.raises(RuntimeError, match="inside the block"), backbone.attending(pass_through):
            backbone(embeds)
            raise RuntimeError("inside the block")
        assert backbone.model.config._attn_implementation == "sdpa"
        assert torch.equal(backbone(embeds), plain)


def test_nested_attending_blocks_are_refused(backbone, embeds):
    refused = pytest.raises(RuntimeError, match="already inside Backbone.attending")
    with backbone.attending(pass_through), refused, backbone.attending(pass_through):
        pass
    assert backbone.model.config._attn_implementation == "sdpa"


def test_a_family_outside_the_attention_registry_is_named(backbone, monkeypatch):
    # What transformers reports for a family whose attention does not go through `AttentionInterface`.
    monkeypatch.setattr(type(backbone.model), "_can_set_attn_implementation", classmethod(lambda cls: False))
    name = type(backbone.model).__name__
    with pytest.raises(ValueError, match=f"{name} does not route its attention"), backbone.attending(pass_through):
        pass
    assert backbone.model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------------------------------------- compile


def test_a_compile_setting_that_is_not_a_boolean_is_named():
    with pytest.raises(ValueError, match="backbone.compile='yes' must be true or false"):
        load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=GPT2, compile="yes")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rmt", "armt"])
def test_compiled_blocks_give_the_eager_outputs_and_gradients(name):
    """`backbone.compile=true`, for a head around the blocks (RMT) and one inside them through block hooks
    (ARMT): the same outputs, gradients and parameter names as the eager backbone."""
    heads = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        backbone = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=GPT2, compile=compiled)
        heads[compiled] = build_head(name, backbone).eval()  # no dropout: both draw the same outputs
    assert heads[True].state_dict().keys() == heads[False].state_dict().keys()
    ids = torch.randint(1000, 20000, (2, 3, LENGTH), generator=torch.Generator().manual_seed(2))
    outputs, grads = {}, {}
    for compiled, head in heads.items():
        states = torch.cat([output.token_states for output in unroll(head, ids)], dim=1)
        states.square().mean().backward()
        outputs[compiled] = states.detach()
        grads[compiled] = {key: p.grad for key, p in head.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-4, atol=1e-5)
    assert grads[True].keys() == grads[False].keys()
    for key, grad in grads[False].items():
        torch.testing.assert_close(grads[True][key], grad, rtol=1e-3, atol=1e-5, msg=key)
