"""HMT: its memory cache, memory search, read-outs, sizes that cannot work, and causality by mode."""

import pytest
import torch

from memlm.memory import HMT
from tests.heads import tiny_gpt2, unroll

SEGMENT, D = 16, 32


@pytest.fixture(scope="module")
def backbone():
    return tiny_gpt2()


def hmt(backbone, **kwargs) -> HMT:
    torch.manual_seed(1)
    options = {"sensory_tokens": 4, "summary_tokens": 8, "cache_size": 3, **kwargs}
    return HMT(backbone, **options).eval()


def segments(count: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(1000, 20000, (batch, count, SEGMENT), generator=torch.Generator().manual_seed(2))


def test_cache_keeps_the_last_n_memory_embeddings(backbone):
    head = hmt(backbone)
    outputs = unroll(head, segments(5))
    assert [out.state["cache"].shape[1] for out in outputs] == [1, 2, 3, 3, 3]
    # First in, first out: the newest embedding is last, and the oldest ones have left.
    newest = [out.state["cache"][:, -1] for out in outputs]
    torch.testing.assert_close(outputs[-1].state["cache"], torch.stack(newest[-3:], dim=1))
    assert outputs[0].token_states.shape == (2, SEGMENT, D)


def test_search_weights_cover_the_cache_and_sum_to_one(backbone):
    outputs = unroll(hmt(backbone), segments(4))
    assert outputs[0].diagnostics["retrieval_weights"] is None  # empty cache: the learned vector stands in
    for k, out in enumerate(outputs[1:], start=1):
        weights = out.diagnostics["retrieval_weights"]
        assert weights.shape == (2, min(k, 3))
        torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_without_search_the_learned_vector_is_always_read(backbone):
    head = hmt(backbone, memory_search=False)
    outputs = unroll(head, segments(3))
    assert all(out.diagnostics["retrieval_weights"] is None for out in outputs)
    head.query.weight.data.normal_()  # unused without search: changing it changes nothing
    torch.testing.assert_close(unroll(head, segments(3))[-1].token_states, outputs[-1].token_states)


def test_memory_from_earlier_segments_changes_later_outputs(backbone):
    head = hmt(backbone)
    ids = segments(3)
    changed = ids.clone()
    changed[:, 0] = torch.randint(1000, 20000, changed[:, 0].shape, generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(unroll(head, ids)[2].token_states, unroll(head, changed)[2].token_states)


@pytest.mark.parametrize("readout", ["last", "first", "mean", "max"])
def test_each_readout_gives_one_memory_embedding(backbone, readout):
    out = unroll(hmt(backbone, readout=readout), segments(1))[0]
    assert out.state["cache"].shape == (2, 1, D)


def perturbed_position_changes_earlier_states(head) -> bool:
    """Change token 5 of the third segment (inside the j=8 summary tokens); do the states before it move?

    The third segment searches a cache of two: with one entry the softmax weight is 1 whatever the summary says.
    Random query weights give near-uniform retrieval; scaled up, search is as sharp as a trained model's, which
    makes any dependence on the summary visible.
    """
    head.query.weight.data.mul_(30)
    ids = segments(3)
    changed = ids.clone()
    changed[:, 2, 5] = (changed[:, 2, 5] + 7) % 20000
    before = unroll(head, ids)[2].token_states[:, :5]
    after = unroll(head, changed)[2].token_states[:, :5]
    return not torch.allclose(before, after, atol=1e-6)


def test_published_summary_leaks_later_tokens_into_earlier_predictions(backbone):
    # The paper's mode summarises segment n's own first j tokens and places the result in front of them.
    assert perturbed_position_changes_earlier_states(hmt(backbone, summary_source="current"))


def test_default_summary_is_causal(backbone):
    assert HMT.__init__.__defaults__[3] == "previous"
    assert not perturbed_position_changes_earlier_states(hmt(backbone))


@pytest.mark.parametrize("options, segment_length, message", [
    ({"summary_tokens": 17}, 16, "model.summary_tokens.*data.segment_length"),
    ({"sensory_tokens": 16}, 16, "model.sensory_tokens.*data.segment_length"),
    ({"sensory_tokens": 8}, 56, "data.segment_length.*model.sensory_tokens"),
])
def test_sizes_that_cannot_work_name_the_keys(backbone, options, segment_length, message):
    with pytest.raises(ValueError, match=message):
        hmt(backbone, **options).check_fits(segment_length)


@pytest.mark.parametrize("options, key", [
    ({"summary_source": "next"}, "model.summary_source"),
    ({"readout": "median"}, "model.readout"),
    ({"cache_size": 0}, "model.cache_size"),
])
def test_bad_options_name_the_key(backbone, options, key):
    with pytest.raises(ValueError, match=key):
        hmt(backbone, **options)
