"""The fact tasks' samples and DataModule: a task's facts hidden in background text, its question at the end.

A sample of a "full" task (`memlm.data.tasks`) is exactly `num_segments * segment_length` tokens, so the question
(and, for decoders, the answer) always ends the last segment. A "ragged" sample (BABILong's) ends at a random point
of its last segment and is padded after it: the question may then fall anywhere in a segment, which it also does at
evaluation, where a prompt has a standard length (1k, 2k, ...) or is a published sample. Facts go in whole, between
whole sentences: the RMT authors cut words at token level. Decoders get the answer tokens and an end-of-text token
after the question and are scored on them; encoders get the question only and a class label.

A sample is planned before it is built (`SampleBuilder.plan`): its pieces (facts, stretches of background, question
and answer) and where they go. Training builds the plan whole; a streamed evaluation reads it a block of segments
at a time, the same tokens either way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from memlm.data import tasks
from memlm.data.babi import ACTORS, Story, read_babi, with_decoys
from memlm.data.background import SentencePool, TokenRun, background_assets, load_documents
from memlm.data.base import IGNORE, MemoryDataModule, SeededSamples, StreamedBatch
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
        decoys: int = 0,
        distractors: int = 0,
    ):
        """`generates_answer`: the answer tokens follow the question (decoders), else a class label (encoders).
        `stories`: stories to draw from (an official bAbI file's) instead of the task's generator. `decoys`: moves
        of people not asked about added to each story (`with_decoys`). `distractors`: background sentences that
        name one of the task's answers (a place, for memorize and detect), put in each sample at random sentence
        boundaries (as many as fit), so that an answer's word alone is no sign of a fact."""
        if stories is not None and not stories:
            raise ValueError("data.babi_file gave no stories for this task")
        self.task = task
        self.pool = pool
        self.tokenizer = tokenizer
        self.segment_length = segment_length
        self.generates_answer = generates_answer
        self.stories = stories
        self.decoys = decoys
        self.distractors = distractors
        if distractors:
            words = sorted(task.labels)
            self.mentions = pool.mentioning([self.encode(word) for word in words])
            if not self.mentions.size:
                raise ValueError(f"data.distractors={distractors}: the background has no sentence that names "
                                 f"any of {words}; give data.distractors=0 or a background that does")
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Room for the longest answer and its end-of-text: a prompt of a standard length leaves it free, so the
        # answer is generated inside the sample's last segment, where training put it.
        self.answer_room = max(len(self.encode(label)) for label in task.labels) + 1

    def encode(self, text: str) -> list[int]:
        return encode_in_text(self.tokenizer, text)

    def story(self, rng: random.Random) -> Story:
        story = rng.choice(self.stories) if self.stories is not None else self.task.story(rng)
        return with_decoys(story, rng, self.decoys) if self.decoys else story

    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        return self.plan(rng, num_segments).whole()

    def plan(self, rng: random.Random, num_segments: int) -> SamplePlan:
        """The sample `build` would give for this `rng`, as the pieces it is made of: its segments are read when
        they are needed, so a sample of a million tokens costs nothing until it is read."""
        total = num_segments * self.segment_length
        story, facts, question, answer = self._fitting_story(rng, total)
        noise_length = total - len(question) - len(answer) - sum(map(len, facts))
        if self.task.ending == "ragged":
            # Keep the answer inside the last segment: cut at most what lies before it there.
            noise_length -= rng.randint(0, min(noise_length, self.segment_length - len(answer)))
        distractors = self._distractors(rng, noise_length)
        noise_length -= sum(map(len, distractors))
        pieces = [*self._hide(rng, facts, noise_length, distractors), literal(question + answer)]
        return SamplePlan(pieces, len(answer), num_segments, self.segment_length, self.pad_token,
                          self.class_index(story.answer))

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
        hidden = self._hide(rng, facts, noise_length)
        return np.concatenate([piece.read() for piece in hidden if len(piece)]).tolist() + question, story

    def class_index(self, answer: str) -> int:
        if answer in self.task.labels:
            return self.task.labels.index(answer)
        if not self.generates_answer:
            raise ValueError(f"answer {answer!r} is none of the {len(self.task.labels)} classes "
                             f"{self.task.labels} of task {self.task.name}")
        return -1

    def _distractors(self, rng: random.Random, room: int) -> list[Piece]:
        """Up to `self.distractors` sentences that name an answer, as many as fit in `room` tokens."""
        chosen = []
        for _ in range(self.distractors):
            sentence = self.pool.sentence(int(rng.choice(self.mentions)))
            if sentence.length <= room:
                chosen.append(Piece(sentence, 0, sentence.length))
                room -= sentence.length
        return chosen

    def _hide(self, rng: random.Random, facts: list[list[int]], noise_length: int,
              distractors: Sequence[Piece] = ()) -> list[Piece]:
        """`noise_length` background tokens with the facts at the task's places among them, and the distractor
        sentences at random sentence boundaries, as pieces."""
        noise = self.pool.run(rng, noise_length) if noise_length else None
        boundaries = [0]
        if noise is not None and (self.task.placement == "boundaries" or distractors):
            # Between whole sentences: where the run starts, or where one of its sentences ends.
            boundaries = np.concatenate([[0], noise.sentence_ends()])
        if self.task.placement == "opening":
            positions = [0] * len(facts)
        else:
            positions = sorted(int(rng.choice(boundaries)) for _ in facts)
        inserted = [(position, literal(fact)) for fact, position in zip(facts, positions, strict=True)]
        # A stable sort: a fact that opens the sample stays before a distractor at the same boundary.
        inserted += [(int(rng.choice(boundaries)), sentence) for sentence in distractors]
        pieces, last = [], 0
        for position, piece in sorted(inserted, key=lambda pair: pair[0]):
            pieces += [Piece(noise, last, position), piece]
            last = position
        return [*pieces, Piece(noise, last, noise_length)]


class Tokens:
    """Literal tokens (a fact; the question and answer) as a piece's source."""

    def __init__(self, ids: list[int]):
        self.ids = np.asarray(ids, dtype=np.int64)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.ids[start:stop]


class Piece(NamedTuple):
    """Tokens `start` to `stop` of a source (`Tokens`, or a background `TokenRun`): one part of a sample."""

    source: Tokens | TokenRun
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The piece's tokens `start` to `stop` (all of it by default)."""
        stop = len(self) if stop is None else stop
        return self.source.read(self.start + start, self.start + stop)


def literal(ids: list[int]) -> Piece:
    return Piece(Tokens(ids), 0, len(ids))


class SamplePlan:
    """One sample as the pieces it is made of, read a block of segments at a time.

    The tokens are the pieces in order (facts, background, question and answer), padded to whole segments; the
    position before each answer token is labelled with it. `block(first, count)` gives segments `first` to
    `first + count` exactly as `whole()` holds them, so a streamed evaluation reads the very sample training and
    validation would build.
    """

    def __init__(self, pieces: list, answer_length: int, num_segments: int, segment_length: int, pad_token: int,
                 class_label: int):
        self.pieces = [piece for piece in pieces if len(piece)]
        self.piece_starts = np.cumsum([0] + [len(piece) for piece in self.pieces])
        self.length = int(self.piece_starts[-1])
        self.num_scored = answer_length
        """Labelled positions: one per answer token."""
        self.num_segments = num_segments
        self.segment_length = segment_length
        self.pad_token = pad_token
        self.class_label = class_label

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """The sample's tokens `start` to `stop` (before padding)."""
        stop = min(stop, self.length)
        parts = []
        index = int(np.searchsorted(self.piece_starts, start, side="right")) - 1
        while start < stop:
            piece_start, piece_stop = self.piece_starts[index], self.piece_starts[index + 1]
            parts.append(self.pieces[index].read(start - piece_start, min(stop, piece_stop) - piece_start))
            start = int(min(stop, piece_stop))
            index += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def block(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Segments `first` to `first + count`: input ids, attention mask and labels, each (count, segment_length)."""
        start, stop = first * self.segment_length, (first + count) * self.segment_length
        ids = np.full(stop - start, self.pad_token, dtype=np.int64)
        real = self.tokens(start, stop)
        ids[: real.size] = real
        mask = np.zeros(stop - start, dtype=np.int64)
        mask[: real.size] = 1
        labels = np.full(stop - start, IGNORE, dtype=np.int64)
        # The position before each answer token predicts it.
        lo, hi = max(start, self.length - self.num_scored - 1), min(stop, self.length - 1)
        if lo < hi:
            labels[lo - start : hi - start] = self.tokens(lo + 1, hi + 1)
        shape = (count, self.segment_length)
        return {"input_ids": ids.reshape(shape), "attention_mask": mask.reshape(shape), "labels": labels.reshape(shape)}

    def whole(self) -> dict[str, torch.Tensor]:
        sample = {key: torch.from_numpy(value) for key, value in self.block(0, self.num_segments).items()}
        return {**sample, "class_label": torch.tensor(self.class_label)}


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
        decoys: int = 0,
        distractors: int = 0,
    ):
        """`decoys`: training stories (memorize, detect) also move this many people the question does not ask
        about. `distractors`: training samples also hold this many background sentences that name one of the
        task's answers. Validation and evaluation samples have neither."""
        super().__init__(tokenizer, objective, segment_length, batch_size, val_segments, num_workers, seed)
        if val_samples < 1:
            raise ValueError(f"data.val_samples={val_samples} must be positive")
        self.task = tasks.task(task)
        if decoys and (self.task.story is not tasks.location_story or not 0 < decoys < len(ACTORS)):
            raise ValueError(f"data.decoys={decoys}: decoys are moves of the {len(ACTORS) - 1} people memorize and "
                             f"detect do not ask about; give 0 to {len(ACTORS) - 1} with data.task=memorize or "
                             f"detect, or 0 (data.task={task})")
        self.decoys = decoys
        if distractors < 0:
            raise ValueError(f"data.distractors={distractors} must be 0 or more")
        self.distractors = distractors
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
        self.builders: dict[tuple[str, str | None, int], SampleBuilder] = {}

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

    def builder(self, split: str, other_task: str | None = None, decoys: int = 0,
                distractors: int = 0) -> SampleBuilder:
        """The sample builder over `split`'s background, made once: for the data's own task (with the official
        bAbI file's stories if one was given, `decoys` added to each story and `distractors` to each sample), or
        for `other_task`'s generated stories (evaluation grids)."""
        key = (split, other_task, decoys, distractors)
        if key not in self.builders:
            own = other_task is None
            self.builders[key] = SampleBuilder(
                self.task if own else tasks.task(other_task), self.pool(split), self.tokenizer, self.segment_length,
                self.objective == "generate_answer", self.stories if own else None, decoys, distractors,
            )
        return self.builders[key]

    def samples(self, split: str, num_segments: int, count: int | None, streamed: bool = False) -> SeededSamples:
        """A fixed set of `count` samples of `num_segments` segments, the same for a given seed; `streamed`: as
        sample plans, built segment by segment as they are read."""
        if count is None or count < 1:
            raise ValueError(f"samples={count}: fact-task samples are generated, so give how many (a positive count)")
        return SeededSamples(self.builder(split), num_segments, count, f"{self.seed}/{split}/{num_segments}seg",
                             streamed)

    def evaluation_loader(self, split: str, num_segments: int, count: int | None, progress=None) -> DataLoader:
        """Streamed: a batch is its samples' plans, and the segment loop reads them a block at a time, so memory
        stays flat however long the samples are."""
        samples = self.samples(split, num_segments, count, streamed=True)
        return DataLoader(samples, batch_size=self.batch_size, collate_fn=partial(StreamedBatch, progress=progress))

    def training_maker(self) -> SampleBuilder:
        return self.builder("train", decoys=self.decoys, distractors=self.distractors)

    def val_dataloader(self):
        return [self.loader(self.samples("validation", n, self.val_samples)) for n in self.val_segments]
