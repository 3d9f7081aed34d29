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
import re
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
    question: str
    """A regular expression every question of the task matches, so an official bAbI file of another task is
    refused rather than trained on."""

    def __post_init__(self):
        for field, value, allowed in (("placement", self.placement, PLACEMENTS), ("ending", self.ending, ENDINGS),
                                      ("babi_facts", self.babi_facts, BABI_FACTS)):
            if value not in allowed:
                raise ValueError(f"task {self.name!r}: {field}={value!r} is not one of {allowed}")

    def stories_from_babi(self, samples: Iterable[BabiSample]) -> list[Story]:
        """An official bAbI file's questions as this task's stories, facts in story order; a question or answer
        of another task is refused with its file and line."""
        stories = []
        for sample in samples:
            if not re.fullmatch(self.question, sample.question) or sample.answer not in self.labels:
                raise ValueError(
                    f"{sample.where}: {sample.question!r} answered {sample.answer!r} is not a question of task "
                    f"{self.name!r} (questions matching {self.question!r}, answers among {self.labels}): give "
                    f"data.babi_file a bAbI file of this task ({BABI_FILES[self.name]}) or set data.task to the "
                    "file's task"
                )
            stories.append(Story(facts=self._facts(sample), question=sample.question, answer=sample.answer))
        return stories

    def _facts(self, sample: BabiSample) -> tuple[str, ...]:
        if self.babi_facts == "story":
            return sample.story
        return tuple(sample.story[index] for index in sorted(set(sample.supporting)))


WHERE_IS_PERSON = r"Where is [A-Z]\w*\?"
WHERE_IS_OBJECT = r"Where is the \w+\?"
WHERE_WAS_OBJECT = r"Where was the \w+ before the \w+\?"
WHAT_IS_RELATED = r"What is (the \w+ \w+ of|\w+ of the \w+)\?"
WHO_GAVE_WHAT = (r"(What did \w+ give to \w+|Who gave the \w+( to \w+)?|Who did \w+ give the \w+ to"
                 r"|Who received the \w+)\?")

TASKS: dict[str, Task] = {
    row.name: row for row in (
        Task("memorize", location_story, PLACES, "opening", "full", "supporting", "rmt", WHERE_IS_PERSON),
        Task("detect", location_story, PLACES, "boundaries", "full", "supporting", "rmt", WHERE_IS_PERSON),
        Task("reasoning", relation_story, PLACES, "boundaries", "full", "story", "rmt", WHAT_IS_RELATED),
        Task("qa1", qa1_story, PLACES, "boundaries", "ragged", "story", "babilong", WHERE_IS_PERSON),
        Task("qa2", qa2_story, PLACES, "boundaries", "ragged", "story", "babilong", WHERE_IS_OBJECT),
        Task("qa3", qa3_story, PLACES, "boundaries", "ragged", "story", "babilong", WHERE_WAS_OBJECT),
        Task("qa4", relation_story, PLACES, "boundaries", "ragged", "story", "babilong", WHAT_IS_RELATED),
        Task("qa5", qa5_story, QA5_ACTORS + OBJECTS, "boundaries", "ragged", "story", "babilong", WHO_GAVE_WHAT),
    )
}

BABI_FILES = {"memorize": "qa1_single-supporting-fact", "detect": "qa1_single-supporting-fact",
              "reasoning": "qa4_two-arg-relations", "qa1": "qa1_single-supporting-fact",
              "qa2": "qa2_two-supporting-facts", "qa3": "qa3_three-supporting-facts",
              "qa4": "qa4_two-arg-relations", "qa5": "qa5_three-arg-relations"}
"""The official bAbI file each task reads (`<name>_train.txt`, `<name>_test.txt`)."""


def task(name: str) -> Task:
    """The task named `name`; the one place a task name is checked."""
    if name not in TASKS:
        raise ValueError(f"data.task={name!r} is not one of {tuple(TASKS)}")
    return TASKS[name]


def babilong_tasks() -> tuple[str, ...]:
    return tuple(name for name, row in TASKS.items() if row.benchmark == "babilong")
