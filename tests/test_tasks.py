"""Synthetic fact tasks: exact lengths, facts whole at sentence boundaries, answers where the labels say; a new task
is one row of the task table."""

import random

import pytest
import torch

from memlm.checkpointing import read_checkpoint
from memlm.data.babi import PLACES, Story
from memlm.data.base import IGNORE
from memlm.data.facts import SampleBuilder
from memlm.data.tasks import TASKS, Task
from memlm.data.tasks import task as find_task
from memlm.training import train


def builder(tokenizer, pool, task="memorize", answer_format="generate", segment_length=32):
    return SampleBuilder(find_task(task), pool, tokenizer, segment_length, answer_format == "generate")


def text(tokenizer, ids) -> str:
    return tokenizer.decode(ids.flatten().tolist())


@pytest.mark.parametrize("task", ["memorize", "detect", "reasoning"])
def test_sample_fills_its_segments_and_ends_with_question_and_answer(tokenizer, pool, task):
    sample = builder(tokenizer, pool, task).build(random.Random(0), num_segments=3)
    assert sample["input_ids"].shape == sample["labels"].shape == (3, 32)
    decoded = text(tokenizer, sample["input_ids"])
    answer = PLACES[int(sample["class_label"])]
    assert decoded.endswith(f"? {answer}<|endoftext|>")
    # Labels sit one position before the token they predict, all inside the last segment.
    flat_ids, flat_labels = sample["input_ids"].flatten(), sample["labels"].flatten()
    scored = (flat_labels != IGNORE).nonzero()[:, 0]
    assert torch.equal(flat_labels[scored], flat_ids[scored + 1])
    assert text(tokenizer, flat_labels[scored]) == f" {answer}<|endoftext|>"
    assert (sample["labels"][:-1] == IGNORE).all()


def test_memorize_opens_with_the_fact(tokenizer, pool):
    decoded = text(tokenizer, builder(tokenizer, pool).build(random.Random(3), 2)["input_ids"])
    actor = decoded.split("Where is ")[1].split("?")[0]
    assert decoded.startswith(f" {actor} ")


def test_detect_hides_the_fact_between_whole_sentences(tokenizer, pool):
    starts = set()
    for seed in range(20):
        decoded = text(tokenizer, builder(tokenizer, pool, "detect").build(random.Random(seed), 4)["input_ids"])
        actor = decoded.split("Where is ")[1].split("?")[0]
        start = decoded.index(f" {actor} ")
        # The background sentences all end with "."; a fact inserted at a boundary follows one (or opens the text).
        assert start == 0 or decoded[start - 1] == "."
        starts.add(start)
    assert len(starts) > 10, "the fact should move around"


def test_reasoning_hides_two_facts_that_answer_the_question(tokenizer, pool):
    decoded = text(tokenizer, builder(tokenizer, pool, "reasoning").build(random.Random(5), 4)["input_ids"])
    assert decoded.count(" is ") >= 2 and decoded.count(" of the ") >= 2
    assert "What is" in decoded


def test_classify_format_has_no_answer_tokens(tokenizer, pool):
    sample = builder(tokenizer, pool, answer_format="classify").build(random.Random(0), 2)
    assert (sample["labels"] == IGNORE).all()
    assert text(tokenizer, sample["input_ids"]).endswith("?")
    assert 0 <= int(sample["class_label"]) < len(PLACES)


def test_samples_are_deterministic_per_seed_and_differ_across_seeds(tokenizer, pool):
    make = builder(tokenizer, pool, "detect")
    first, again = make.build(random.Random(7), 2), make.build(random.Random(7), 2)
    other = make.build(random.Random(8), 2)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert not torch.equal(first["input_ids"], other["input_ids"])


def test_too_short_segments_name_the_key(tokenizer, pool):
    with pytest.raises(ValueError, match="data.segment_length"):
        builder(tokenizer, pool, segment_length=4).build(random.Random(0), 2)
    with pytest.raises(ValueError, match="data.segment_length"):
        builder(tokenizer, pool, "reasoning", segment_length=12).build(random.Random(0), 1)


def test_unknown_task_names_the_key(tokenizer, pool):
    with pytest.raises(ValueError, match="data.task"):
        builder(tokenizer, pool, task="summarize")


COLOURS = ("red", "blue", "green")


def colour_story(rng: random.Random) -> Story:
    colour = rng.choice(COLOURS)
    return Story(facts=(f"The door is {colour}.",), question="What colour is the door?", answer=colour)


def test_a_new_task_is_a_story_generator_and_one_row(fast_cfg, tmp_path, monkeypatch, tokenizer, pool):
    colour = Task("colour", colour_story, COLOURS, "opening", "full", "supporting", "rmt", r"What colour is the \w+\?")
    monkeypatch.setitem(TASKS, "colour", colour)

    sample = SampleBuilder(find_task("colour"), pool, tokenizer, 32, generates_answer=True).build(random.Random(0), 2)
    decoded = text(tokenizer, sample["input_ids"])
    assert decoded.startswith(" The door is ") and "What colour is the door?" in decoded
    metrics = train(fast_cfg("data.task=colour"))

    assert 0.0 <= metrics["val/accuracy_2seg"] <= 1.0
    checkpoint = read_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"), "ckpt_path")
    assert checkpoint["hyper_parameters"]["data"]["task"] == "colour"
