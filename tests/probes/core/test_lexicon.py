"""WordNet's concepts as intent data: every topic, knowledge in several forms and writing about the same concepts."""

from collections import Counter

import pytest

from probes.core.errors import ToolkitError
from probes.core.lexicon import (
    LEXICON_KNOWLEDGE_SOURCES,
    LEXICON_WRITING_SOURCES,
    OFFENSIVE,
    POOL_SIZE,
    concepts,
    load_lexicon,
)
from probes.intents import intent_queries


def test_concepts_come_from_wordnet_with_their_gloss_kind_and_topic():
    pool = concepts()
    assert len(pool) == POOL_SIZE and len({concept.key for concept in pool}) == POOL_SIZE
    by_term = {concept.term: concept for concept in pool}
    assert all(concept.topic.startswith("noun.") and concept.kind and concept.gloss for concept in pool)
    assert len({concept.topic for concept in pool}) >= 20  # people, acts, artefacts, states, ...: every topic
    assert not any(word in concept.gloss for concept in pool for word in OFFENSIVE)
    assert all(term[0].islower() and term.isascii() for term in by_term)  # common nouns, no names


def test_each_source_asks_its_own_forms_the_same_every_run():
    pool = {concept.key: concept for concept in concepts()}
    for source in LEXICON_KNOWLEDGE_SOURCES + LEXICON_WRITING_SOURCES:
        items = load_lexicon(source)
        assert len(items) >= 150 and {item.source for item in items} == {source}
        assert [item.prompt for item in load_lexicon(source)] == [item.prompt for item in items]
        assert len({item.prompt for item in items}) == len(items)
        for item in items[:50]:
            concept = pool[item.id.split("/")[1]]
            assert item.subcategory == concept.topic
            assert any(text.lower() in item.prompt.lower() for text in (concept.term, concept.gloss, concept.kind))
        writes = {item.prompt.startswith("Write ") for item in items}
        assert writes == ({True} if source in LEXICON_WRITING_SOURCES else {False})
    passages = load_lexicon("exam:lexicon-passage")
    assert len(passages) < POOL_SIZE  # only the concepts with an example sentence
    assert all(pool[item.id.split("/")[1]].example in item.prompt for item in passages)
    with pytest.raises(ToolkitError, match="unknown lexicon source 'lexicon:verbs'"):
        load_lexicon("lexicon:verbs")


def test_the_lexicon_sources_are_intent_sources_with_topics_as_groups():
    sources = LEXICON_KNOWLEDGE_SOURCES + LEXICON_WRITING_SOURCES
    queries = intent_queries(None, per_source=12, sources=sources, seed=0)
    assert Counter(q.source for q in queries) == dict.fromkeys(sources, 12)
    assert {q.intent for q in queries if q.source in LEXICON_KNOWLEDGE_SOURCES} == {"knowledge"}
    assert {q.intent for q in queries if q.source in LEXICON_WRITING_SOURCES} == {"generation"}
    groups = Counter(q.group for q in queries if q.source == "lexicon:define")
    assert len(groups) == 12 and all(group.startswith("lexicon:define:noun.") for group in groups)  # spread by topic
