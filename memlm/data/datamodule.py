"""The DataModule for the fact tasks: the RMT paper's (memorize, detect, reasoning) and BABILong's qa1-qa5.

Training samples are generated on the fly, an endless stream seeded by (seed, rank, epoch, segment count, worker):
distinct per process and worker, and the same again when a run resumes from a checkpoint at an epoch boundary.
Validation and evaluation sets are fixed: the same samples every time, one set per segment count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from memlm.data.babi import TASK_LABELS, TASKS, read_babi, stories_from_babi
from memlm.data.background import SentencePool, load_documents
from memlm.data.tasks import SampleBuilder


class SampleStream(IterableDataset):
    def __init__(self, builder: SampleBuilder, num_segments: int, seed: str):
        self.builder = builder
        self.num_segments = num_segments
        self.seed = seed

    def __iter__(self):
        worker = get_worker_info()
        rng = random.Random(f"{self.seed}/worker{worker.id if worker else 0}")
        while True:
            yield self.builder.build(rng, self.num_segments)


class SeededSamples(Dataset):
    """`count` samples, sample i built on demand from its own seed: the same set every time, held nowhere, so an
    evaluation at thousands of segments streams instead of materialising its inputs."""

    def __init__(self, builder: SampleBuilder, num_segments: int, count: int, seed: str):
        self.builder = builder
        self.num_segments = num_segments
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        # Any index would make a sample; refusing those past the end keeps plain iteration finite.
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        return self.builder.build(random.Random(f"{self.seed}/{index}"), self.num_segments)


class SegmentDataModule(L.LightningDataModule):
    """What every memlm DataModule shares: an endless training stream at the curriculum's segment count, seeded
    by (seed, rank, epoch, segment count), and loaders. Subclasses set `seed`, `num_segments`, `batch_size`,
    `num_workers` and say what builds their training samples."""

    def training_builder(self):
        """An object whose `build(rng, num_segments)` makes one training sample."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        seed = f"{self.seed}/train/rank{trainer.global_rank}/epoch{trainer.current_epoch}/{self.num_segments}seg"
        stream = SampleStream(self.training_builder(), self.num_segments, seed)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)

    def loader(self, samples: Dataset) -> DataLoader:
        return DataLoader(samples, batch_size=self.batch_size, num_workers=self.num_workers)


class FactTaskDataModule(SegmentDataModule):
    objective = "answer"

    @staticmethod
    def answer_classes(data: dict) -> tuple[str, ...]:
        """The answers the data config's task can have: an encoder's classifier has one output for each."""
        task = data.get("task", "memorize")
        if task not in TASKS:
            raise ValueError(f"data.task={task!r} is not one of {TASKS}")
        return TASK_LABELS[task]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        answer_format: str,
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
        super().__init__()
        if segment_length < 1 or batch_size < 1 or val_samples < 1:
            raise ValueError("data.segment_length, data.batch_size and data.val_samples must be positive")
        self.tokenizer = tokenizer
        self.answer_format = answer_format
        self.task = task
        self.background = background
        if babi_file is not None and not Path(babi_file).is_file():
            raise FileNotFoundError(
                f"data.babi_file={babi_file}: no such file; give an official bAbI file "
                "(tasks_1-20_v1-2/en-10k/qa1_single-supporting-fact_train.txt, say) or null for generated facts"
            )
        # Parsed here so that a malformed file fails at start, and once for all splits.
        self.stories = stories_from_babi(read_babi(babi_file), task) if babi_file is not None else None
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.val_segments = sorted(set(val_segments))
        self.val_samples = val_samples
        self.num_workers = num_workers
        self.seed = seed
        self.num_segments = self.val_segments[0]
        self.builders: dict[str, SampleBuilder] = {}

    def builder(self, split: str) -> SampleBuilder:
        """The sample builder over `split`'s background text, made once."""
        if split not in self.builders:
            documents = load_documents(self.background, split)
            pool = SentencePool(documents, lambda texts: self.tokenizer(texts, add_special_tokens=False)["input_ids"])
            self.builders[split] = SampleBuilder(
                self.task, pool, self.tokenizer, self.segment_length, self.answer_format, self.stories
            )
        return self.builders[split]

    def samples(self, split: str, num_segments: int, count: int | None) -> SeededSamples:
        """A fixed set of `count` samples of `num_segments` segments, the same for a given seed."""
        if count is None or count < 1:
            raise ValueError(f"samples={count}: fact-task samples are generated, so give how many (a positive count)")
        return SeededSamples(self.builder(split), num_segments, count, f"{self.seed}/{split}/{num_segments}seg")

    def training_builder(self) -> SampleBuilder:
        return self.builder("train")

    def val_dataloader(self) -> list[DataLoader]:
        return [self.loader(self.samples("validation", n, self.val_samples)) for n in self.val_segments]
