"""The fact-task DataModule: streams are reproducible, distinct per worker, rank and epoch; official bAbI files
supply the facts; validation sets are fixed."""

import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from memlm.data.babi import read_babi
from memlm.data.base import SampleStream
from memlm.data.facts import FactTaskDataModule
from memlm.data.tasks import task
from tests.conftest import QA1


def datamodule(tokenizer, background, **kwargs) -> FactTaskDataModule:
    module = FactTaskDataModule(tokenizer, "generate_answer", background=str(background), segment_length=24,
                                batch_size=2, val_segments=[1, 2], val_samples=4, **kwargs)
    module.trainer = SimpleNamespace(global_rank=0, current_epoch=0)
    return module


def first_batch(loader: DataLoader) -> torch.Tensor:
    return next(iter(loader))["input_ids"]


def test_training_stream_repeats_for_a_seed_and_changes_with_epoch_and_rank(tokenizer, background):
    module = datamodule(tokenizer, background)
    module.num_segments = 2
    first = first_batch(module.train_dataloader())
    assert first.shape == (2, 2, 24)
    assert torch.equal(first, first_batch(module.train_dataloader()))
    module.trainer.current_epoch = 1
    next_epoch = first_batch(module.train_dataloader())
    module.trainer.current_epoch, module.trainer.global_rank = 0, 1
    other_rank = first_batch(module.train_dataloader())
    assert not torch.equal(first, next_epoch)
    assert not torch.equal(first, other_rank)


def test_each_worker_draws_its_own_samples(tokenizer, background):
    stream = SampleStream(datamodule(tokenizer, background).builder("train"), num_segments=1, seed="s")
    batches = iter(DataLoader(stream, batch_size=1, num_workers=2))
    # DataLoader takes batches from its workers in turn: the first two come from workers 0 and 1.
    assert not torch.equal(next(batches)["input_ids"], next(batches)["input_ids"])


def test_validation_sets_are_fixed_per_segment_count(tokenizer, background):
    module = datamodule(tokenizer, background)
    loaders = module.val_dataloader()
    assert [first_batch(loader).shape[1] for loader in loaders] == [1, 2]
    assert torch.equal(first_batch(loaders[1]), first_batch(module.val_dataloader()[1]))


def test_official_babi_file_supplies_the_facts(tokenizer, background, tmp_path):
    babi = tmp_path / "qa1_single-supporting-fact_train.txt"
    babi.write_text(QA1)
    module = datamodule(tokenizer, background, babi_file=str(babi))
    stories = task("memorize").stories_from_babi(read_babi(babi))
    expected = {(f" {story.facts[0]}", f" {story.question} {story.answer}<|endoftext|>") for story in stories}
    seen = set()
    for sample in module.samples("train", 1, 16):
        text = tokenizer.decode(sample["input_ids"].flatten())
        seen |= {(fact, end) for fact, end in expected if text.startswith(fact) and text.endswith(end)}
    assert seen == expected


def test_a_fixed_set_iterates_to_its_length(tokenizer, background):
    assert len(list(datamodule(tokenizer, background).samples("validation", 1, 5))) == 5


def test_varied_lengths_draw_one_count_per_batch_within_the_range(tokenizer, background):
    module = datamodule(tokenizer, background)
    module.num_segments, module.fewest_segments = 4, 2
    loader = module.train_dataloader()
    counts = [batch["input_ids"].shape[1] for batch, _ in zip(loader, range(24), strict=False)]
    assert set(counts) == {2, 3, 4}
    again = [batch["input_ids"].shape[1] for batch, _ in zip(module.train_dataloader(), range(24), strict=False)]
    assert again == counts


def test_a_fixed_count_streams_the_samples_it_streamed_before_ranges_existed(tokenizer, background):
    builder = datamodule(tokenizer, background).builder("train")
    stream = iter(SampleStream(builder, num_segments=2, seed="s", batch_size=3))
    rng = random.Random("s/worker0")
    for _ in range(6):
        assert torch.equal(next(stream)["input_ids"], builder.build(rng, 2)["input_ids"])


def test_every_rank_draws_the_same_segment_counts_from_its_own_samples(tokenizer, background):
    # Ranks running different counts in a step would wait on each other's collectives for ever (DDP, FSDP).
    batches = {}
    for rank in (0, 1):
        module = datamodule(tokenizer, background)
        module.num_segments, module.fewest_segments = 4, 1
        module.trainer = SimpleNamespace(global_rank=rank, current_epoch=0)
        batches[rank] = [batch["input_ids"] for batch, _ in zip(module.train_dataloader(), range(16), strict=False)]
    assert [ids.shape[1] for ids in batches[0]] == [ids.shape[1] for ids in batches[1]]
    assert len({ids.shape[1] for ids in batches[0]}) > 1
    assert not torch.equal(batches[0][0], batches[1][0])


MOVE = re.compile(r"(\w+) (?:moved|went|went back|journeyed|travelled) to the \w+\.")


def test_decoys_move_other_people_in_training_samples_only(tokenizer, background):
    module = datamodule(tokenizer, background, task="memorize", decoys=2)
    training, validation = module.training_maker().build(random.Random(0), 3), module.samples("validation", 3, 1)[0]
    for sample, movers in (training, 3), (validation, 1):
        text = tokenizer.decode(sample["input_ids"].flatten())
        asked = re.search(r"Where is (\w+)\?", text).group(1)
        people = MOVE.findall(text)
        assert len(people) == movers and people.count(asked) == 1


@pytest.mark.parametrize("name, decoys", [("reasoning", 1), ("qa1", 1), ("detect", 4)])
def test_impossible_decoys_name_the_key(tokenizer, background, name, decoys):
    with pytest.raises(ValueError, match="data.decoys"):
        datamodule(tokenizer, background, task=name, decoys=decoys)


MENTION = "Mary sat in the old garden with the baker and the children who waited by the river until the clouds came."


def test_distractors_are_background_sentences_that_name_an_answer_in_training_samples_only(tokenizer, tmp_path):
    plain = " ".join(f"The baker walked down the lane {n} times." for n in range(200))
    for split in ("train", "validation", "test"):
        (tmp_path / split).mkdir()
        # A person without a place is no distractor: only an answer's word makes one.
        (tmp_path / split / "book.txt").write_text(f"{plain} {MENTION} Mary smiled at the baker. {plain}")
    module = datamodule(tokenizer, tmp_path, task="detect", distractors=2)
    training = module.training_maker().plan(random.Random(0), 6)
    validation = module.builder("validation").plan(random.Random(0), 6)
    for plan, distractors in (training, 2), (validation, 0):
        pieces = [tokenizer.decode(piece.read()) for piece in plan.pieces]
        assert pieces.count(f" {MENTION}") == distractors
        assert len(MOVE.findall("".join(pieces))) == 1 and plan.length == 6 * 24
    # Only as many as fit: a one-segment sample has no room for one (22 tokens).
    short = module.training_maker().plan(random.Random(0), 1)
    assert "Mary sat" not in tokenizer.decode(np.concatenate([piece.read() for piece in short.pieces]))


def test_distractors_need_a_background_that_names_an_answer(tokenizer, background):
    with pytest.raises(ValueError, match="data.distractors=1: the background has no sentence"):
        datamodule(tokenizer, background, task="detect", distractors=1).training_maker()
    with pytest.raises(ValueError, match="data.distractors=-1"):
        datamodule(tokenizer, background, distractors=-1)
