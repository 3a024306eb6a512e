"""The comparison's budget (items per data set, generation lengths) and the items and queries it asks.

``prism train`` reads it too: the comparison's queries, and whole intent sources asking the same kinds of fact, are
left out of the gate's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from interventions.measure.tasks import TASKS
from prism.compare_report import DATASETS
from prism.compare_sources import KNOWLEDGE_SOURCES
from probes.core.errors import ToolkitError
from probes.core.items import Item

__all__ = [
    "COMPARE_BUDGETS",
    "CompareBudget",
    "evaluation_items",
    "evaluation_queries",
    "excluded_sources",
    "resolve_budget",
]


@dataclass(frozen=True)
class CompareBudget:
    """Items per data set of the comparison, and generation lengths.

    Args:
        capitals: capital-city questions (accuracy and margin).
        harmbench: HarmBench standard requests (keyword refusal).
        mtbench: MT-Bench first turns (self-judged).
        refusal_tokens: greedy tokens per HarmBench answer.
        answer_tokens: tokens per MT-Bench answer.
        continents, currencies, city_countries: the GeoNames quizzes' questions (accuracy and margin).
    """

    capitals: int = 48  # capital-city questions (accuracy and margin)
    harmbench: int = 16  # HarmBench standard requests (keyword refusal)
    mtbench: int = 12  # MT-Bench first turns (self-judged)
    refusal_tokens: int = 32  # greedy tokens per HarmBench answer
    answer_tokens: int = 64  # tokens per MT-Bench answer
    continents: int = 48  # which continent a country is on
    currencies: int = 48  # a country's currency
    city_countries: int = 48  # which country a large city is in

    def size(self, dataset: str) -> int:
        """The items of ``dataset`` (a name in ``DATASETS``; ``city-countries`` is the field ``city_countries``)."""
        return getattr(self, dataset.replace("-", "_"))


COMPARE_BUDGETS = {
    "smoke": CompareBudget(16, 8, 4, 24, 32, continents=16, currencies=16, city_countries=16),
    "default": CompareBudget(),
}


def resolve_budget(budget: str | CompareBudget) -> CompareBudget:
    """A budget by name (``smoke``, ``default``), or the given one."""
    if isinstance(budget, CompareBudget):
        return budget
    if budget not in COMPARE_BUDGETS:
        raise ToolkitError(f"unknown comparison budget {budget!r}: use one of {', '.join(COMPARE_BUDGETS)}")
    return COMPARE_BUDGETS[budget]


def evaluation_items(budget: CompareBudget, seed: int = 0) -> dict[str, list[Item]]:
    """The comparison's items: each data set's registered task, sampled to the budget's size."""
    return {dataset: TASKS[dataset].load_items(budget.size(dataset), seed) for dataset in DATASETS}


def evaluation_queries(budget: CompareBudget, seed: int = 0) -> set[str]:
    """Every query the comparison asks: gate training leaves them out."""
    return {item.prompt for items in evaluation_items(budget, seed).values() for item in items}


def excluded_sources() -> tuple[str, ...]:
    """The intent sources (``probes.intents``) that ask the same kinds of fact as the comparison's knowledge sets:
    gate training leaves them out whole, so that every knowledge set scored is off the gate's training distribution."""
    return tuple(sorted({source for sources in KNOWLEDGE_SOURCES.values() for source in sources}))
