"""BABILong: qa1-qa5 stories, samples at standard lengths, published files, the official scoring rule."""

import json
import random
import re
from collections import defaultdict

import pytest
import torch

from memlm.data.babi import MOVE_VERBS, OBJECTS, read_babi
from memlm.data.babilong import answer_is_correct, length_tokens, published_samples
from memlm.data.base import IGNORE
from memlm.data.facts import SampleBuilder
from memlm.data.tasks import TASKS, babilong_tasks
from tests.conftest import QA1

QA_TASKS = babilong_tasks()

MOVE = re.compile(rf"(\w+) (?:{'|'.join(MOVE_VERBS)}) to the (\w+)\.")
GET = re.compile(r"(\w+) (?:got|grabbed|picked up|took) the (\w+) there\.")
DROP = re.compile(r"(\w+) (?:dropped|discarded|left|put down) the (\w+)\.")
GIVE = re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")


class Replay:
    """Reads a story's facts as a bAbI reader would, checking each event is possible where it happens."""

    def __init__(self, facts):
        self.place, self.holder, self.lying = {}, {}, {}
        self.trail, self.gifts = defaultdict(list), []
        for fact in facts:
            if match := MOVE.fullmatch(fact):
                actor, self.place[actor] = match.groups()
                for obj in [obj for obj, holder in self.holder.items() if holder == actor]:
                    self.visit(obj)
            elif match := GET.fullmatch(fact):
                actor, obj = match.groups()
                assert obj not in self.holder and self.lying.get(obj, self.place[actor]) == self.place[actor], fact
                self.lying.pop(obj, None)
                self.holder[obj] = actor
                self.visit(obj)
            elif match := DROP.fullmatch(fact):
                actor, obj = match.groups()
                assert self.holder.pop(obj) == actor, fact
                self.lying[obj] = self.place[actor]
            elif match := GIVE.fullmatch(fact):
                giver, obj, receiver = match.groups()
                assert self.holder[obj] == giver and self.place[receiver] == self.place[giver], fact
                self.holder[obj] = receiver
                self.gifts.append((giver, obj, receiver))
            else:
                raise AssertionError(f"not a bAbI fact: {fact!r}")

    def where(self, obj):
        return self.place[self.holder[obj]] if obj in self.holder else self.lying[obj]

    def visit(self, obj):
        if self.trail[obj][-1:] != [self.where(obj)]:
            self.trail[obj].append(self.where(obj))


def answers_by_replay(story):
    """Every answer the facts allow to the story's question."""
    world = Replay(story.facts)
    question = story.question
    if match := re.fullmatch(r"Where is (\w+)\?", question):
        return {world.place[match.group(1)]}
    if match := re.fullmatch(r"Where is the (\w+)\?", question):
        return {world.where(match.group(1))}
    if match := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        trail = world.trail[match.group(1)]
        return {trail[i - 1] for i, place in enumerate(trail) if place == match.group(2) and i > 0}
    forms = {
        r"What did (?P<g>\w+) give to (?P<r>\w+)\?": "o",
        r"Who gave the (?P<o>\w+) to (?P<r>\w+)\?": "g",
        r"Who did (?P<g>\w+) give the (?P<o>\w+) to\?": "r",
        r"Who received the (?P<o>\w+)\?": "r",
        r"Who gave the (?P<o>\w+)\?": "g",
    }
    for form, asked in forms.items():
        if match := re.fullmatch(form, question):
            known = match.groupdict()
            return {dict(zip("gor", gift, strict=True))[asked] for gift in world.gifts
                    if all(dict(zip("gor", gift, strict=True))[key] == value for key, value in known.items())}
    raise AssertionError(f"unexpected question {question!r}")


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa5"])
def test_generated_stories_are_possible_and_their_answer_is_the_only_one(task):
    stories = [TASKS[task].story(random.Random(seed)) for seed in range(300)]

    for story in stories:
        assert answers_by_replay(story) == {story.answer}, story
    assert {story.answer for story in stories} == set(TASKS[task].labels)
    assert len({story.facts for story in stories}) > 250


def test_story_generators_are_deterministic_and_sized_like_babi():
    for task in QA_TASKS:
        assert TASKS[task].story(random.Random(3)) == TASKS[task].story(random.Random(3))
    qa1_sizes = {len(TASKS["qa1"].story(random.Random(seed)).facts) for seed in range(100)}
    assert qa1_sizes == {2, 4, 6, 8, 10}
    assert all(len(TASKS["qa4"].story(random.Random(seed)).facts) == 2 for seed in range(50))
    # qa2 and qa3 need objects carried around.
    assert any(obj in fact for obj in OBJECTS for fact in TASKS["qa3"].story(random.Random(0)).facts)


def test_official_babi_stories_keep_every_fact_for_qa_tasks(tmp_path):
    path = tmp_path / "qa1_single-supporting-fact_train.txt"
    path.write_text(QA1)

    stories = TASKS["qa1"].stories_from_babi(read_babi(path))

    assert stories[1].facts == ("Mary moved to the bathroom.", "John went to the hallway.",
                                "Daniel went back to the hallway.", "Sandra moved to the garden.")
    assert stories[1].answer == "hallway"


def test_standard_lengths_in_tokens():
    assert [length_tokens(name) for name in ("0k", "1k", "8k", "128k", "1M")] == [0, 1024, 8192, 131072, 1048576]
    with pytest.raises(ValueError, match="'8K' is not a length like 0k, 1k"):
        length_tokens("8K")


@pytest.mark.parametrize(
    ("target", "output", "question", "correct"),
    [
        ("kitchen", "kitchen", "Where is Mary?", True),
        ("kitchen", " The Kitchen.", "Where is Mary?", True),
        ("kitchen", "kitchen or office", "Where is Mary?", False),  # two labels: not the only one
        ("kitchen", "office", "Where is Mary?", False),
        ("kitchen", "kitchen. Then the office.", "Where is Mary?", True),  # only the first sentence counts
        ("garden", "the garden, not the kitchen", "Where was the milk before the kitchen?", True),  # asked label
        ("kitchen", "kitchen", "Where was the milk before the kitchen?", False),
        ("Fred", "fred", "Who gave the milk to Bill?", True),
        ("milk", "", "What did Fred give to Bill?", False),
    ],
)
def test_official_scoring_rule(target, output, question, correct):
    labels = TASKS["qa5"].labels if target in TASKS["qa5"].labels else TASKS["qa1"].labels
    assert answer_is_correct(target, output, question, labels) is correct


@pytest.mark.parametrize("task", QA_TASKS)
def test_a_sample_hides_every_fact_in_order_and_ends_with_its_answer_at_a_random_point(task, pool, tokenizer):
    builder = SampleBuilder(TASKS[task], pool, tokenizer, segment_length=128, generates_answer=True)
    ends = set()
    for seed in range(20):
        sample = builder.build(random.Random(seed), num_segments=3)
        story = builder.story(random.Random(seed))
        mask = sample["attention_mask"].flatten()
        length = int(mask.sum())
        ends.add(length)
        assert torch.equal(mask, (torch.arange(3 * 128) < length).long())  # padding only after the sample
        assert length > 2 * 128  # the answer stays in the last segment
        text = tokenizer.decode(sample["input_ids"].flatten()[:length])
        assert text.endswith(f" {story.question} {story.answer}<|endoftext|>")
        start = 0
        for fact in story.facts:  # each fact after the one before it (ValueError if missing or out of order)
            start = text.index(f" {fact}", start) + len(fact)
        labels = sample["labels"].flatten()
        assert tokenizer.decode(labels[labels != IGNORE]) == f" {story.answer}<|endoftext|>"
        assert (labels[length - 1 :] == IGNORE).all()
        assert int(sample["class_label"]) == TASKS[task].labels.index(story.answer)
    assert len(ends) > 10


@pytest.mark.parametrize("task", QA_TASKS)
def test_prompts_fill_a_standard_length_but_leave_room_for_the_answer(task, pool, tokenizer):
    builder = SampleBuilder(TASKS[task], pool, tokenizer, segment_length=128, generates_answer=True)
    for seed in range(5):
        ids, story = builder.prompt(random.Random(seed), length_tokens("1k"))
        assert len(ids) == 1024 - builder.answer_room
        answer = builder.encode(story.answer) + [tokenizer.eos_token_id]
        assert len(answer) <= builder.answer_room
        bare, _ = builder.prompt(random.Random(seed), 0)
        assert tokenizer.decode(bare) == "".join(f" {text}" for text in (*story.facts, story.question))


def write_published(folder, task, length, records, as_lines=False):
    path = folder / "data" / task / f"{length}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(map(json.dumps, records)) if as_lines else json.dumps(records)
    path.write_text(text)
    return path


RECORDS = [
    {"input": "Mary moved to the bathroom. It rained all day.", "question": "Where is Mary?", "target": "bathroom"},
    {"input": "It was late. John went to the garden.", "question": "Where is John?", "target": "garden"},
]


@pytest.mark.parametrize("as_lines", [False, True])
def test_published_files_are_read_from_a_local_copy(tmp_path, as_lines):
    write_published(tmp_path, "qa1", "1k", RECORDS, as_lines)

    assert published_samples(str(tmp_path), "qa1", "1k") == RECORDS
    assert published_samples(str(tmp_path / "data"), "qa1", "1k") == RECORDS


def test_published_files_from_the_hub_use_the_length_config_and_task_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    assert published_samples("hub", "qa2", "4k") == RECORDS
    assert calls == [(("RMT-team/babilong", "4k"), {"split": "qa2"})]


def test_published_file_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no qa1/2k.json .*leave 2k out of babilong.lengths"):
        published_samples(str(tmp_path), "qa1", "2k")
    path = write_published(tmp_path, "qa1", "2k", [{"input": "x", "question": "Where is Mary?"}])
    with pytest.raises(ValueError, match=re.escape(f"{path}: records lack ['target']")):
        published_samples(str(tmp_path), "qa1", "2k")
    with pytest.raises(ValueError, match="'qa7' is not one of"):
        published_samples(str(tmp_path), "qa7", "2k")


def test_a_story_too_long_for_the_sample_is_replaced_by_one_that_fits(pool, tokenizer):
    builder = SampleBuilder(TASKS["qa3"], pool, tokenizer, segment_length=128, generates_answer=True)
    long_stories = sum(len(builder.encode(" ".join(builder.story(random.Random(seed)).facts))) > 110
                       for seed in range(100))
    assert long_stories > 10  # so one segment cannot take every story

    for seed in range(30):
        sample = builder.build(random.Random(seed), num_segments=1)
        text = tokenizer.decode(sample["input_ids"][0, : int(sample["attention_mask"].sum())])
        assert re.search(r" Where was the \w+ before the \w+\? \w+<\|endoftext\|>$", text)

    too_short = SampleBuilder(TASKS["qa3"], pool, tokenizer, segment_length=24, generates_answer=True)
    with pytest.raises(ValueError, match=r"1 segment\(s\) of data.segment_length=24 .* qa3's stories"):
        too_short.build(random.Random(0), num_segments=1)
