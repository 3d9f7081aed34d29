"""Streamed samples: a sample plan read a block of segments at a time is the very sample built whole, and a streamed
batch holds one block however long its samples are."""

import random

import pytest
import torch
from torch.utils.data import default_collate

from memlm.data.base import StreamedBatch, WholeBatch
from memlm.data.facts import SampleBuilder
from memlm.data.tasks import task as find_task
from memlm.module import MemoryLM

CASES = [("memorize", 32, True), ("detect", 32, True), ("reasoning", 32, True), ("qa1", 64, True),
         ("memorize", 32, False)]


def make_builder(tokenizer, pool, task, segment_length, generates_answer):
    return SampleBuilder(find_task(task), pool, tokenizer, segment_length, generates_answer)


@pytest.mark.parametrize(("task", "segment_length", "generates_answer"), CASES)
@pytest.mark.parametrize("num_segments", [1, 3, 40])
def test_a_plan_read_in_blocks_is_the_sample_built_whole(tokenizer, pool, task, segment_length, generates_answer,
                                                         num_segments):
    builder = make_builder(tokenizer, pool, task, segment_length, generates_answer)
    for seed in range(5):
        whole = builder.build(random.Random(seed), num_segments)
        plan = builder.plan(random.Random(seed), num_segments)
        for block_segments in (1, 7, 64):
            blocks = [plan.block(first, min(block_segments, num_segments - first))
                      for first in range(0, num_segments, block_segments)]
            for key in ("input_ids", "attention_mask", "labels"):
                streamed = torch.cat([torch.from_numpy(block[key]) for block in blocks])
                assert torch.equal(streamed, whole[key]), (key, seed, block_segments)
        assert plan.class_label == int(whole["class_label"])
        assert plan.num_scored == int((whole["labels"] != -100).sum())


def test_a_streamed_batch_gives_the_collated_batch_segment_by_segment(tokenizer, pool):
    builder = make_builder(tokenizer, pool, "detect", 32, True)
    seeds, num_segments = range(4), 11
    whole = WholeBatch(default_collate([builder.build(random.Random(seed), num_segments) for seed in seeds]))
    read = []
    streamed = StreamedBatch([builder.plan(random.Random(seed), num_segments) for seed in seeds],
                             block_segments=3, progress=lambda segments, tokens: read.append((segments, tokens)))

    assert (streamed.size, streamed.num_segments, streamed.num_scored) == (4, 11, whole.num_scored)
    for k in range(num_segments):
        for key, value in whole.segment(k).items():
            assert torch.equal(streamed.segment(k)[key], value), (k, key)
        assert (streamed.is_scored(k), streamed.is_padded(k)) == (whole.is_scored(k), whole.is_padded(k)), k
        # One block is held at a time, whatever the length.
        assert streamed._block[1]["input_ids"].shape[1] <= 3
    assert torch.equal(streamed["class_label"], whole["class_label"])
    # Detect's answer is in the last segment: only that one is scored.
    assert [whole.is_scored(k) for k in range(num_segments)] == [False] * 10 + [True]
    assert read == [(3, 4 * 3 * 32), (6, 4 * 3 * 32), (9, 4 * 3 * 32), (11, 4 * 2 * 32)]


def test_a_model_scores_a_streamed_batch_as_the_whole_one(memorize_run, tokenizer, pool):
    model = MemoryLM.load_from_checkpoint(memorize_run[0], weights_only=True).eval()
    builder = make_builder(tokenizer, pool, "memorize", 24, True)
    samples = [builder.build(random.Random(seed), 5) for seed in range(6)]
    plans = [builder.plan(random.Random(seed), 5) for seed in range(6)]
    with torch.no_grad():
        whole_loss, whole = model.unroll(WholeBatch(default_collate(samples)))
        streamed_loss, streamed = model.unroll(StreamedBatch(plans, block_segments=2))

    assert torch.equal(streamed.errors, whole.errors)
    torch.testing.assert_close(streamed_loss, whole_loss)
    torch.testing.assert_close(streamed.nll, whole.nll)
