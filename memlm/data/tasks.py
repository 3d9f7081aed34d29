"""The RMT paper's synthetic tasks: bAbI facts hidden in background text, a question at the end.

- memorize: the facts open the sample, noise follows;
- detect: each fact sits at a random sentence boundary of the noise;
- reasoning: two qa4-style relation facts at random boundaries, a question that needs them.

A sample is exactly `num_segments * segment_length` tokens, so the question (and, for decoders, the answer) always
ends the last segment. Facts go in whole, between whole sentences: the RMT authors cut words at token level.
Decoders get the answer tokens and an end-of-text token after the question and are scored on them; encoders get
the question only and a class label.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from memlm.data.babi import PLACES, TASKS, Story, location_story, relation_story
from memlm.data.background import SentencePool
from memlm.objectives import IGNORE

ANSWER_FORMATS = ("generate", "classify")


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

    def encode(self, text: str) -> list[int]:
        # A leading space, as the background pool uses, so facts tokenize like words inside running text.
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def story(self, rng: random.Random) -> Story:
        if self.stories is not None:
            return rng.choice(self.stories)
        return relation_story(rng) if self.task == "reasoning" else location_story(rng)

    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        story = self.story(rng)
        facts = [self.encode(fact) for fact in story.facts]
        question = self.encode(story.question)
        answer = self.encode(story.answer) + [self.tokenizer.eos_token_id] if self.answer_format == "generate" else []
        total = num_segments * self.segment_length
        if len(question) + len(answer) > self.segment_length:
            raise ValueError(
                f"data.segment_length={self.segment_length} cannot hold the question and answer "
                f"({len(question) + len(answer)} tokens) in the last segment: raise data.segment_length"
            )
        noise_length = total - len(question) - len(answer) - sum(map(len, facts))
        if noise_length < 0:
            raise ValueError(
                f"{num_segments} segment(s) of data.segment_length={self.segment_length} tokens cannot hold the "
                "facts and the question: raise data.segment_length or the number of segments"
            )
        noise, boundaries = self._noise(rng, noise_length)
        if self.task == "memorize":
            positions = [0] * len(facts)
        else:
            positions = sorted(rng.choice(boundaries) for _ in facts)
        ids = self._interleave(noise, facts, positions) + question + answer
        labels = [IGNORE] * total
        # The position before each answer token predicts it.
        labels[total - len(answer) - 1 : total - 1] = answer
        shape = (num_segments, self.segment_length)
        input_ids = torch.tensor(ids).view(shape)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.tensor(labels).view(shape),
            "class_label": torch.tensor(self.class_index(story.answer)),
        }

    def class_index(self, answer: str) -> int:
        if answer in PLACES:
            return PLACES.index(answer)
        if self.answer_format == "classify":
            raise ValueError(f"answer {answer!r} is none of the {len(PLACES)} classes {PLACES}")
        return -1

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
