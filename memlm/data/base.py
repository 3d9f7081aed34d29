"""What every memlm DataModule shares, and what training and evaluation may rely on.

A batch is a dict of tensors, every one (batch, segments, segment_length) except `class_label`:
- `input_ids`, `attention_mask`: the sample cut into segments from its start; padding (mask 0) only at its end;
- `labels`: the token each position predicts, IGNORE where nothing is scored (answers, or every token of a corpus);
- `class_label` (batch,): the answer's index among the task's answers, for encoders that classify.
Which keys a batch holds is the objective's choice (`memlm.objectives`, `batch_keys`); the DataModule is built for
one objective.

Training samples are an endless stream seeded by (seed, rank, epoch, segment count, worker): distinct per process
and worker, and the same again when a run resumes at an epoch boundary. Validation and evaluation sets are fixed: the
same samples every time, one set per segment count, each sample built when it is read, so an evaluation at
thousands of segments never holds its inputs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from memlm import assets

IGNORE = -100
"""The label of a position that is not scored (PyTorch's cross-entropy `ignore_index`)."""


class SampleMaker(Protocol):
    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        """One sample of `num_segments` segments, drawn with `rng`."""


class SampleStream(IterableDataset):
    """An endless stream of training samples from one seed (and the loader worker's id).

    Every `batch_size` consecutive samples share a segment count, drawn uniformly from `fewest_segments` to
    `num_segments` (ARMT's varied lengths; with both equal, every sample has `num_segments`). A loader batches an
    iterable dataset in runs of `batch_size` from each worker's own stream, so each batch is one draw. The counts
    come from their own generator, so a fixed count leaves the samples exactly what they are without variation.
    """

    def __init__(self, maker: SampleMaker, num_segments: int, seed: str, batch_size: int = 1,
                 fewest_segments: int | None = None):
        fewest_segments = num_segments if fewest_segments is None else fewest_segments
        if not 1 <= fewest_segments <= num_segments:
            raise ValueError(f"segment counts from {fewest_segments} to {num_segments}: need 1 <= fewest <= most")
        self.maker = maker
        self.num_segments = num_segments
        self.fewest_segments = fewest_segments
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self):
        worker = get_worker_info()
        seed = f"{self.seed}/worker{worker.id if worker else 0}"
        rng, counts = random.Random(seed), random.Random(f"{seed}/counts")
        while True:
            n = counts.randint(self.fewest_segments, self.num_segments)
            for _ in range(self.batch_size):
                yield self.maker.build(rng, n)


class SeededSamples(Dataset):
    """`count` samples, sample i built on demand from its own seed: the same set every time, held nowhere."""

    def __init__(self, maker: SampleMaker, num_segments: int, count: int, seed: str):
        self.maker = maker
        self.num_segments = num_segments
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        # Any index would make a sample; refusing those past the end keeps plain iteration finite.
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        return self.maker.build(random.Random(f"{self.seed}/{index}"), self.num_segments)


class MemoryDataModule(L.LightningDataModule):
    """The contract between memlm's data and its training and evaluation.

    Subclasses say which data `kind` they are ("answer" or "language_model", see `memlm.objectives`), which
    objectives they serve, what makes their training samples (`training_maker`) and their fixed sets (`samples`).
    The curriculum sets `num_segments` (the stage's count) and `fewest_segments` (the shortest count a training
    batch may draw, see `SampleStream`); Lightning rebuilds the training loader every epoch, so a new stage takes
    effect at the next epoch.
    """

    kind: str
    objectives: tuple[str, ...]

    def __init__(self, tokenizer: PreTrainedTokenizerBase, objective: str, segment_length: int, batch_size: int,
                 val_segments: Sequence[int], num_workers: int, seed: int):
        super().__init__()
        if objective not in self.objectives:
            raise ValueError(f"{type(self).__name__} serves the objectives {self.objectives}, not {objective!r}")
        if segment_length < 1 or batch_size < 1:
            raise ValueError(f"data.segment_length={segment_length} and data.batch_size={batch_size} must be positive")
        if not val_segments or min(val_segments) < 1:
            raise ValueError(f"data.val_segments={list(val_segments)} must be a non-empty list of positive counts")
        self.tokenizer = tokenizer
        self.objective = objective
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.val_segments = sorted(set(val_segments))
        self.num_workers = num_workers
        self.seed = seed
        self.num_segments = self.val_segments[0]
        self.fewest_segments: int | None = None  # None: every training batch has num_segments

    @property
    def num_classes(self) -> int:
        """The answers an encoder's classifier chooses among (0 for data that has no answers)."""
        return 0

    def required_assets(self) -> list[str]:
        """Offline assets (`memlm.assets` names) this data reads; prepared once per node before any loader."""
        return []

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before any dataloader hook: the only place data may be
        # fetched or built, so that ranks never race and a loader never shells out.
        assets.prepare(self.required_assets())

    def training_maker(self) -> SampleMaker:
        raise NotImplementedError

    def samples(self, split: str, num_segments: int, count: int | None) -> Dataset:
        """A fixed set of samples of `split` at `num_segments` segments (`count` of them, where the data says so)."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        seed = f"{self.seed}/train/rank{trainer.global_rank}/epoch{trainer.current_epoch}/{self.num_segments}seg"
        stream = SampleStream(self.training_maker(), self.num_segments, seed, self.batch_size, self.fewest_segments)
        return self.loader(stream)

    def loader(self, samples: Dataset) -> DataLoader:
        return DataLoader(samples, batch_size=self.batch_size, num_workers=self.num_workers)
