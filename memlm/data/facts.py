"""The fact tasks' samples and DataModule: a task's facts hidden in background text, its question at the end.

A sample of a "full" task (`memlm.data.tasks`) is exactly `num_segments * segment_length` tokens, so the question
(and, for decoders, the answer) always ends the last segment. A "ragged" sample (BABILong's) ends at a random point
of its last segment and is padded after it: the question may then fall anywhere in a segment, which it also does at
evaluation, where a prompt has a standard length (1k, 2k, ...) or is a published sample. Facts go in whole, between
whole sentences: the RMT authors cut words at token level. Decoders get the answer tokens and an end-of-text token
after the question and are scored on them; encoders get the question only and a class label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from memlm.data import tasks
from memlm.data.babi import Story, read_babi
from memlm.data.background import SentencePool, background_assets, load_documents
from memlm.data.base import IGNORE, MemoryDataModule, SeededSamples
from memlm.data.tasks import Task

# Stories drawn before a sample too short for any of them is reported.
STORY_DRAWS = 100


def encode_in_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a fact, question or answer as it reads inside running text: with a leading space, as the
    background pool encodes its sentences, so GPT-2-style BPE tokenizes it like the words around it."""
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


class SampleBuilder:
    def __init__(
        self,
        task: Task,
        pool: SentencePool,
        tokenizer: PreTrainedTokenizerBase,
        segment_length: int,
        generates_answer: bool,
        stories: Sequence[Story] | None = None,
    ):
        """`generates_answer`: the answer tokens follow the question (decoders), else a class label (encoders).
        `stories`: stories to draw from (an official bAbI file's) instead of the task's generator."""
        if stories is not None and not stories:
            raise ValueError("data.babi_file gave no stories for this task")
        self.task = task
        self.pool = pool
        self.tokenizer = tokenizer
        self.segment_length = segment_length
        self.generates_answer = generates_answer
        self.stories = stories
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Room for the longest answer and its end-of-text: a prompt of a standard length leaves it free, so the
        # answer is generated inside the sample's last segment, where training put it.
        self.answer_room = max(len(self.encode(label)) for label in task.labels) + 1

    def encode(self, text: str) -> list[int]:
        return encode_in_text(self.tokenizer, text)

    def story(self, rng: random.Random) -> Story:
        if self.stories is not None:
            return rng.choice(self.stories)
        return self.task.story(rng)

    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        total = num_segments * self.segment_length
        story, facts, question, answer = self._fitting_story(rng, total)
        noise_length = total - len(question) - len(answer) - sum(map(len, facts))
        if self.task.ending == "ragged":
            # Keep the answer inside the last segment: cut at most what lies before it there.
            noise_length -= rng.randint(0, min(noise_length, self.segment_length - len(answer)))
        ids = self._hide(rng, facts, noise_length) + question + answer
        labels = [IGNORE] * total
        # The position before each answer token predicts it.
        labels[len(ids) - len(answer) - 1 : len(ids) - 1] = answer
        padding = total - len(ids)
        shape = (num_segments, self.segment_length)
        return {
            "input_ids": torch.tensor(ids + [self.pad_token] * padding).view(shape),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * padding).view(shape),
            "labels": torch.tensor(labels).view(shape),
            "class_label": torch.tensor(self.class_index(story.answer)),
        }

    def _fitting_story(self, rng: random.Random, total: int):
        """A story whose facts, question and answer fit `total` tokens, and those token lists.

        A story too long for the sample is replaced by another, as BABILong drops stories with more facts than its
        shorter samples hold; qa3's longest stories need two 128-token segments.
        """
        for _ in range(STORY_DRAWS):
            story = self.story(rng)
            facts = [self.encode(fact) for fact in story.facts]
            question = self.encode(story.question)
            answer = self.answer_tokens(story.answer)
            if len(question) + len(answer) > self.segment_length:
                raise ValueError(
                    f"data.segment_length={self.segment_length} cannot hold the question and answer "
                    f"({len(question) + len(answer)} tokens) in the last segment: raise data.segment_length"
                )
            needed = len(question) + len(answer) + sum(map(len, facts))
            if needed <= total:
                return story, facts, question, answer
        raise ValueError(
            f"{total // self.segment_length} segment(s) of data.segment_length={self.segment_length} tokens cannot "
            f"hold the facts and the question of {self.task.name}'s stories ({needed} tokens, and {STORY_DRAWS} "
            "stories drawn): raise data.segment_length or the number of segments"
        )

    def answer_tokens(self, answer: str) -> list[int]:
        """Decoders generate the answer and an end-of-text; encoders classify and read none."""
        return self.encode(answer) + [self.tokenizer.eos_token_id] if self.generates_answer else []

    def prompt(self, rng: random.Random, length: int) -> tuple[list[int], Story]:
        """An evaluation prompt (facts, background and question) that leaves room for the answer in `length`
        tokens; `length` 0, or one too short for the story, gives the facts and the question alone."""
        story = self.story(rng)
        facts = [self.encode(fact) for fact in story.facts]
        question = self.encode(story.question)
        noise_length = max(0, length - self.answer_room - len(question) - sum(map(len, facts)))
        return self._hide(rng, facts, noise_length) + question, story

    def class_index(self, answer: str) -> int:
        if answer in self.task.labels:
            return self.task.labels.index(answer)
        if not self.generates_answer:
            raise ValueError(f"answer {answer!r} is none of the {len(self.task.labels)} classes "
                             f"{self.task.labels} of task {self.task.name}")
        return -1

    def _hide(self, rng: random.Random, facts: list[list[int]], noise_length: int) -> list[int]:
        """`noise_length` background tokens with the facts at the task's places among them."""
        noise, boundaries = self._noise(rng, noise_length)
        if self.task.placement == "opening":
            positions = [0] * len(facts)
        else:
            positions = sorted(rng.choice(boundaries) for _ in facts)
        return self._interleave(noise, facts, positions)

    def _noise(self, rng: random.Random, length: int) -> tuple[list[int], list[int]]:
        """`length` noise tokens and the offsets between whole sentences, where a fact may go."""
        noise, boundaries = [], [0]
        for sentence in self.pool.draw(rng, length) if length else []:
            noise.extend(sentence)
            if len(noise) <= length:
                boundaries.append(len(noise))
        return noise[:length], boundaries

    @staticmethod
    def _interleave(noise: list[int], facts: list[list[int]], positions: list[int]) -> list[int]:
        ids, last = [], 0
        for fact, position in zip(facts, positions, strict=True):
            ids += noise[last:position] + fact
            last = position
        return ids + noise[last:]


class FactTaskDataModule(MemoryDataModule):
    """`data=memorize|detect|reasoning|babilong`: a fact task's samples over a background text."""

    kind = "answer"
    objectives = ("generate_answer", "classify_answer")

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        objective: str,
        task: str = "memorize",
        background: str = "embedded",
        babi_file: str | None = None,
        segment_length: int = 32,
        batch_size: int = 32,
        val_segments: Sequence[int] = (1,),
        val_samples: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(tokenizer, objective, segment_length, batch_size, val_segments, num_workers, seed)
        if val_samples < 1:
            raise ValueError(f"data.val_samples={val_samples} must be positive")
        self.task = tasks.task(task)
        self.background = background
        if babi_file is not None and not Path(babi_file).is_file():
            raise FileNotFoundError(
                f"data.babi_file={babi_file}: no such file; give an official bAbI file "
                "(tasks_1-20_v1-2/en-10k/qa1_single-supporting-fact_train.txt, say) or null for generated facts"
            )
        # Parsed here so that a malformed file fails at start, and once for all splits.
        self.stories = self.task.stories_from_babi(read_babi(babi_file)) if babi_file is not None else None
        self.val_samples = val_samples
        self.pools: dict[str, SentencePool] = {}
        self.builders: dict[tuple[str, str | None], SampleBuilder] = {}

    @property
    def num_classes(self) -> int:
        return len(self.task.labels)

    def required_assets(self) -> list[str]:
        return background_assets(self.background)

    def pool(self, split: str) -> SentencePool:
        """The background sentences of `split`, tokenized once."""
        if split not in self.pools:
            documents = load_documents(self.background, split)
            self.pools[split] = SentencePool(
                documents, lambda texts: self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return self.pools[split]

    def builder(self, split: str, other_task: str | None = None) -> SampleBuilder:
        """The sample builder over `split`'s background, made once: for the data's own task (with the official
        bAbI file's stories if one was given), or for `other_task`'s generated stories (evaluation grids)."""
        key = (split, other_task)
        if key not in self.builders:
            own = other_task is None
            self.builders[key] = SampleBuilder(
                self.task if own else tasks.task(other_task), self.pool(split), self.tokenizer, self.segment_length,
                self.objective == "generate_answer", self.stories if own else None,
            )
        return self.builders[key]

    def samples(self, split: str, num_segments: int, count: int | None) -> SeededSamples:
        """A fixed set of `count` samples of `num_segments` segments, the same for a given seed."""
        if count is None or count < 1:
            raise ValueError(f"samples={count}: fact-task samples are generated, so give how many (a positive count)")
        return SeededSamples(self.builder(split), num_segments, count, f"{self.seed}/{split}/{num_segments}seg")

    def training_maker(self) -> SampleBuilder:
        return self.builder("train")

    def val_dataloader(self):
        return [self.loader(self.samples("validation", n, self.val_samples)) for n in self.val_segments]
