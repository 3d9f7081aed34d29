"""bAbI-style stories: generated for the RMT paper's tasks and for bAbI's qa1-qa5 (BABILong's tasks), or read from
the official bAbI files. Which task uses which generator is the task table's business (`memlm.data.tasks`)."""

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ACTORS = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
MOVE_VERBS = ("moved", "went", "went back", "journeyed", "travelled")
DIRECTIONS = ("north", "south", "east", "west")
OBJECTS = ("apple", "football", "milk")
GET_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "left", "put down")
GIVE_VERBS = ("gave", "handed", "passed")
# qa5 has its own cast; its answers are a person or an object.
QA5_ACTORS = ("Bill", "Fred", "Jeff", "Mary")

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
    where: str = field(default="", compare=False)
    """The file and line of the question, for errors."""


def location_story(rng: random.Random) -> Story:
    """One qa1-style fact, "{actor} {verb} to the {place}.", and the question "Where is {actor}?"."""
    actor, verb, place = rng.choice(ACTORS), rng.choice(MOVE_VERBS), rng.choice(PLACES)
    return Story(facts=(f"{actor} {verb} to the {place}.",), question=f"Where is {actor}?", answer=place)


def with_decoys(story: Story, rng: random.Random, count: int) -> Story:
    """A location story with `count` more moves, each by someone the question does not ask about, at random
    places among its facts: facts worth keeping that do not answer it."""
    asked = story.question.removeprefix("Where is ").removesuffix("?")
    others = rng.sample([actor for actor in ACTORS if actor != asked], count)
    facts = list(story.facts)
    for actor in others:
        facts.insert(rng.randint(0, len(facts)), f"{actor} {rng.choice(MOVE_VERBS)} to the {rng.choice(PLACES)}.")
    return Story(tuple(facts), story.question, story.answer)


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


class World:
    """A little world of actors, places and objects that qa1, qa2, qa3 and qa5 stories narrate, one event a fact.

    Objects are unseen until someone gets one; then they go where their holder goes, lie where they are dropped,
    and change hands when given. `trail` keeps each object's places in order, `gifts` every hand-over.
    """

    def __init__(self, rng: random.Random, actors: tuple[str, ...] = ACTORS):
        self.rng = rng
        self.actors = actors
        self.facts: list[str] = []
        self.place: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.lying: dict[str, str] = {}
        self.trail: dict[str, list[str]] = {obj: [] for obj in OBJECTS}
        self.gifts: list[tuple[str, str, str]] = []

    def where(self, obj: str) -> str | None:
        if obj in self.holder:
            return self.place.get(self.holder[obj])
        return self.lying.get(obj)

    def _arrive(self, obj: str) -> None:
        place = self.where(obj)
        if place is not None and self.trail[obj][-1:] != [place]:
            self.trail[obj].append(place)

    def move(self) -> None:
        actor = self.rng.choice(self.actors)
        place = self.rng.choice([p for p in PLACES if p != self.place.get(actor)])
        self.place[actor] = place
        self.facts.append(f"{actor} {self.rng.choice(MOVE_VERBS)} to the {place}.")
        for obj in [obj for obj, holder in self.holder.items() if holder == actor]:
            self._arrive(obj)

    def get(self) -> bool:
        """Someone somewhere picks up an object that is unseen or lies where they are; False if nobody can."""
        options = [(actor, obj) for actor, place in self.place.items() for obj in OBJECTS
                   if obj not in self.holder and self.lying.get(obj, place) == place]
        if not options:
            return False
        actor, obj = self.rng.choice(options)
        self.lying.pop(obj, None)
        self.holder[obj] = actor
        self.facts.append(f"{actor} {self.rng.choice(GET_VERBS)} the {obj} there.")
        self._arrive(obj)
        return True

    def drop(self) -> bool:
        if not self.holder:
            return False
        obj = self.rng.choice(sorted(self.holder))
        actor = self.holder.pop(obj)
        self.lying[obj] = self.place[actor]
        self.facts.append(f"{actor} {self.rng.choice(DROP_VERBS)} the {obj}.")
        return True

    def give(self) -> bool:
        """A holder hands an object to someone in the same place; False if nobody can."""
        options = [(obj, giver, receiver) for obj, giver in self.holder.items() for receiver in self.actors
                   if receiver != giver and self.place.get(receiver) == self.place[giver]]
        if not options:
            return False
        obj, giver, receiver = self.rng.choice(sorted(options))
        self.holder[obj] = receiver
        self.gifts.append((giver, obj, receiver))
        self.facts.append(f"{giver} {self.rng.choice(GIVE_VERBS)} the {obj} to {receiver}.")
        return True

    def narrate(self, events: int, weights: dict[str, float]) -> None:
        """`events` facts, each a move, get, drop or give drawn by `weights` (a move when the draw cannot happen)."""
        kinds = list(weights)
        for _ in range(events):
            kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
            if kind == "move" or not getattr(self, kind)():
                self.move()


def qa1_story(rng: random.Random) -> Story:
    """qa1, single supporting fact: 2, 4, 6, 8 or 10 moves (as bAbI's qa1 asks after every second fact), and
    "Where is {actor}?" for someone who moved: their last move answers it."""
    world = World(rng)
    world.narrate(rng.choice((2, 4, 6, 8, 10)), {"move": 1.0})
    actor = rng.choice(sorted(world.place))
    return Story(tuple(world.facts), f"Where is {actor}?", world.place[actor])


# Story lengths for qa2, qa3 and qa5, in facts: long enough to need several facts, short enough (about 300 GPT-2
# tokens at most) that a story leaves most of a 1k sample to the background, as in BABILong.
QA2_EVENTS = (4, 20)
QA3_EVENTS = (8, 32)
QA5_EVENTS = (4, 20)
_CARRYING = {"move": 0.5, "get": 0.3, "drop": 0.2}


def qa2_story(rng: random.Random) -> Story:
    """qa2, two supporting facts: "Where is the {object}?" needs who holds it and where they went (or where it
    was dropped)."""
    while True:
        world = World(rng)
        world.narrate(rng.randint(*QA2_EVENTS), _CARRYING)
        known = [obj for obj in OBJECTS if world.where(obj) is not None]
        if known:
            obj = rng.choice(known)
            return Story(tuple(world.facts), f"Where is the {obj}?", world.where(obj))


def qa3_story(rng: random.Random) -> Story:
    """qa3, three supporting facts: "Where was the {object} before the {place}?" for a place the object reached
    once, answered by the place it was in just before."""
    while True:
        world = World(rng)
        world.narrate(rng.randint(*QA3_EVENTS), _CARRYING)
        questions = [(obj, trail[i], trail[i - 1]) for obj, trail in world.trail.items()
                     for i in range(1, len(trail)) if trail.count(trail[i]) == 1]
        if questions:
            obj, place, before = rng.choice(questions)
            return Story(tuple(world.facts), f"Where was the {obj} before the {place}?", before)


def qa5_story(rng: random.Random) -> Story:
    """qa5, three-argument relations: who gave what to whom, asked in one of bAbI's five forms, always about a
    hand-over the story makes unambiguous."""
    while True:
        world = World(rng, QA5_ACTORS)
        world.narrate(rng.randint(*QA5_EVENTS), {"move": 0.4, "get": 0.3, "give": 0.3})
        questions = _gift_questions(world.gifts)
        if questions:
            question, answer = rng.choice(questions)
            return Story(tuple(world.facts), question, answer)


def _gift_questions(gifts: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Every (question, answer) about the hand-overs whose answer is the same for every hand-over it matches."""
    forms = [
        (lambda g, o, r: f"What did {g} give to {r}?", lambda g, o, r: o),
        (lambda g, o, r: f"Who gave the {o} to {r}?", lambda g, o, r: g),
        (lambda g, o, r: f"Who did {g} give the {o} to?", lambda g, o, r: r),
        (lambda g, o, r: f"Who received the {o}?", lambda g, o, r: r),
        (lambda g, o, r: f"Who gave the {o}?", lambda g, o, r: g),
    ]
    questions = []
    for ask, answer in forms:
        answers: dict[str, set[str]] = {}
        for gift in gifts:
            answers.setdefault(ask(*gift), set()).add(answer(*gift))
        questions += [(question, next(iter(found))) for question, found in answers.items() if len(found) == 1]
    return questions


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
    return BabiSample(story=story, question=question, answer=answer, supporting=tuple(supporting), where=where)
