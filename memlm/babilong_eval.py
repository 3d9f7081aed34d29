"""BABILong evaluation: accuracy by task and length under the benchmark's own protocol, for any decoder checkpoint.

Each prompt (facts, background, question) is read segment by segment into memory and the answer is generated
greedily after it (`memlm.generation`); the generated text is scored with BABILong's rule (`answer_is_correct`).
Validation during training scores teacher-forced answer tokens instead (every token and the end-of-text exact),
which is stricter and needs no generation.

Prompts are generated (bAbI-style stories at random sentence boundaries of the background's test split, so books
never seen in training) or are the published samples (`babilong.source`: "hub" or a local copy). Lengths count
the backbone's tokens: BABILong counts GPT-2's, which the default backbones use.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from memlm.data.babi import QA_TASKS, TASK_LABELS
from memlm.data.babilong import answer_is_correct, length_tokens, published_samples
from memlm.data.background import SentencePool, load_documents
from memlm.data.tasks import SampleBuilder
from memlm.generation import Sampling, generate
from memlm.memory.base import MemoryHead
from memlm.plots import plot_heatmap


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    question: str
    target: str


def babilong_tasks(cfg: DictConfig, data: DictConfig) -> list[str]:
    """The tasks to evaluate: `babilong.tasks`, or by default the checkpoint's own BABILong task if it has one."""
    tasks = cfg.babilong.tasks
    if tasks is None:
        return [data.task] if data.get("task") in QA_TASKS else []
    unknown = [task for task in tasks if task not in QA_TASKS]
    if unknown:
        raise ValueError(f"babilong.tasks={list(tasks)}: {unknown} not among {QA_TASKS}")
    return list(tasks)


class PromptSource:
    """Prompts of one task and length: generated over a background text, or the published samples."""

    def __init__(self, cfg: DictConfig, data: DictConfig, tokenizer):
        self.source = str(cfg.babilong.source)
        self.count = cfg.samples
        self.split = cfg.split
        self.seed = data.seed
        self.segment_length = data.segment_length
        self.tokenizer = tokenizer
        self.background = cfg.babilong.background or data.get("background", "embedded")
        self.pool: SentencePool | None = None

    def prompts(self, task: str, length: str) -> list[Prompt]:
        if self.source == "generated":
            return self.generated(task, length)
        records = published_samples(self.source, task, length)[: self.count]
        return [Prompt(self.encode(record["input"]) + self.encode(record["question"]), record["question"],
                       record["target"]) for record in records]

    def generated(self, task: str, length: str) -> list[Prompt]:
        if self.count is None or self.count < 1:
            raise ValueError(f"samples={self.count}: generated BABILong prompts need a positive count")
        if self.pool is None:
            documents = load_documents(self.background, self.split)
            self.pool = SentencePool(documents, lambda texts: self.tokenizer(texts, add_special_tokens=False)
                                     ["input_ids"])
        builder = SampleBuilder(task, self.pool, self.tokenizer, self.segment_length, "generate")
        prompts = []
        for index in range(self.count):
            ids, story = builder.prompt(random.Random(f"{self.seed}/babilong/{task}/{length}/{index}"),
                                        length_tokens(length))
            prompts.append(Prompt(ids, story.question, story.answer))
        return prompts

    def encode(self, text: str) -> list[int]:
        # As the sample builder encodes facts and questions: with a leading space, as inside running text.
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generated_answers(head: MemoryHead, prompts: list[Prompt], segment_length: int, batch_size: int,
                      max_new_tokens: int) -> list[str]:
    """Each prompt's greedy answer as text; prompts of equal length share a batch."""
    device = next(head.parameters()).device
    tokenizer = head.backbone.tokenizer
    answers: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt.ids), []).append(index)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            ids = torch.tensor([prompts[i].ids for i in batch], device=device)
            new = generate(head, ids, segment_length, Sampling(max_new_tokens=max_new_tokens))
            for i, tokens in zip(batch, new.tolist(), strict=True):
                answers[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    return answers


class TaskLengthReport:
    """Accuracy by task and length (`accuracy[task][length]`), written as a table, a heatmap and a printout."""

    def __init__(self, accuracy: dict[str, dict[str, float]], samples: dict[str, dict[str, int]]):
        self.accuracy = accuracy
        self.samples = samples

    def write(self, out_dir: Path, title: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        table = out_dir / "babilong_accuracy.csv"
        with table.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["task", "length", "tokens", "accuracy", "samples"])
            for task, by_length in self.accuracy.items():
                writer.writerows([task, length, length_tokens(length), f"{value:.4f}", self.samples[task][length]]
                                 for length, value in by_length.items())
        heatmap = plot_heatmap(self.accuracy, out_dir / "babilong_accuracy.png", title=title)
        lengths = list(next(iter(self.accuracy.values())))
        print(f"{'task':>6} " + " ".join(f"{length:>6}" for length in lengths))
        for task, by_length in self.accuracy.items():
            print(f"{task:>6} " + " ".join(f"{by_length[length]:>6.2f}" for length in lengths))
        print(f"written: {table}\nwritten: {heatmap}")


def evaluate_babilong(cfg: DictConfig, model, data: DictConfig, tasks: list[str]) -> TaskLengthReport:
    """Accuracy of `model` on each of `tasks` at each of `babilong.lengths`; writes the table and heatmap."""
    head = model.head
    if not head.backbone.is_decoder:
        raise ValueError("BABILong evaluation generates answers and needs a decoder checkpoint; an encoder's "
                         "classifier is scored by the length sweep (babilong.tasks=[])")
    for length in cfg.babilong.lengths:
        length_tokens(length)
    device = torch.device("cuda" if cfg.accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    head.to(device).eval()
    source = PromptSource(cfg, data, model.tokenizer)
    accuracy: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, int]] = {}
    for task in tasks:
        accuracy[task], samples[task] = {}, {}
        for length in cfg.babilong.lengths:
            prompts = source.prompts(task, length)
            answers = generated_answers(head, prompts, data.segment_length, cfg.batch_size,
                                        cfg.babilong.max_new_tokens)
            correct = [answer_is_correct(prompt.target, answer, prompt.question, TASK_LABELS[task])
                       for prompt, answer in zip(prompts, answers, strict=True)]
            accuracy[task][length] = sum(correct) / len(correct)
            samples[task][length] = len(correct)
    report = TaskLengthReport(accuracy, samples)
    report.write(Path(cfg.out_dir), title=f"BABILong accuracy ({source.source}, {cfg.split})")
    return report
