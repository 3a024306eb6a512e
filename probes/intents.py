"""Intent labels from real data: what a query needs from the model.

Every query comes from a *source* (one data set, or one question form built from reference
data), and a source's queries fall into *groups* (the finer unit a held-out split moves whole):

- ``knowledge``: ``mmlu`` (MMLU questions shown without their options, so a probe sees a
  question, not the letter-list format; group = subject) and the short factual questions of
  ``probes.core.facts`` (``geo:continent``, ``geo:city``, ``geo:currency``, ``geo:language``,
  ``geo:population``, ``geo:area``, ``geo:neighbours``, ``geo:dialling-code``, ``geo:us-state``,
  ``science:constant``, and the exam-form ``exam:`` sources; several templates each; group =
  source), and the questions on WordNet's concepts of ``probes.core.lexicon`` (``lexicon:define``,
  ``lexicon:term``, ``lexicon:kind``, ``exam:lexicon``, ``exam:lexicon-passage``; group = the
  concept's WordNet lexicographer file, e.g. ``noun.person``). No source asks for capital cities:
  they are an evaluation set.
- ``generation``: ``mtbench``, MT-Bench user turns, first and second (group = category), and the
  writing requests of ``probes.core.facts`` about the same entities as the factual questions
  (``write:poem``, ``write:story``, ``write:letter``, ``write:explain``; group = source) and about
  the same WordNet concepts (``write:lexicon``; group = lexicographer file); PRISM adds the
  model's own bootstrapped queries (``added``; source ``bootstrap``).
- ``harmful``: ``harmbench`` (standard behaviours) and ``harmbench:copyright`` (requests for
  protected text); group = semantic category. (HarmBench's contextual behaviours, a long context
  before the request, are left out: hundreds of tokens each, longer than small models' context.)
- anything else: a user's JSONL/CSV file whose ``category`` column is the intent label; the
  file is one source, its group is ``subcategory`` when given, else the file's own category.

``intent_queries`` draws queries seeded and evenly: across an intent's sources first, then
across each source's groups. By default (``BENCHMARK_SOURCES``, no ``per_source``) each intent is
capped at the size of the smallest (balanced classes); with ``per_source``, every source keeps up
to that many and the intents are left unbalanced (a fit oversamples the smaller side).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Sequence

from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.facts import FACT_SOURCES, WRITING_SOURCES, load_facts
from probes.core.items import Item
from probes.core.lexicon import LEXICON_KNOWLEDGE_SOURCES, LEXICON_WRITING_SOURCES, load_lexicon

INTENTS = ("knowledge", "generation", "harmful")
POSITIONS = ("last", "mean")  # where probes read: the last prompt token, the mean over the prompt
TARGETS = {
    "intent": None,  # knowledge / generation / harmful
    "knowledge-vs-generation": {"knowledge": "knowledge", "generation": "generation"},
    "harmful-vs-benign": {"harmful": "harmful", "knowledge": "benign", "generation": "benign"},
}


def target_labels(target: str, intents: Sequence[str]) -> list[str | None]:
    """Labels of one probe target (None: the query is not part of this target)."""
    if target not in TARGETS:
        raise ToolkitError(f"unknown probe target {target!r}: use one of {', '.join(TARGETS)}")
    mapping = TARGETS[target]
    return list(intents) if mapping is None else [mapping.get(intent) for intent in intents]


def target_classes(target: str) -> list[str]:
    """The classes of a binary target in probe order: directions point towards the second."""
    mapping = TARGETS[target]
    if mapping is None:
        raise ToolkitError(f"{target} is not a binary target")
    return sorted(set(mapping.values()))


@dataclass(frozen=True)
class LabelledQuery:
    """One query with its intent, its group (moved whole by a held-out split: ``"mmlu:anatomy"``,
    ``"mtbench:writing"``, ...) and its source (held out whole by leave-one-source-out evaluation:
    ``"mmlu"``, ``"geo:currency"``, ...; default: the group up to its first colon)."""

    item: Item
    intent: str
    group: str
    source: str = field(default="")

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.group.split(":")[0])


def _mtbench_turns() -> list[Item]:
    turns = []
    for item in load_dataset("mtbench"):
        for index, text in enumerate(item.turns):
            turns.append(replace(item, id=f"{item.id}/turn{index + 1}", prompt=text, turns=(text,)))
    return turns


def _harmbench(functional: str, source: str) -> list[LabelledQuery]:
    return [
        LabelledQuery(item, "harmful", f"{source}:{item.category}", source)
        for item in load_dataset("harmbench")
        if item.subcategory == functional
    ]


def _facts(source: str, intent: str) -> Callable[[], list[LabelledQuery]]:
    return lambda: [LabelledQuery(item, intent, source, source) for item in load_facts(source)]


def _lexicon(source: str, intent: str) -> Callable[[], list[LabelledQuery]]:
    return lambda: [
        LabelledQuery(item, intent, f"{source}:{item.subcategory}", source) for item in load_lexicon(source)
    ]


SOURCES: dict[str, Callable[[], list[LabelledQuery]]] = {
    "mmlu": lambda: [
        LabelledQuery(item, "knowledge", f"mmlu:{item.subcategory}", "mmlu") for item in load_dataset("mmlu")
    ],
    **{source: _facts(source, "knowledge") for source in FACT_SOURCES},
    **{source: _lexicon(source, "knowledge") for source in LEXICON_KNOWLEDGE_SOURCES},
    "mtbench": lambda: [
        LabelledQuery(item, "generation", f"mtbench:{item.category}", "mtbench") for item in _mtbench_turns()
    ],
    **{source: _facts(source, "generation") for source in WRITING_SOURCES},
    **{source: _lexicon(source, "generation") for source in LEXICON_WRITING_SOURCES},
    "harmbench": lambda: _harmbench("standard", "harmbench"),
    "harmbench:copyright": lambda: _harmbench("copyright", "harmbench:copyright"),
}
BENCHMARK_SOURCES = ("mmlu", "mtbench", "harmbench")  # the probe study's sources
ALL_SOURCES = tuple(SOURCES)


def intent_queries(
    per_intent: int | None = 160,
    *,
    per_source: int | None = None,
    sources: Sequence[str] = BENCHMARK_SOURCES,
    added: Sequence[LabelledQuery] = (),
    extra: Sequence[str] = (),
    exclude: Collection[str] = frozenset(),
    exclude_sources: Collection[str] = frozenset(),
    seed: int = 0,
) -> list[LabelledQuery]:
    """Labelled queries from built-in sources, ``added`` queries and users' files.

    Args:
        per_intent: queries per intent, at least 2, spread evenly across the intent's sources; None: no cap. Without
            ``per_source`` every intent is also capped at the smallest intent's size (balanced classes).
        per_source: queries per source, at least 2, spread evenly across the source's groups; None: no cap (and the
            intents are balanced as above).
        sources: built-in sources to draw from (``ALL_SOURCES``; default ``BENCHMARK_SOURCES``).
        added: more labelled queries (e.g. PRISM's bootstrapped queries), each with its intent, group and source.
        extra: paths of user .jsonl/.csv files whose ``category`` is each query's intent (a new intent or more
            of a built-in one); source = the path, group = ``"{path}:{subcategory or category}"``.
        exclude: query texts never drawn (e.g. an evaluation's items), left out before sampling.
        exclude_sources: sources left out whole (built-in ones, or those of ``added`` queries or ``extra`` files), e.g.
            the sources that ask the same kind of fact as an evaluation set, so that the evaluation is off their
            distribution.
        seed: the sampling seed.

    Returns:
        ``LabelledQuery`` items (``item``, ``intent``, ``group``, ``source``), intent by intent.

    Raises:
        ToolkitError: ``per_intent`` or ``per_source`` below 2, an unknown source (drawn or left out), or an ``extra``
            file that is missing or malformed.
    """
    _check_sources(per_intent, per_source, sources, added, extra, exclude_sources)
    queries = [query for name in dict.fromkeys(sources) if name not in exclude_sources for query in SOURCES[name]()]
    queries += list(added)
    for path in extra:
        queries += [
            LabelledQuery(item, item.category, f"{path}:{item.subcategory or item.category}", str(path))
            for item in load_dataset(path)
        ]
    by_source: dict[str, list[LabelledQuery]] = defaultdict(list)
    for query in (q for q in queries if q.item.prompt not in exclude and q.source not in exclude_sources):
        by_source[query.source].append(query)
    if per_source is not None:
        by_source = {name: _spread(pool, per_source, seed) for name, pool in by_source.items()}
    pools: dict[str, dict[str, list[LabelledQuery]]] = defaultdict(dict)
    for name, pool in by_source.items():
        for query in pool:
            pools[query.intent].setdefault(name, []).append(query)
    size = per_intent
    if per_source is None:
        smallest = min(sum(len(pool) for pool in intent.values()) for intent in pools.values())
        size = smallest if per_intent is None else min(smallest, per_intent)
    chosen = []
    for intent in pools.values():
        quota = _quotas({name: len(pool) for name, pool in intent.items()}, size)
        chosen += [query for name, pool in intent.items() if quota[name] for query in _spread(pool, quota[name], seed)]
    return chosen


def _check_sources(
    per_intent: int | None,
    per_source: int | None,
    sources: Sequence[str],
    added: Sequence[LabelledQuery],
    extra: Sequence[str],
    exclude_sources: Collection[str],
) -> None:
    """``intent_queries``' refusals: caps below 2, an unknown source to draw or to leave out."""
    for name, value in (("queries per intent", per_intent), ("queries per source", per_source)):
        if value is not None and value < 2:
            raise ToolkitError(f"need at least 2 {name}, got {value}")
    unknown = [name for name in sources if name not in SOURCES]
    if unknown:
        raise ToolkitError(f"unknown intent source {unknown[0]!r}: use one of {', '.join(ALL_SOURCES)}")
    known = set(SOURCES) | {query.source for query in added} | {str(path) for path in extra}
    unknown = [name for name in exclude_sources if name not in known]
    if unknown:
        raise ToolkitError(f"unknown intent source to leave out {unknown[0]!r}: use one of {', '.join(ALL_SOURCES)}")


def _quotas(sizes: dict[str, int], total: int | None) -> dict[str, int]:
    """How many to take from each source so that ``total`` are spread evenly (round robin)."""
    if total is None or total >= sum(sizes.values()):
        return dict(sizes)
    quota = dict.fromkeys(sizes, 0)
    while sum(quota.values()) < total:
        for name in sorted(sizes):
            if quota[name] < sizes[name] and sum(quota.values()) < total:
                quota[name] += 1
    return quota


def _spread(pool: list[LabelledQuery], size: int, seed: int) -> list[LabelledQuery]:
    """``size`` queries taken evenly across their groups (round robin, seeded)."""
    if size >= len(pool):
        return list(pool)
    keyed = [replace(query.item, id=str(index), category=query.group) for index, query in enumerate(pool)]
    return [pool[int(item.id)] for item in stratified_sample(keyed, size, seed=seed)]
