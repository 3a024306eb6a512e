"""Intent labels from real data: what a query needs from the model.

- ``knowledge``: MMLU questions, shown without their options (group = subject), so a probe sees
  a question, not the letter-list format.
- ``generation``: MT-Bench user turns, first and second (group = category).
- ``harmful``: HarmBench standard behaviours (group = semantic category).
- anything else: a user's JSONL/CSV file whose ``category`` column is the intent label; its
  group is ``subcategory`` when given, else the file's own category.

Each intent is capped at the size of the smallest (balanced classes), drawn evenly across its
groups, so held-out splits (``probes.splits``) can hold out whole subjects and categories.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.items import Item

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
    item: Item
    intent: str
    group: str  # the unit a held-out split moves as a whole: "mmlu:anatomy", "mtbench:writing", ...


def _mtbench_turns() -> list[Item]:
    turns = []
    for item in load_dataset("mtbench"):
        for index, text in enumerate(item.turns):
            turns.append(replace(item, id=f"{item.id}/turn{index + 1}", prompt=text, turns=(text,)))
    return turns


def intent_queries(per_intent: int | None = 160, *, extra: Sequence[str] = (), seed: int = 0) -> list[LabelledQuery]:
    """Balanced labelled queries: ``per_intent`` of each intent (capped by the smallest).

    Args:
        per_intent: queries per intent, at least 2; None takes as many as the smallest intent has.
        extra: paths of user .jsonl/.csv files whose ``category`` is each query's intent (a new intent or more
            of a built-in one); group = ``"{path}:{subcategory or category}"``.
        seed: the sampling seed; queries are drawn evenly across each intent's groups.

    Returns:
        ``LabelledQuery`` items (``item``, ``intent``, ``group``), intent by intent.

    Raises:
        ToolkitError: ``per_intent`` below 2, or an ``extra`` file that is missing or malformed.
    """
    pools: dict[str, list[LabelledQuery]] = {
        "knowledge": [LabelledQuery(item, "knowledge", f"mmlu:{item.subcategory}") for item in load_dataset("mmlu")],
        "generation": [LabelledQuery(item, "generation", f"mtbench:{item.category}") for item in _mtbench_turns()],
        "harmful": [
            LabelledQuery(item, "harmful", f"harmbench:{item.category}")
            for item in load_dataset("harmbench") if item.subcategory == "standard"
        ],
    }
    for path in extra:
        for item in load_dataset(path):
            query = LabelledQuery(item, item.category, f"{path}:{item.subcategory or item.category}")
            pools.setdefault(item.category, []).append(query)
    size = min(len(pool) for pool in pools.values())
    if per_intent is not None:
        if per_intent < 2:
            raise ToolkitError(f"need at least 2 queries per intent, got {per_intent}")
        size = min(size, per_intent)
    return [query for pool in pools.values() for query in _spread(pool, size, seed)]


def _spread(pool: list[LabelledQuery], size: int, seed: int) -> list[LabelledQuery]:
    """``size`` queries taken evenly across their groups (round robin, seeded)."""
    keyed = [replace(query.item, id=str(index), category=query.group) for index, query in enumerate(pool)]
    return [pool[int(item.id)] for item in stratified_sample(keyed, size, seed=seed)]
