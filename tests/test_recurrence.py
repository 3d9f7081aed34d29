"""Truncated BPTT: where gradients stop, that chunked backward equals one plain backward, and that it keeps
training memory flat in the number of segments."""

from contextlib import contextmanager

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from memlm.backbones import Backbone
from memlm.data.base import IGNORE, WholeBatch
from memlm.memory import RMT
from memlm.objectives import GenerativeAnswer
from memlm.recurrence import Recurrence
from tests.heads import HEADS, build_head

VOCAB, SEGMENT = 50, 8


def tiny_rmt(seed: int = 0) -> RMT:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return RMT(Backbone(GPT2LMHeadModel(config), tokenizer=None, kind="causal"), num_mem_tokens=3)


def make_batch(num_segments: int, answer_segments=None, seed: int = 1) -> dict:
    """Random tokens with answer targets in the given segments (default: every segment)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, num_segments, SEGMENT), generator=generator)
    labels = torch.full_like(ids, IGNORE)
    for k in answer_segments if answer_segments is not None else range(num_segments):
        labels[:, k, -2:] = torch.randint(0, VOCAB, (2, 2), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def run(head, batch, recurrence, chunked: bool):
    objective = GenerativeAnswer()
    batch = WholeBatch(batch)
    tally = objective.start(batch)
    head.zero_grad(set_to_none=True)

    def segment_loss(k, out, segment):
        return objective.segment_loss(head.backbone, k, out, segment, batch, tally)

    backward = (lambda loss: loss.backward()) if chunked else None
    loss = recurrence.run(head, batch, segment_loss, backward)
    if not chunked:
        loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("depth", [-1, 1, 2, 3, 6])
@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_backward_gives_the_plain_gradients(depth, recompute):
    head, batch = tiny_rmt(), make_batch(6)
    plain_loss, plain = run(head, batch, Recurrence(depth), chunked=False)
    chunked_loss, chunked = run(head, batch, Recurrence(depth, recompute=recompute), chunked=True)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == chunked.keys() and "memory" in plain
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("depth, lookups", [(-1, [(2, 6, SEGMENT)]), (2, [(2, 2, SEGMENT)] + [(2, SEGMENT)] * 4)])
def test_training_embeds_the_window_in_one_lookup_and_earlier_segments_alone(depth, lookups):
    head, batch = tiny_rmt(), make_batch(6)
    shapes, embed = [], head.backbone.embed

    def counted_embed(ids):
        shapes.append(tuple(ids.shape))
        return embed(ids)

    head.backbone.embed = counted_embed
    run(head, batch, Recurrence(depth), chunked=True)
    assert sorted(shapes, key=len, reverse=True) == lookups
    shapes.clear()
    run(head, batch, Recurrence(depth), chunked=False)
    assert shapes == [(2, SEGMENT)] * 6  # evaluation and one plain backward: one lookup per segment


class StateSpy(RMT):
    """RMT that keeps the memory each segment receives, with its gradient."""

    def forward(self, input_ids, attention_mask, state, token_embeddings=None):
        if state.requires_grad:
            state.retain_grad()
        self.received.append(state)
        return super().forward(input_ids, attention_mask, state, token_embeddings)


@pytest.mark.parametrize("depth, carries_gradient", [
    (1, [True, False, False, False, False]),
    (2, [True, False, False, False, True]),
    (4, [True, False, True, True, True]),
    (-1, [True, True, True, True, True]),
])
def test_gradients_stop_exactly_at_the_cut(depth, carries_gradient):
    head = tiny_rmt()
    head.__class__ = StateSpy
    head.received = []
    batch = make_batch(5, answer_segments=[4])  # only the last segment has a loss
    run(head, batch, Recurrence(depth), chunked=True)
    # Segment 0 always reads the learned initial memory, which requires grad; every later segment inside the
    # window must receive a non-zero gradient, and none outside it may be attached to the graph at all.
    assert [state.requires_grad for state in head.received] == carries_gradient
    start = Recurrence(depth).window_start(5)
    for k in range(start + 1, 5):
        assert head.received[k].grad.abs().sum() > 0
    assert (head.memory.grad is not None) == (depth == -1 or depth >= 5)


class SavedTensorMeter:
    """Bytes of tensors saved for backward that are alive, and their peak."""

    def __init__(self):
        self.alive = self.peak = 0

    def hooks(self):
        meter = self

        class Saved:
            def __init__(self, tensor):
                self.tensor, self.nbytes = tensor, tensor.numel() * tensor.element_size()
                meter.alive += self.nbytes
                meter.peak = max(meter.peak, meter.alive)

            def __del__(self):
                meter.alive -= self.nbytes

        return torch.autograd.graph.saved_tensors_hooks(Saved, lambda saved: saved.tensor)


def peak_saved_bytes(num_segments: int, recurrence: Recurrence, chunked: bool) -> int:
    meter = SavedTensorMeter()
    with meter.hooks():
        run(tiny_rmt(), make_batch(num_segments), recurrence, chunked)
    return meter.peak


def test_chunked_training_memory_does_not_grow_with_segments():
    truncated = Recurrence(bptt_depth=2)
    assert peak_saved_bytes(16, truncated, chunked=True) == peak_saved_bytes(4, truncated, chunked=True)
    # The plain single backward holds every segment's graph: this is what the chunking saves.
    assert peak_saved_bytes(16, truncated, chunked=False) > 3 * peak_saved_bytes(4, truncated, chunked=False)


def test_recompute_holds_less_than_the_full_window():
    full = peak_saved_bytes(8, Recurrence(-1), chunked=True)
    recomputed = peak_saved_bytes(8, Recurrence(-1, recompute=True), chunked=True)
    assert recomputed < full / 4


@pytest.mark.parametrize("depth", [0, -2])
def test_impossible_bptt_depth_names_the_key(depth):
    with pytest.raises(ValueError, match="recurrence.bptt_depth"):
        Recurrence(bptt_depth=depth)


def test_window_counts_against_the_batch_segments():
    assert Recurrence(3).window_start(2) == 0
    assert Recurrence(3).window_start(7) == 4
    assert Recurrence(-1).window_start(7) == 0


@pytest.mark.parametrize("answers, depth, accumulated", [
    (range(6), 2, 3),  # four pre-window losses: three wait and accumulate, the fourth joins the window's backward
    ([0, 1], 2, 1),  # no loss in the window: the last pre-window loss's backward is the step's last
    ([5], 2, 0),  # an answer task: one backward
    (range(6), -1, 0),
])
def test_every_backward_but_the_steps_last_runs_inside_accumulate(answers, depth, accumulated):
    # Under DDP, accumulate is the no-sync context: gradients are all-reduced once per step, by the last backward.
    head, batch = tiny_rmt(), WholeBatch(make_batch(6, answers))
    objective = GenerativeAnswer()
    tally = objective.start(batch)
    inside, calls = [False], []

    @contextmanager
    def accumulate():
        inside[0] = True
        yield
        inside[0] = False

    def backward(loss):
        calls.append(inside[0])
        loss.backward()

    Recurrence(depth).run(head, batch, lambda k, out, segment: objective.segment_loss(
        head.backbone, k, out, segment, batch, tally), backward, accumulate)
    assert calls == [True] * accumulated + [False]


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_gets_the_plain_gradients_from_a_chunked_backward(name):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    head = build_head(name, Backbone(GPT2LMHeadModel(config), tokenizer=None, kind="causal"))
    batch = make_batch(4)
    plain_loss, plain = run(head, batch, Recurrence(2), chunked=False)
    chunked_loss, chunked = run(head, batch, Recurrence(2), chunked=True)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == chunked.keys() and plain
    for parameter in plain:
        torch.testing.assert_close(chunked[parameter], plain[parameter], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("recompute", [False, True])
def test_the_model_gets_an_attention_mask_only_for_padded_segments_and_the_same_gradients(recompute):
    head, batch = tiny_rmt(), make_batch(4, answer_segments=[2])
    masks = []
    hook = head.backbone.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True)
    try:
        _, unpadded = run(head, batch, Recurrence(-1, recompute=recompute), chunked=True)
        assert masks and all(mask is None for mask in masks)
        masks.clear()
        padded = dict(batch, attention_mask=batch["attention_mask"].clone())
        padded["attention_mask"][0, 3, -3:] = 0  # only the last segment of one sample is padded
        run(head, padded, Recurrence(-1, recompute=recompute), chunked=True)
    finally:
        hook.remove()
    # Segments 0-2 read without a mask (with recompute, again in backward, under the same setting); segment 3, after
    # the answer and so never recomputed, with its padded one.
    with_mask = [mask for mask in masks if mask is not None]
    assert len(with_mask) == 1 and with_mask[0].shape == (2, SEGMENT + 6) and (with_mask[0] == 0).sum() == 3
    assert len(masks) == 1 + (6 if recompute else 3)
    # No mask and a mask of ones are the same attention: the gradients match a run that passes the ones.
    with_ones = WholeBatch(batch)
    with_ones.padded = [True] * 4
    objective, plain = GenerativeAnswer(), Recurrence(-1)
    tally = objective.start(with_ones)
    head.zero_grad(set_to_none=True)
    plain.run(head, with_ones, lambda k, out, segment: objective.segment_loss(head.backbone, k, out, segment,
                                                                              with_ones, tally),
              lambda loss: loss.backward())
    for name, parameter in head.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, unpadded[name], rtol=1e-5, atol=1e-7)


def test_a_batch_knows_on_the_host_which_segments_are_scored_and_padded():
    batch = make_batch(4, answer_segments=[1, 3])
    batch["attention_mask"][1, 3, -2:] = 0
    whole = WholeBatch(batch)
    assert [whole.is_scored(k) for k in range(4)] == [False, True, False, True]
    assert [whole.is_padded(k) for k in range(4)] == [False, False, False, True]
    assert whole.num_scored == 2 * 2 * 2
