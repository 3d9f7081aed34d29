import random
import re

import pytest

from memlm.data.babi import (
    ACTORS,
    MOVE_VERBS,
    PLACES,
    BabiSample,
    Story,
    location_story,
    read_babi,
    relation_story,
    with_decoys,
)
from memlm.data.tasks import TASKS, task
from tests.conftest import QA1, QA4

DIRECTION_STEP = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_babi_qa1_maps_supporting_ids_past_question_lines(tmp_path):
    samples = read_babi(write(tmp_path, "qa1_single-supporting-fact_train.txt", QA1))

    assert [sample.question for sample in samples] == ["Where is Mary?", "Where is Daniel?", "Where is Sandra?",
                                                       "Where is Sandra?"]
    assert samples[0] == BabiSample(story=("Mary moved to the bathroom.", "John went to the hallway."),
                                    question="Where is Mary?", answer="bathroom", supporting=(0,))
    # id 4 is the third sentence: question line 3 is not part of the story
    assert samples[1].story[2] == "Daniel went back to the hallway."
    assert samples[1].supporting == (2,)
    assert len(samples[2].story) == 6
    assert samples[2].story[samples[2].supporting[0]] == "Sandra journeyed to the bathroom."


def test_read_babi_starts_a_new_story_when_ids_restart(tmp_path):
    samples = read_babi(write(tmp_path, "qa1_single-supporting-fact_test.txt", QA1))

    assert samples[3].story == ("Sandra travelled to the office.", "Sandra went to the bathroom.")
    assert samples[3].supporting == (1,)


def test_read_babi_qa4_and_reasoning_stories_keep_both_sentences(tmp_path):
    samples = read_babi(write(tmp_path, "qa4_two-arg-relations_train.txt", QA4))
    stories = task("reasoning").stories_from_babi(samples)

    assert stories == [
        Story(facts=("The office is north of the kitchen.", "The garden is south of the kitchen."),
              question="What is north of the kitchen?", answer="office"),
        Story(facts=("The kitchen is west of the garden.", "The hallway is west of the kitchen."),
              question="What is the garden east of?", answer="kitchen"),
    ]


@pytest.mark.parametrize("name", ["memorize", "detect"])
def test_stories_from_babi_keeps_only_supporting_facts_for_memory_tasks(tmp_path, name):
    samples = read_babi(write(tmp_path, "qa1.txt", QA1))

    stories = task(name).stories_from_babi(samples)

    assert [story.facts for story in stories] == [("Mary moved to the bathroom.",),
                                                  ("Daniel went back to the hallway.",),
                                                  ("Sandra journeyed to the bathroom.",),
                                                  ("Sandra went to the bathroom.",)]


def test_stories_from_babi_orders_facts_as_in_the_story():
    sample = BabiSample(story=("a.", "b.", "c."), question="Where is Mary?", answer="office", supporting=(2, 0))

    assert task("memorize").stories_from_babi([sample])[0].facts == ("a.", "c.")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_s_own_stories_pass_its_question_and_answer_check(name):
    rng = random.Random(0)
    stories = [task(name).story(rng) for _ in range(300)]
    samples = [BabiSample(story=story.facts, question=story.question, answer=story.answer,
                          supporting=tuple(range(len(story.facts)))) for story in stories]

    assert task(name).stories_from_babi(samples) == [Story(s.facts, s.question, s.answer) for s in stories]


@pytest.mark.parametrize("name, text, line", [
    ("memorize", QA4, 3),  # a qa4 file: its questions are not "Where is <person>?"
    ("qa1", "1 Mary gave the milk to John.\n2 Who received the milk?\tJohn\t1\n", 2),  # answered by a name
])
def test_a_babi_file_of_another_task_is_refused_naming_file_line_and_task(tmp_path, name, text, line):
    path = write(tmp_path, "other.txt", text)

    with pytest.raises(ValueError, match=rf"other.txt:{line}: .* is not a question of task '{name}'"):
        task(name).stories_from_babi(read_babi(path))


def test_an_unknown_task_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="data.task='recall' is not one of"):
        task("recall")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1 Mary moved to the bathroom.\n2 Where is Mary? bathroom 1\n", 2, "tab-separated answer"),
        ("1 Mary moved to the bathroom.\nx Where is Mary?\tbathroom\t1\n", 2, "integer id"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\t3\n", 2, "supporting fact id '3'"),
        ("1 Mary went to the office.\n2 Where is Mary?\toffice\t1\n3 Where is Mary?\toffice\t2\n", 3,
         "supporting fact id '2'"),
        ("1 Mary moved to the bathroom.\n2 Where is Mary?\tbathroom\n", 2, "supporting ids"),
        ("1 Mary moved to the bathroom.\n3 Where is Mary?\tbathroom\t1\n", 2, "id 3 follows id 1"),
    ],
)
def test_read_babi_names_file_and_line_of_malformed_input(tmp_path, text, line, message):
    path = write(tmp_path, "qa1_broken.txt", text)

    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(message)):
        read_babi(path)


def test_read_babi_rejects_an_empty_file(tmp_path):
    path = write(tmp_path, "qa1_empty.txt", "")

    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*no bAbI questions"):
        read_babi(path)


def test_location_story_states_one_move_and_asks_about_its_actor():
    for seed in range(50):
        story = location_story(random.Random(seed))
        actor, verb, place = re.fullmatch(r"(\w+) (.+) to the (\w+)\.", story.facts[0]).groups()

        assert len(story.facts) == 1
        assert (actor in ACTORS, verb in MOVE_VERBS, place in PLACES) == (True, True, True)
        assert story.question == f"Where is {actor}?"
        assert story.answer == place


@pytest.mark.parametrize("generate", [location_story, relation_story])
def test_generators_are_deterministic_per_seed_and_vary_across_seeds(generate):
    first = [generate(random.Random(seed)) for seed in range(200)]
    second = [generate(random.Random(seed)) for seed in range(200)]

    assert first == second
    assert len(set(first)) > 50
    assert {story.answer for story in first} == set(PLACES)


def test_relation_story_uses_both_question_forms_and_facts_sharing_one_place():
    stories = [relation_story(random.Random(seed)) for seed in range(300)]

    assert any(story.question.startswith("What is the ") for story in stories)
    assert any(re.fullmatch(r"What is \w+ of the \w+\?", story.question) for story in stories)
    for story in stories:
        first, second = ({subject, obj} for subject, _, obj in map(parse_relation, story.facts))
        assert len(first & second) == 1


def test_relation_story_answer_is_the_only_place_the_facts_allow():
    for seed in range(500):
        story = relation_story(random.Random(seed))

        assert places_answering(story) == {story.answer}, story


def parse_relation(fact):
    return re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", fact).groups()


def places_answering(story):
    """Every place the question could mean, reading the facts on a grid with "north of" as "anywhere north of"."""
    position = layout([parse_relation(fact) for fact in story.facts])

    def lies(place, direction, reference):
        (x, y), (rx, ry), (dx, dy) = position[place], position[reference], DIRECTION_STEP[direction]
        along = (x - rx) * dx + (y - ry) * dy
        across = (x - rx) * dy - (y - ry) * dx
        return along > 0 and across == 0

    if match := re.fullmatch(r"What is (\w+) of the (\w+)\?", story.question):
        direction, reference = match.groups()
        return {place for place in position if lies(place, direction, reference)}
    reference, direction = re.fullmatch(r"What is the (\w+) (\w+) of\?", story.question).groups()
    return {place for place in position if lies(reference, direction, place)}


def layout(relations):
    shared = ({relations[0][0], relations[0][2]} & {relations[1][0], relations[1][2]}).pop()
    position = {shared: (0, 0)}
    for subject, direction, obj in relations:
        dx, dy = DIRECTION_STEP[direction]
        if subject == shared:
            position[obj] = (-dx, -dy)
        else:
            position[subject] = (dx, dy)
    return position


def test_decoys_are_other_people_at_random_places_among_the_facts():
    rng = random.Random(0)
    positions = set()
    for _ in range(20):
        story = location_story(rng)
        decoyed = with_decoys(story, rng, 2)
        assert (decoyed.question, decoyed.answer) == (story.question, story.answer)
        assert len(decoyed.facts) == 3
        asked = story.question.removeprefix("Where is ").removesuffix("?")
        assert [fact for fact in decoyed.facts if fact.startswith(f"{asked} ")] == list(story.facts)
        positions.add(decoyed.facts.index(story.facts[0]))
    assert positions == {0, 1, 2}
