"""What every memlm DataModule shares, and what training and evaluation may rely on.

A batch is a dict of tensors, every one (batch, segments, segment_length) except `class_label`:
- `input_ids`, `attention_mask`: the sample cut into segments from its start; padding (mask 0) only at its end;
- `labels`: the token each position predicts, IGNORE where nothing is scored (answers, or every token of a corpus);
- `class_label` (batch,): the answer's index among the task's answers, for encoders that classify.
Which keys a batch holds is the objective's choice (`memlm.objectives`, `batch_keys`); the DataModule is built for
one objective.

The segment loop reads a batch as a `SegmentedBatch`, one segment at a time: a collated dict is a `WholeBatch`; a
`StreamedBatch` holds sample plans instead and builds a block of segments when the loop reaches it, so evaluating
100 samples of a million tokens holds 100 x one block, not 100 x a million tokens.

Training samples are an endless stream seeded by (seed, rank, epoch, segment count, worker): distinct per process
and worker, and the same again when a run resumes at an epoch boundary. Validation and evaluation sets are fixed: the
same samples every time, one set per segment count, each sample built when it is read (evaluation: streamed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from memlm import assets

IGNORE = -100
"""The label of a position that is not scored (PyTorch's cross-entropy `ignore_index`)."""


class SampleMaker(Protocol):
    def build(self, rng: random.Random, num_segments: int) -> dict[str, torch.Tensor]:
        """One sample of `num_segments` segments, drawn with `rng`."""


class SegmentedBatch(Protocol):
    """A batch as the segment loop reads it: one segment at a time, so a batch need never be held whole."""

    size: int
    """Samples in the batch."""
    num_segments: int
    num_scored: int
    """Labelled positions (labels != IGNORE) in the whole batch."""
    device: torch.device

    def segment(self, k: int) -> dict[str, torch.Tensor]:
        """Segment k's `input_ids`, `attention_mask` and `labels`, each (batch, segment_length)."""

    def is_scored(self, k: int) -> bool:
        """Whether segment k has a labelled position in any sample (valid once segment(k) has been read)."""

    def is_padded(self, k: int) -> bool:
        """Whether segment k has a padded position in any sample (valid once segment(k) has been read)."""

    def __getitem__(self, key: str) -> torch.Tensor:
        """A per-sample tensor (`class_label`)."""


def segment_flags(attention_mask, labels) -> tuple[list[int], list[bool]]:
    """Per segment of (batch, segments, length) arrays or tensors: its labelled positions, and whether it is padded.

    The segment loop asks both of every segment. Asked of a GPU tensor one segment at a time, each answer stops the
    host until the device catches up (twice per segment, measured on an H200); asked here, once per batch, or of a
    streamed block while it is still a host array, they cost one transfer or none.
    """
    mask = torch.as_tensor(attention_mask)
    padded = (mask == 0).any(-1).any(0).long()
    labelled = (torch.as_tensor(labels) != IGNORE).sum((0, 2)) if labels is not None else torch.zeros_like(padded)
    flags = torch.cat([labelled, padded]).tolist()
    return flags[: mask.shape[1]], [bool(flag) for flag in flags[mask.shape[1] :]]


class WholeBatch:
    """A collated batch of whole samples (training, validation) read as a `SegmentedBatch`."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.size, self.num_segments = tensors["input_ids"].shape[:2]
        self.device = tensors["input_ids"].device
        self.labelled, self.padded = segment_flags(tensors["attention_mask"], tensors.get("labels"))
        self.num_scored = sum(self.labelled)

    def segment(self, k: int) -> dict[str, torch.Tensor]:
        return {key: value[:, k] for key, value in self.tensors.items() if value.dim() == 3}

    def is_scored(self, k: int) -> bool:
        return self.labelled[k] > 0

    def is_padded(self, k: int) -> bool:
        return self.padded[k]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class SamplePlan(Protocol):
    """A sample that builds its segments when they are read (`memlm.data.facts.SamplePlan`)."""

    num_segments: int
    num_scored: int
    class_label: int

    def block(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Segments `first` to `first + count` of every per-segment key, each (count, segment_length)."""


class StreamedBatch:
    """Sample plans read `block_segments` segments at a time: a batch a million tokens long holds one block.

    `progress`, if given, is called as each block is read with the segments read so far and the block's tokens.
    `to(device)` is what Lightning calls to move a batch; the blocks go to that device as they are made.
    """

    def __init__(self, plans: Sequence[SamplePlan], block_segments: int = 64, progress=None, device=None):
        if len({plan.num_segments for plan in plans}) != 1:
            raise ValueError("the samples of a streamed batch must have one segment count")
        self.plans = list(plans)
        self.size, self.num_segments = len(self.plans), self.plans[0].num_segments
        self.num_scored = sum(plan.num_scored for plan in self.plans)
        self.block_segments = block_segments
        self.progress = progress
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._block: tuple[int, dict[str, torch.Tensor]] | None = None
        self._flags: tuple[list[int], list[bool]] = ([], [])

    def to(self, device) -> StreamedBatch:
        return StreamedBatch(self.plans, self.block_segments, self.progress, device)

    def segment(self, k: int) -> dict[str, torch.Tensor]:
        first = k - k % self.block_segments
        if self._block is None or self._block[0] != first:
            count = min(self.block_segments, self.num_segments - first)
            blocks = [plan.block(first, count) for plan in self.plans]
            arrays = {key: np.stack([b[key] for b in blocks]) for key in blocks[0]}
            self._flags = segment_flags(arrays["attention_mask"], arrays.get("labels"))
            block = {key: torch.from_numpy(array).to(self.device) for key, array in arrays.items()}
            self._block = (first, block)
            if self.progress is not None:
                self.progress(first + count, block["input_ids"].numel())
        return {key: value[:, k - first] for key, value in self._block[1].items()}

    def is_scored(self, k: int) -> bool:
        return self._flags[0][k - self._block[0]] > 0

    def is_padded(self, k: int) -> bool:
        return self._flags[1][k - self._block[0]]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key != "class_label":
            raise KeyError(f"{key}: a streamed batch gives per-segment tensors through segment(k)")
        return torch.tensor([plan.class_label for plan in self.plans], device=self.device)


def segmented(batch: dict[str, torch.Tensor] | SegmentedBatch) -> SegmentedBatch:
    """A collated dict of whole samples as a `SegmentedBatch`; a streamed batch as it is."""
    return WholeBatch(batch) if isinstance(batch, dict) else batch


class SampleStream(IterableDataset):
    """An endless stream of training samples from one seed (and the loader worker's id).

    Every `batch_size` consecutive samples share a segment count, drawn uniformly from `fewest_segments` to
    `num_segments` (ARMT's varied lengths; with both equal, every sample has `num_segments`). A loader batches an
    iterable dataset in runs of `batch_size` from each worker's own stream, so each batch is one draw. The counts
    come from their own generator, so a fixed count leaves the samples exactly what they are without variation.
    Its seed is `counts_seed` (default: `seed`): the training loader gives every process of a launch the same one,
    so all run the same number of segments in a step and their collectives pair up (DDP's all-reduce after each
    backward chunk, FSDP's weight gathers at each block call; with different counts they wait on each other forever).
    """

    def __init__(self, maker: SampleMaker, num_segments: int, seed: str, batch_size: int = 1,
                 fewest_segments: int | None = None, counts_seed: str | None = None):
        fewest_segments = num_segments if fewest_segments is None else fewest_segments
        if not 1 <= fewest_segments <= num_segments:
            raise ValueError(f"segment counts from {fewest_segments} to {num_segments}: need 1 <= fewest <= most")
        self.maker = maker
        self.num_segments = num_segments
        self.fewest_segments = fewest_segments
        self.batch_size = batch_size
        self.seed = seed
        self.counts_seed = seed if counts_seed is None else counts_seed

    def __iter__(self):
        worker = get_worker_info()
        worker_id = f"worker{worker.id if worker else 0}"
        rng, counts = random.Random(f"{self.seed}/{worker_id}"), random.Random(f"{self.counts_seed}/{worker_id}/counts")
        while True:
            n = counts.randint(self.fewest_segments, self.num_segments)
            for _ in range(self.batch_size):
                yield self.maker.build(rng, n)


class SeededSamples(Dataset):
    """`count` samples, sample i built on demand from its own seed: the same set every time, held nowhere.
    `streamed`: each item is the sample's plan (`maker.plan`), whose segments are built as they are read."""

    def __init__(self, maker: SampleMaker, num_segments: int, count: int, seed: str, streamed: bool = False):
        self.maker = maker
        self.num_segments = num_segments
        self.count = count
        self.seed = seed
        self.streamed = streamed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        # Any index would make a sample; refusing those past the end keeps plain iteration finite.
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        rng = random.Random(f"{self.seed}/{index}")
        return (self.maker.plan if self.streamed else self.maker.build)(rng, self.num_segments)


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

    def evaluation_loader(self, split: str, num_segments: int, count: int | None, progress=None) -> DataLoader:
        """The loader of an evaluation at `num_segments` (`samples`' set); `progress`, if the data streams its
        samples, is what `StreamedBatch` reports each block to."""
        return self.loader(self.samples(split, num_segments, count))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        stage = f"epoch{trainer.current_epoch}/{self.num_segments}seg"
        stream = SampleStream(self.training_maker(), self.num_segments, f"{self.seed}/train/rank{trainer.global_rank}/"
                              f"{stage}", self.batch_size, self.fewest_segments, f"{self.seed}/train/{stage}")
        return self.loader(stream)

    def loader(self, samples: Dataset) -> DataLoader:
        return DataLoader(samples, batch_size=self.batch_size, num_workers=self.num_workers)
