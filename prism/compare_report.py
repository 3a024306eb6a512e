"""The tables, figures and report of ``prism compare`` (``prism.compare`` runs the systems).

Scores on a 0-100 scale as in the paper (accuracy and refusal x100, judge x10). Knowledge is
scored on several sources (``prism.compare_sources.KNOWLEDGE``: capital cities and the GeoNames
quizzes); ``knowledge`` is the unweighted mean of their accuracies, and ``Overall`` the
unweighted mean of knowledge, refusal and judge, each with a bootstrap CI resampling each data
set's items. Per knowledge source, each system's accuracy, margin and paired margin change vs
base, and per data set each router's route rate, are tables of their own
(``prism.compare_sources``). Everything is written into the working directory's ``compare/``
folder (``prism.workdir``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from figures import prism as plots
from prism.compare_findings import correlation_line, trade_off
from prism.compare_sources import KNOWLEDGE, format_sources, knowledge_by_source, router_rates, source_findings
from prism.workdir import PrismDirectory
from probes.core.correlation import bootstrap_correlation
from probes.core.files import save_figure, write_record, write_table, write_text
from probes.core.stats import (
    Estimate,
    bootstrap_mean,
    paired_difference,
    resample_indices,
)

__all__ = ["ADAPTER_OF", "DATASETS", "ROUTERS", "SCALE", "format_table", "summarise", "write_outputs"]

DATASETS = (*KNOWLEDGE, "harmbench", "mtbench")  # registered tasks, in the table's order
ROUTERS = ("probe gate", "MiniLM", "self-classify")
SCALE = {"accuracy": 100.0, "refusal": 100.0, "judge": 10.0}
ADAPTER_OF = {"ungated LoRA": "sft", "PRISM": "prism", "MiniLM -> LoRA": "prism", "self-classify -> LoRA": "prism"}


def write_outputs(work: PrismDirectory, summary: dict, plan) -> None:
    """Write the comparison's tables, figures, report and summary into ``work``'s ``compare/``.

    Args:
        work: the PRISM working directory.
        summary: what ``summarise`` returned.
        plan: the ``CompareBudget`` the cells were run with (the report states its sizes).
    """
    write_table(work.compare_table, summary["table"])
    write_table(work.route_rates, summary["route_rates"])
    write_table(work.category_routing, summary["categories"])
    write_table(work.knowledge_table, summary["knowledge"])
    write_table(work.router_rates, summary["router_rates"])
    figures = _figures(work, summary)
    _report(work, summary, plan, figures)
    write_record(work.compare_summary, {k: v for k, v in summary.items() if k != "categories"})


def _values(rows: list[dict], dataset: str) -> np.ndarray:
    if dataset in KNOWLEDGE:
        return np.array([row["correct"] for row in rows]) * SCALE["accuracy"]
    if dataset == "harmbench":
        return np.array([row["refused"] for row in rows]) * SCALE["refusal"]
    return (
        np.array([row["rating"] if row["rating"] is not None else np.nan for row in rows], dtype=float) * SCALE["judge"]
    )


def summarise(
    cells, systems, items, routes: dict[str, np.ndarray], seed: int = 0, *, adapters: dict | None = None
) -> dict:
    """The comparison's tables from its cells.

    Args:
        cells: (system, data set) -> per-item rows (``correct`` and ``margin``, ``refused`` or ``rating``; ``routed``).
        systems: the systems, in table order.
        items: data set -> its items (for the per-category routing and the routers' rates per data set).
        routes: router -> its decisions on every item, data sets in ``DATASETS`` order (agreement, rates per source).
        seed: bootstrap seed.
        adapters: ``train.json``'s ``adapters`` (each adapter's ``teacher_length`` and held-out ``fidelity``): each
            system that answers with an adapter (``ADAPTER_OF``) gets its ``fidelity`` and ``other_persona_fidelity``
            (with CIs and ``fidelity_n``) and ``teacher_length``; the per-category routing pairs PRISM's routes with
            the expert prompt at the teacher's length when the comparison has it.

    Returns:
        ``table`` (one row per system, 0-100 scores with 95% CIs: every data set, ``knowledge`` (the mean accuracy of
        the knowledge sets) and its margin, ``overall``, each set's margin as ``{set}_margin``; ``margin`` is the
        capitals margin), ``route_rates`` (per system and data set), ``knowledge`` (per knowledge source and system:
        ``compare_sources.knowledge_by_source``), ``router_rates`` (per router and data set), ``agreement``,
        ``categories`` and ``correlation``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a data set without one parsable rating gives NaN, not noise
        return _summarise(cells, systems, items, routes, seed, adapters or {})


def _mean_of(points: Sequence[float], draws: Sequence[np.ndarray], n: int) -> Estimate:
    """The unweighted mean of per-set numbers; its CI from their resamples (each set's items resampled on their own)."""
    return Estimate.from_resamples(float(np.mean(points)), np.mean(draws, axis=0), n, defined_only=True)


def _carried(adapter: dict | None) -> dict:
    """An adapter's teacher length, and its held-out fidelity with the other-persona control where measured, as table
    columns (none for a system without an adapter)."""
    if not adapter:
        return {}
    columns = {"teacher_length": adapter.get("teacher_length") or "min"}
    fidelity = adapter.get("fidelity")
    if not fidelity:  # no held-out persona-path sample
        return columns
    columns.update(Estimate.from_columns(fidelity, "fidelity").columns("fidelity", n=True))
    if "other_persona_fidelity" in fidelity:
        columns.update(Estimate.from_columns(fidelity, "other_persona_fidelity").columns("other_persona_fidelity"))
    return columns


def _summarise(cells, systems, items, routes: dict[str, np.ndarray], seed: int, adapters: dict) -> dict:
    rng = np.random.default_rng(seed)
    table, rates = [], []
    base = {d: _values(cells[("base", d)], d) for d in DATASETS if ("base", d) in cells}
    base_margins = {d: np.array([r["margin"] for r in cells[("base", d)]]) for d in KNOWLEDGE if ("base", d) in cells}
    for system in systems:
        row = {"system": system}
        draws: dict[str, dict[str, np.ndarray]] = {"score": {}, "vs_base": {}, "margin": {}, "margin_vs_base": {}}
        for dataset in DATASETS:
            rows = cells[(system, dataset)]
            _dataset_columns(row, draws, rows, dataset, base, base_margins, seed, rng)
            routed = [r["routed"] for r in rows]
            rates.append(
                {
                    "system": system,
                    "dataset": dataset,
                    **bootstrap_mean(np.asarray(routed, dtype=float), seed=seed).columns("route_rate"),
                    "n": len(routed),
                }
            )
        _knowledge_columns(row, draws, sum(len(cells[(system, d)]) for d in KNOWLEDGE))
        # Overall: the unweighted mean of knowledge (itself the mean of the knowledge sets), refusal and judge
        others = [d for d in DATASETS if d not in KNOWLEDGE]
        part_draws = [np.mean([draws["score"][d] for d in KNOWLEDGE], axis=0)] + [draws["score"][d] for d in others]
        overall = _mean_of(
            [row["knowledge"]] + [row[d] for d in others], part_draws, sum(len(cells[(system, d)]) for d in DATASETS)
        )
        row.update(overall.columns("overall"))
        row.update(_carried(adapters.get(ADAPTER_OF.get(system))))
        table.append(row)
    teacher = (adapters.get("prism") or {}).get("teacher_length") or "min"
    expert = next((s for s in (f"expert prompt ({teacher})", "expert prompt") if s in systems), None)
    categories = _category_routing(cells, items, expert) if "PRISM" in systems and expert else []
    return {
        "table": table,
        "route_rates": rates,
        "knowledge": knowledge_by_source(cells, systems, seed),
        "router_rates": router_rates(routes, items, DATASETS, seed),
        "agreement": _router_agreement(routes),
        "categories": categories,
        "correlation": _category_correlation(categories, seed),
    }


def _dataset_columns(
    row: dict, draws: dict, rows: list[dict], dataset: str, base: dict, base_margins: dict, seed: int, rng
) -> None:
    """One system's columns on one data set (score, and for knowledge sets the margin; each also against base on the
    same items), and their resampled means in ``draws`` (one resampling of the items, drawn from ``rng``)."""
    values = _values(rows, dataset)
    finite = values[np.isfinite(values)]
    row.update(bootstrap_mean(finite if finite.size else [np.nan], seed=seed).columns(dataset, n=True))
    index = resample_indices(len(values), 1000, rng)
    draws["score"][dataset] = np.nanmean(values[index], axis=1)
    compared = dataset in base and row["system"] != "base"
    if compared and (both := np.isfinite(values) & np.isfinite(base[dataset])).any():  # e.g. no rating parsed
        row.update(paired_difference(values[both], base[dataset][both], seed=seed).columns(f"{dataset}_vs_base"))
        draws["vs_base"][dataset] = np.nanmean((values - base[dataset])[index], axis=1)
    if dataset in KNOWLEDGE:
        margins = np.array([r["margin"] for r in rows])
        row.update(bootstrap_mean(margins, seed=seed).columns(f"{dataset}_margin"))
        draws["margin"][dataset] = margins[index].mean(axis=1)
        if compared:
            difference = paired_difference(margins, base_margins[dataset], seed=seed)
            row.update(difference.columns(f"{dataset}_margin_vs_base"))
            draws["margin_vs_base"][dataset] = (margins - base_margins[dataset])[index].mean(axis=1)


def _knowledge_columns(row: dict, draws: dict, n_knowledge: int) -> None:
    """The knowledge columns: each the unweighted mean over the knowledge sets, where every set has it."""
    for name, key, suffix in (
        ("knowledge", "score", ""),
        ("knowledge_vs_base", "vs_base", "_vs_base"),
        ("knowledge_margin", "margin", "_margin"),
        ("knowledge_margin_vs_base", "margin_vs_base", "_margin_vs_base"),
    ):
        if all(d in draws[key] for d in KNOWLEDGE):
            points = [row[f"{d}{suffix}"] for d in KNOWLEDGE]
            row.update(_mean_of(points, [draws[key][d] for d in KNOWLEDGE], n_knowledge).columns(name, n=True))
    for suffix in ("", "_vs_base"):  # the capitals margin under the name it had before the quizzes
        if f"capitals_margin{suffix}" in row:
            row.update(Estimate.from_columns(row, f"capitals_margin{suffix}").columns(f"margin{suffix}"))


def _router_agreement(routes: dict[str, np.ndarray]) -> list[dict]:
    """Each pair of routers: how often they route alike, and Cohen's kappa (NaN where both route one way)."""
    agreement = []
    for i, a in enumerate(ROUTERS):
        for b in ROUTERS[i + 1 :]:
            varied = len(set(routes[a])) > 1 or len(set(routes[b])) > 1
            agreement.append(
                {
                    "a": a,
                    "b": b,
                    "agreement": float((routes[a] == routes[b]).mean()),
                    "kappa": float(cohen_kappa_score(routes[a], routes[b])) if varied else float("nan"),
                    "n": int(len(routes[a])),
                }
            )
    return agreement


def _category_correlation(categories: list[dict], seed: int) -> dict:
    """Pearson's and Spearman's correlation of the share routed with the persona's effect over the categories."""
    if len(categories) < 3:
        return {}
    share = [c["route_share"] for c in categories]
    effect = [c["persona_effect"] for c in categories]
    return {
        method: bootstrap_correlation(share, effect, method=method, seed=seed).to_dict()
        for method in ("pearson", "spearman")
    }


def _category_routing(cells, items, expert_system: str = "expert prompt") -> list[dict]:
    """Per category: share of queries PRISM's gate sends to the adapter vs the persona's effect
    (``expert_system`` - base, 0-100 scale) there: the Figure-4 analogue."""
    rows = []
    for dataset in DATASETS:
        prism, base, expert = (cells[(s, dataset)] for s in ("PRISM", "base", expert_system))
        base_values, expert_values = _values(base, dataset), _values(expert, dataset)
        for category in sorted({item.category for item in items[dataset]}):
            index = [i for i, row in enumerate(prism) if row["category"] == category]
            effect = np.nanmean(expert_values[index] - base_values[index]) if index else np.nan
            rows.append(
                {
                    "dataset": dataset,
                    "category": category,
                    "n": len(index),
                    "expert": expert_system,
                    "route_share": float(np.mean([prism[i]["routed"] for i in index])),
                    "persona_effect": float(effect),
                }
            )
    return [row for row in rows if np.isfinite(row["persona_effect"])]


def _figures(work: PrismDirectory, summary: dict) -> list[str]:
    written = []
    panels = [
        ("table1", plots.comparison_bars(summary["table"])),
        ("route_rates", plots.route_rates(summary["route_rates"])),
        ("by_source", plots.route_and_margin_by_source(summary["router_rates"], summary["knowledge"])),
    ]
    if summary["categories"]:
        panels.append(
            ("fig4_routing_vs_effect", plots.routing_vs_effect(summary["categories"], summary["correlation"]))
        )
    for name, figure in panels:
        save_figure(figure, work.figure(name))
        written.append(work.figure(name).relative_to(work.compare).as_posix())
    return written


def format_table(table: Sequence[dict]) -> str:
    """The comparison as a Markdown table (0-100 scale, 95% CIs): knowledge (the mean over its sources; capitals in a
    table from before the quizzes), its margin, what the persona path carries (the adapter's held-out fidelity to its
    teacher persona, and another persona's prompt as control; where measured), refusal, judge and Overall."""
    knowledge = "knowledge" if all("knowledge" in row for row in table) else "capitals"
    margin = "knowledge_margin" if knowledge == "knowledge" else "margin"
    carried = any("teacher_length" in row for row in table)
    lines = [
        f"| system | {knowledge} acc. | {knowledge} margin (nats) |"
        + (" persona carried (held-out fidelity; other persona) |" if carried else "")
        + " HarmBench refusal | MT-Bench judge x10 | Overall |",
        "|---|---|---|" + ("---|" if carried else "") + "---|---|---|",
    ]
    for row in table:
        ci = {key: Estimate.from_columns(row, key).format(1) for key in (knowledge, "harmbench", "mtbench", "overall")}
        shown = Estimate.from_columns(row, margin).format(2) if margin in row else "-"
        cells = [row["system"], ci[knowledge], shown]
        if carried:
            cells.append(_carried_cell(row))
        lines.append("| " + " | ".join(cells + [ci["harmbench"], ci["mtbench"], ci["overall"]]) + " |")
    return "\n".join(lines)


def _carried_cell(row: dict) -> str:
    if "fidelity" not in row:
        return "not measured (no held-out sample)" if "teacher_length" in row else "-"
    text = f"{Estimate.from_columns(row, 'fidelity').format(2)} of the {row.get('teacher_length', 'min')} persona"
    if "other_persona_fidelity" in row:
        text += f"; {Estimate.from_columns(row, 'other_persona_fidelity').format(2)}"
    return text


def _report(work: PrismDirectory, summary: dict, plan, figures: Sequence[str]) -> None:
    table = {row["system"]: row for row in summary["table"]}
    rates = {(r["system"], r["dataset"]): r["route_rate"] for r in summary["route_rates"]}
    sizes = ", ".join(f"{plan.size(d)} {d}" for d in KNOWLEDGE)
    lines = [
        "# PRISM compared with its baselines",
        "",
        f"n = {sizes} knowledge questions, {plan.harmbench} HarmBench requests, {plan.mtbench} MT-Bench first turns. "
        "Scores on 0-100 (accuracy, keyword refusal rate, self-judge rating x10) with bootstrap 95% CIs; knowledge = "
        "the mean accuracy of its sources; Overall = the unweighted mean of knowledge, refusal and judge. "
        "expert prompt: the matched persona's min text (~5 words) on every query; expert prompt (long): its long "
        "text (~150 words). Persona carried: the adapter's held-out fidelity to its teacher persona (the share of "
        "the persona's effect on next-token distributions it reproduces without the persona), beside the share "
        "another persona's prompt reproduces.",
        "",
        format_table(summary["table"]),
        "",
    ]
    story = trade_off(summary["table"], summary["route_rates"])
    if story:
        lines += ["## What the table shows", ""] + story + [""]
    if "PRISM" in table and "base" in table:
        prism = table["PRISM"]
        lines.append("## Does PRISM keep knowledge at the base level and the persona's gains elsewhere?")
        lines.append("")
        for dataset, key, label in (
            ("knowledge", "knowledge", "knowledge accuracy (mean of sources)"),
            ("knowledge", "knowledge_margin", "knowledge margin (nats, mean of sources)"),
            ("harmbench", "harmbench", "refusal"),
            ("mtbench", "mtbench", "judge x10"),
        ):
            if f"{key}_vs_base" in prism:
                diff = Estimate.from_columns(prism, f"{key}_vs_base")
                expert = table.get("expert prompt", {})
                digits = 2 if "margin" in key else 1
                routed = (
                    np.mean([rates.get(("PRISM", d), np.nan) for d in KNOWLEDGE])
                    if dataset == "knowledge"
                    else rates.get(("PRISM", dataset), float("nan"))
                )
                lines.append(
                    f"- {label}: PRISM - base "
                    f"{diff.format(digits)}{' (significant)' if diff.excludes_zero else ' (not significant)'}"
                    + (
                        f"; expert prompt - base {Estimate.from_columns(expert, f'{key}_vs_base').format(digits)}"
                        if f"{key}_vs_base" in expert
                        else ""
                    )
                    + f"; PRISM routed {routed:.0%} of these queries to the adapter."
                )
        lines += ["", "## Knowledge per source, and route rates per data set", ""]
        lines += source_findings(summary["knowledge"], summary.get("excluded_sources"))
        lines += ["", format_sources(summary["knowledge"], summary["router_rates"]), ""]
    lines += ["## Agreement between routers", ""]
    for row in summary["agreement"]:
        lines.append(
            f"- {row['a']} vs {row['b']}: same decision on {row['agreement']:.0%} of {row['n']} queries "
            f"(Cohen's kappa {row['kappa']:+.2f})."
        )
    if summary["correlation"]:
        lines += ["", correlation_line(summary["correlation"], summary["categories"])]
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    write_text(work.report, "\n".join(lines) + "\n")
