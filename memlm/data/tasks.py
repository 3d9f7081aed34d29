"""Fact tasks: bAbI facts hidden in background text, a question at the end.

The RMT paper's tasks:
- memorize: the facts open the sample, noise follows;
- detect: each fact sits at a random sentence boundary of the noise;
- reasoning: two qa4-style relation facts at random boundaries, a question that needs them.
BABILong's qa1-qa5: every fact of a bAbI story (generated, or from an official bAbI file) at random sentence
boundaries, in story order.

An RMT-task sample is exactly `num_segments * segment_length` tokens, so the question (and, for decoders, the
answer) always ends the last segment. A BABILong sample ends at a random point of its last segment and is padded
after it, as BABILong's own samples are cut into segments from the start: the question may then fall anywhere in a
segment, which it also does at evaluation, where the prompt has a standard length (1k, 2k, ...) or is a published
sample. Facts go in whole, between whole sentences: the RMT authors cut words at token level. Decoders get the
answer tokens and an end-of-text token after the question and are scored on them; encoders get the question only
and a class label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from memlm.data.babi import QA_TASKS, STORY_GENERATORS, TASK_LABELS, TASKS, Story
from memlm.data.background import SentencePool
from memlm.objectives import IGNORE

ANSWER_FORMATS = ("generate", "classify")
# Stories drawn before a sample too short for any of them is reported.
STORY_DRAWS = 100


class SampleBuilder:
    def __init__(
        self,
        task: str,
        pool: SentencePool,
        tokenizer: PreTrainedTokenizerBase,
        segment_length: int,
        answer_format: str,
        stories: Sequence[Story] | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"data.task={task!r} is not one of {TASKS}")
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format={answer_format!r} is not one of {ANSWER_FORMATS}")
        if stories is not None and not stories:
            raise ValueError("data.babi_file gave no stories for this task")
        self.task = task
        self.pool = pool
        self.tokenizer = tokenizer
        self.segment_length = segment_length
        self.answer_format = answer_format
        self.stories = stories
        self.answer_classes = TASK_LABELS[task]
        self.ragged_end = task in QA_TASKS
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Room for the longest answer and its end-of-text: a prompt of a standard length leaves it free, so the
        # answer is generated inside the sample's last segment, where training put it.
        self.answer_room = max(len(self.encode(label)) for label in self.answer_classes) + 1

    def encode(self, text: str) -> list[int]:
        # A leading space, as the background pool uses, so facts tokenize like words inside running text.
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def story(self, rng: random.Random) -> Story:
        if self.stories is not None:
            return rng.choice(self.stories)
        return STORY_GENERATORS[self.task](rng)

    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        total = num_segments * self.segment_length
        story, facts, question, answer = self._fitting_story(rng, total)
        noise_length = total - len(question) - len(answer) - sum(map(len, facts))
        if self.ragged_end:
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
            f"hold the facts and the question of {self.task}'s stories ({needed} tokens, and {STORY_DRAWS} stories "
            "drawn): raise data.segment_length or the number of segments"
        )

    def answer_tokens(self, answer: str) -> list[int]:
        """Decoders generate the answer and an end-of-text; encoders classify and read none."""
        return self.encode(answer) + [self.tokenizer.eos_token_id] if self.answer_format == "generate" else []

    def prompt(self, rng: random.Random, length: int) -> tuple[list[int], Story]:
        """An evaluation prompt (facts, background and question) that leaves room for the answer in `length`
        tokens; `length` 0, or one too short for the story, gives the facts and the question alone."""
        story = self.story(rng)
        facts = [self.encode(fact) for fact in story.facts]
        question = self.encode(story.question)
        noise_length = max(0, length - self.answer_room - len(question) - sum(map(len, facts)))
        return self._hide(rng, facts, noise_length) + question, story

    def class_index(self, answer: str) -> int:
        if answer in self.answer_classes:
            return self.answer_classes.index(answer)
        if self.answer_format == "classify":
            raise ValueError(f"answer {answer!r} is none of the {len(self.answer_classes)} classes "
                             f"{self.answer_classes} of task {self.task}")
        return -1

    def _hide(self, rng: random.Random, facts: list[list[int]], noise_length: int) -> list[int]:
        """`noise_length` background tokens with the facts at the task's places among them."""
        noise, boundaries = self._noise(rng, noise_length)
        if self.task == "memorize":
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
