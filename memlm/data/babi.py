"""bAbI-style stories: generated for the RMT paper's tasks, or read from the official bAbI files."""

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ACTORS = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
MOVE_VERBS = ("moved", "went", "went back", "journeyed", "travelled")
DIRECTIONS = ("north", "south", "east", "west")
TASKS = ("memorize", "detect", "reasoning")

_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
_LINE = re.compile(r"([0-9]+) +(\S.*)")

# (subject, direction, object) reads "The {subject} is {direction} of the {object}."
Relation = tuple[str, str, str]
# (asked, direction, place): asked "subject" reads "What is {direction} of the {place}?",
# asked "object" reads "What is the {place} {direction} of?"
RelationQuestion = tuple[str, str, str]


@dataclass(frozen=True)
class Story:
    """Facts to hide in background text, in story order, and the question they answer."""

    facts: tuple[str, ...]
    question: str
    answer: str


@dataclass(frozen=True)
class BabiSample:
    """One question of an official bAbI file with the sentences of its story before it."""

    story: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]


def location_story(rng: random.Random) -> Story:
    """One qa1-style fact, "{actor} {verb} to the {place}.", and the question "Where is {actor}?"."""
    actor, verb, place = rng.choice(ACTORS), rng.choice(MOVE_VERBS), rng.choice(PLACES)
    return Story(facts=(f"{actor} {verb} to the {place}.",), question=f"Where is {actor}?", answer=place)


def relation_story(rng: random.Random) -> Story:
    """Two qa4-style relations sharing one place, and a question about one of them that exactly one place answers.

    As in qa4, a question may use a fact's direction or its opposite ("What is west of the hallway?" after
    "The hallway is east of the bathroom.").
    """
    shared, first_other, second_other = rng.sample(PLACES, 3)
    facts = (_relation_around(rng, shared, first_other), _relation_around(rng, shared, second_other))
    entailed = _entailed(facts)
    unambiguous = [
        (question, answer)
        for fact in facts
        for question, answer in _questions_about(fact)
        if _answers(entailed, question) == {answer}
    ]
    question, answer = rng.choice(unambiguous)
    return Story(facts=tuple(map(_relation_text, facts)), question=_question_text(question), answer=answer)


def _relation_around(rng: random.Random, shared: str, other: str) -> Relation:
    direction = rng.choice(DIRECTIONS)
    return (shared, direction, other) if rng.random() < 0.5 else (other, direction, shared)


def _entailed(facts: Iterable[Relation]) -> set[Relation]:
    """The facts, their inverses, and chains of one direction.

    Chains count because "north of" may be read as "somewhere north of": a question that chaining makes ambiguous
    is never asked.
    """
    known = {relation for subject, direction, obj in facts
             for relation in ((subject, direction, obj), (obj, _OPPOSITE[direction], subject))}
    while True:
        chained = {(subject, direction, far) for subject, direction, middle in known
                   for start, next_direction, far in known if start == middle and next_direction == direction}
        if chained <= known:
            return known
        known |= chained


def _questions_about(fact: Relation) -> list[tuple[RelationQuestion, str]]:
    subject, direction, obj = fact
    opposite = _OPPOSITE[direction]
    return [
        (("subject", direction, obj), subject),
        (("object", direction, subject), obj),
        (("subject", opposite, subject), obj),
        (("object", opposite, obj), subject),
    ]


def _answers(entailed: set[Relation], question: RelationQuestion) -> set[str]:
    asked, direction, place = question
    if asked == "subject":
        return {subject for subject, known_direction, obj in entailed if known_direction == direction and obj == place}
    return {obj for subject, known_direction, obj in entailed if known_direction == direction and subject == place}


def _relation_text(relation: Relation) -> str:
    subject, direction, obj = relation
    return f"The {subject} is {direction} of the {obj}."


def _question_text(question: RelationQuestion) -> str:
    asked, direction, place = question
    if asked == "subject":
        return f"What is {direction} of the {place}?"
    return f"What is the {place} {direction} of?"


def read_babi(path: str | Path) -> list[BabiSample]:
    """Every question of an official bAbI file, with the sentences of its story that come before it."""
    path = Path(path)
    samples: list[BabiSample] = []
    sentences: list[str] = []
    index_of_id: dict[int, int] = {}
    previous_id = 0
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        line_id, text = _split_id(line, where)
        if line_id == 1:
            sentences, index_of_id = [], {}
        elif line_id != previous_id + 1:
            raise ValueError(f"{where}: id {line_id} follows id {previous_id}; ids must restart at 1 or go up by 1")
        previous_id = line_id
        if "\t" in text:
            samples.append(_parse_question(text, tuple(sentences), index_of_id, where))
        elif "?" in text:
            raise ValueError(f"{where}: question without a tab-separated answer; "
                             "expected '<id> <question>\\t<answer>\\t<supporting ids>'")
        else:
            index_of_id[line_id] = len(sentences)
            sentences.append(text.strip())
    if not samples:
        raise ValueError(f"{path}: no bAbI questions found (empty file?); "
                         "expected lines '<id> <sentence>' and '<id> <question>\\t<answer>\\t<supporting ids>'")
    return samples


def _split_id(line: str, where: str) -> tuple[int, str]:
    match = _LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"{where}: expected '<integer id> <text>', got {line!r}")
    return int(match.group(1)), match.group(2)


def _parse_question(text: str, story: tuple[str, ...], index_of_id: dict[int, int], where: str) -> BabiSample:
    fields = [field.strip() for field in text.split("\t")]
    if len(fields) != 3 or not all(fields):
        raise ValueError(f"{where}: expected '<question>\\t<answer>\\t<supporting ids>', got {text!r}")
    question, answer, supporting_ids = fields
    supporting = []
    for token in supporting_ids.split():
        if not token.isdecimal() or int(token) not in index_of_id:
            raise ValueError(f"{where}: supporting fact id {token!r} refers to no earlier sentence of this story")
        supporting.append(index_of_id[int(token)])
    return BabiSample(story=story, question=question, answer=answer, supporting=tuple(supporting))


def stories_from_babi(samples: Iterable[BabiSample], task: str) -> list[Story]:
    """Stories for a task: "memorize"/"detect" hide the supporting sentences only, "reasoning" the whole story."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return [Story(facts=_facts_for(sample, task), question=sample.question, answer=sample.answer)
            for sample in samples]


def _facts_for(sample: BabiSample, task: str) -> tuple[str, ...]:
    if task == "reasoning":
        return sample.story
    return tuple(sample.story[index] for index in sorted(set(sample.supporting)))
