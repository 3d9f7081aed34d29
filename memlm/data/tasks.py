"""The fact tasks, one row each: everything that differs between two tasks is a field of its `Task`.

The RMT paper's tasks (Bulatov et al. 2023):
- memorize: one fact opens the sample, background text follows, the question ends it;
- detect: the fact sits at a random sentence boundary of the background;
- reasoning: two qa4-style relation facts at random boundaries, a question that needs both.
BABILong's qa1-qa5 (Kuratov et al. 2024): every fact of a bAbI story, in story order, at random sentence boundaries,
and a sample that ends at a random point of its last segment, as BABILong's samples are cut into segments from their
start. A new task is a story generator (`memlm.data.babi` holds bAbI's) and one row here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from memlm.data.babi import (
    OBJECTS,
    PLACES,
    QA5_ACTORS,
    BabiSample,
    Story,
    location_story,
    qa1_story,
    qa2_story,
    qa3_story,
    qa5_story,
    relation_story,
)

PLACEMENTS = ("opening", "boundaries")
ENDINGS = ("full", "ragged")
BABI_FACTS = ("supporting", "story")


@dataclass(frozen=True)
class Task:
    name: str
    story: Callable[[random.Random], Story]
    """Draws one story: the facts to hide, the question and its answer."""
    labels: tuple[str, ...]
    """Every answer the task can have: an encoder's classes, and the words BABILong's scoring looks for."""
    placement: str
    """"opening": the facts open the sample; "boundaries": each at a random sentence boundary, in story order."""
    ending: str
    """"full": the question and answer end the last segment; "ragged": the sample ends at a random point of its
    last segment and is padded after it."""
    babi_facts: str
    """What a question of an official bAbI file contributes: its "supporting" sentences, or its whole "story"."""
    benchmark: str
    """"rmt" or "babilong": BABILong tasks are what eval.py's BABILong protocol scores."""

    def __post_init__(self):
        for field, value, allowed in (("placement", self.placement, PLACEMENTS), ("ending", self.ending, ENDINGS),
                                      ("babi_facts", self.babi_facts, BABI_FACTS)):
            if value not in allowed:
                raise ValueError(f"task {self.name!r}: {field}={value!r} is not one of {allowed}")

    def stories_from_babi(self, samples: Iterable[BabiSample]) -> list[Story]:
        """An official bAbI file's questions as this task's stories, facts in story order."""
        return [Story(facts=self._facts(sample), question=sample.question, answer=sample.answer)
                for sample in samples]

    def _facts(self, sample: BabiSample) -> tuple[str, ...]:
        if self.babi_facts == "story":
            return sample.story
        return tuple(sample.story[index] for index in sorted(set(sample.supporting)))


TASKS: dict[str, Task] = {
    row.name: row for row in (
        Task("memorize", location_story, PLACES, "opening", "full", "supporting", "rmt"),
        Task("detect", location_story, PLACES, "boundaries", "full", "supporting", "rmt"),
        Task("reasoning", relation_story, PLACES, "boundaries", "full", "story", "rmt"),
        Task("qa1", qa1_story, PLACES, "boundaries", "ragged", "story", "babilong"),
        Task("qa2", qa2_story, PLACES, "boundaries", "ragged", "story", "babilong"),
        Task("qa3", qa3_story, PLACES, "boundaries", "ragged", "story", "babilong"),
        Task("qa4", relation_story, PLACES, "boundaries", "ragged", "story", "babilong"),
        Task("qa5", qa5_story, QA5_ACTORS + OBJECTS, "boundaries", "ragged", "story", "babilong"),
    )
}


def task(name: str) -> Task:
    """The task named `name`; the one place a task name is checked."""
    if name not in TASKS:
        raise ValueError(f"data.task={name!r} is not one of {tuple(TASKS)}")
    return TASKS[name]


def babilong_tasks() -> tuple[str, ...]:
    return tuple(name for name, row in TASKS.items() if row.benchmark == "babilong")
