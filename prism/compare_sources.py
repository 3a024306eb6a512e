"""``prism compare`` per source: knowledge (accuracy, margin, margin change vs base) on each
knowledge data set, and each router's route rate on every data set, all with 95% CIs.

The knowledge data sets are the capital-city questions and the GeoNames quizzes
(``probes.core.quizzes``). ``KNOWLEDGE_SOURCES`` names, for each, the intent sources of
``probes.intents`` that ask the same kind of fact: ``prism train`` leaves them out of the gate's
data, so that every knowledge set the comparison scores is off the gate's training
distribution (no intent source asks for capital cities). A source is where PRISM keeps
knowledge when its margin change vs base is not significantly below zero: the paired bootstrap
95% CI over the set's items (``probes.core.stats.paired_difference``) does not lie wholly below
zero (and not only by arithmetic noise: ``NUMERICAL_NOISE``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.quizzes import FACT_SOURCE
from probes.core.stats import Estimate, bootstrap_mean, paired_difference

__all__ = [
    "KNOWLEDGE",
    "KNOWLEDGE_SOURCES",
    "below_base",
    "format_sources",
    "knowledge_by_source",
    "router_rates",
    "source_findings",
]

KNOWLEDGE = ("capitals", "continents", "currencies", "city-countries")  # registered tasks, in the tables' order
# a query the router leaves on the base path is scored by another batching (no shared prefix, the routing hooks) and
# its margin may differ from base's by arithmetic alone (float32 on the embedded model: up to ~3e-5 nats an item): a
# change whose CI reaches above -NUMERICAL_NOISE nats is not called a fall
NUMERICAL_NOISE = 1e-3
KNOWLEDGE_SOURCES: dict[str, tuple[str, ...]] = {
    name: tuple(filter(None, [FACT_SOURCE.get(name)])) for name in KNOWLEDGE
}


def _rate(decisions: Sequence[bool], seed: int) -> Estimate:
    return bootstrap_mean(np.asarray(decisions, dtype=float), seed=seed)


def knowledge_by_source(
    cells: Mapping[tuple[str, str], Sequence[Mapping]], systems: Sequence[str], seed: int = 0
) -> list[dict]:
    """One row per (knowledge data set, system): accuracy (0-100) and margin (nats), the paired differences of both
    from base over the same items, and the share of the set's queries the system sent to its persona path.

    Args:
        cells: (system, data set) -> per-item rows (``id``, ``correct``, ``margin``, ``routed``).
        systems: the systems, in order (``base`` gives the reference).
        seed: bootstrap seed.

    Returns:
        rows with ``source``, ``system``, ``n``, ``accuracy``, ``margin`` and ``route_rate`` (each with ``_low`` and
        ``_high``) and, but for base, ``accuracy_vs_base``, ``margin_vs_base`` and ``below_base``.
    """
    rows = []
    for source in KNOWLEDGE:
        base = cells.get(("base", source))
        for system in systems:
            mine = cells.get((system, source))
            if mine is None:
                continue
            correct = np.array([r["correct"] for r in mine], dtype=float) * 100.0
            margin = np.array([r["margin"] for r in mine], dtype=float)
            row = {
                "source": source,
                "system": system,
                "n": len(mine),
                **bootstrap_mean(correct, seed=seed).columns("accuracy"),
                **bootstrap_mean(margin, seed=seed).columns("margin"),
                **_rate([r["routed"] for r in mine], seed).columns("route_rate"),
            }
            if system != "base" and base is not None:
                if [r["id"] for r in base] != [r["id"] for r in mine]:
                    raise ToolkitError(f"the {system!r} and base cells of {source} hold different items")
                diff = paired_difference(margin, [r["margin"] for r in base], seed=seed)
                row.update(
                    paired_difference(
                        correct, np.array([r["correct"] for r in base], dtype=float) * 100.0, seed=seed
                    ).columns("accuracy_vs_base")
                )
                row.update(diff.columns("margin_vs_base"), below_base=below_base(diff))
            rows.append(row)
    return rows


def below_base(diff: Estimate) -> bool:
    """Whether a margin change vs base is significantly below zero: its CI lies below ``-NUMERICAL_NOISE`` (n >= 5)."""
    return bool(diff.significant and diff.high < -NUMERICAL_NOISE)


def router_rates(
    routes: Mapping[str, np.ndarray], items: Mapping[str, Sequence[Item]], datasets: Sequence[str], seed: int = 0
) -> list[dict]:
    """One row per (router, data set): the share of the set's queries the router sends to the persona path.

    Args:
        routes: router -> its decisions on every item, the data sets' items in ``datasets`` order.
        items: data set -> its items.
        datasets: the data sets, in the order ``routes`` holds them.
        seed: bootstrap seed.

    Returns:
        rows with ``router``, ``dataset``, ``knowledge`` (bool), ``route_rate`` with ``_low``/``_high``, and ``n``.
    """
    rows = []
    for router, decisions in routes.items():
        decisions, start = np.asarray(decisions, dtype=bool), 0
        if len(decisions) != sum(len(items[d]) for d in datasets):
            raise ToolkitError(f"router {router!r} decided {len(decisions)} queries, not the data sets' items")
        for dataset in datasets:
            part = decisions[start : start + len(items[dataset])]
            start += len(part)
            rows.append(
                {
                    "router": router,
                    "dataset": dataset,
                    "knowledge": dataset in KNOWLEDGE,
                    **_rate(part, seed).columns("route_rate"),
                    "n": len(part),
                }
            )
    return rows


def format_sources(knowledge: Sequence[Mapping], rates: Sequence[Mapping], system: str = "PRISM") -> str:
    """Markdown: per knowledge source, base and ``system``'s accuracy and margin and their margin difference; then
    each router's route rate per data set (95% CIs)."""
    lines = []
    by = {(r["source"], r["system"]): r for r in knowledge}
    sources = list(dict.fromkeys(r["source"] for r in knowledge))
    if sources and all((s, "base") in by and (s, system) in by for s in sources):
        lines += [
            f"| knowledge source | n | base acc. | {system} acc. | base margin | {system} margin | "
            f"{system} - base margin | significantly below base? |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for source in sources:
            base, mine = by[(source, "base")], by[(source, system)]
            est = {
                key: Estimate.from_columns(row, name)
                for key, row, name in (
                    ("base_acc", base, "accuracy"),
                    ("acc", mine, "accuracy"),
                    ("base_margin", base, "margin"),
                    ("margin", mine, "margin"),
                    ("diff", mine, "margin_vs_base"),
                )
            }
            lines.append(
                f"| {source} | {mine['n']} | {est['base_acc'].format(1)} | {est['acc'].format(1)} | "
                f"{est['base_margin'].format(2)} | {est['margin'].format(2)} | {est['diff'].format(2, signed=True)} | "
                f"{'yes' if mine['below_base'] else 'no'} |"
            )
    routers = list(dict.fromkeys(r["router"] for r in rates))
    if routers:
        table = {(r["router"], r["dataset"]): r for r in rates}
        lines += [
            "",
            "| data set (share routed to the persona path) | n | " + " | ".join(routers) + " |",
            "|---|---|" + "---|" * len(routers),
        ]
        for dataset in dict.fromkeys(r["dataset"] for r in rates):
            row = table[(routers[0], dataset)]
            cells = [Estimate.from_columns(table[(router, dataset)], "route_rate").format(2) for router in routers]
            lines.append(
                f"| {dataset}{' (knowledge)' if row['knowledge'] else ''} | {row['n']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines).strip("\n")


def source_findings(knowledge: Sequence[Mapping], excluded: Sequence[str] | None, system: str = "PRISM") -> list[str]:
    """Report lines: per knowledge source, whether ``system``'s margin is significantly below base, whether the gate's
    data left out the intent sources asking the same kind of fact, and the verdict over every source.

    Args:
        knowledge: ``knowledge_by_source``'s rows.
        excluded: the intent sources the gate's data left out (``train.json``'s ``excluded_sources``); None: unknown.
        system: the routed system judged.
    """
    mine = [r for r in knowledge if r["system"] == system and "margin_vs_base" in r]
    if not mine:
        return []
    lines, below, seen = [], [], []
    for row in mine:
        diff = Estimate.from_columns(row, "margin_vs_base")
        asked = KNOWLEDGE_SOURCES.get(row["source"], ())
        if not asked:
            training = "no intent source asks it"
        elif excluded is None:
            training = f"the gate's data may hold {', '.join(asked)} (train.json records no excluded sources)"
        elif set(asked) <= set(excluded):
            training = f"{', '.join(asked)} left out of the gate's data"
        else:
            training = f"the gate trained on {', '.join(s for s in asked if s not in excluded)}: not an unseen source"
            seen.append(row["source"])
        below += [row["source"]] if row["below_base"] else []
        routed = Estimate.from_columns(row, "route_rate")
        lines.append(
            f"- {row['source']} ({training}): {system} - base margin {diff.format(2, signed=True)} nats "
            f"(n={row['n']}), {'significantly below base' if row['below_base'] else 'not significantly below base'}; "
            f"{system} routed {routed.mean:.0%} [{routed.low:.0%}, {routed.high:.0%}] of its queries."
        )
    sources = f"{len(mine)} knowledge source{'s' if len(mine) != 1 else ''}"
    if below:
        verdict = (
            f"{system}'s knowledge margin is significantly below base on {len(below)} of {sources}: {', '.join(below)}."
        )
    else:
        verdict = f"{system}'s knowledge margin is not significantly below base on any of the {sources}."
    if seen:
        verdict += f" (The gate trained on the kind of fact of {', '.join(seen)}.)"
    return [verdict, ""] + lines
