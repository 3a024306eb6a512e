"""The tables, figures and report of ``prism compare`` (``prism.compare`` runs the systems).

Scores on a 0-100 scale as in the paper (accuracy and refusal x100, judge x10); ``Overall`` is
their unweighted mean, with a bootstrap CI resampling each data set's items. Everything is
written into the working directory's ``compare/`` folder (``prism.workdir``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from figures import prism as plots
from prism.workdir import PrismDirectory
from probes.core.files import save_figure, write_record, write_table, write_text
from probes.core.stats import (
    Estimate,
    bootstrap_correlation,
    bootstrap_mean,
    paired_difference,
    percentile_interval,
    resample_indices,
)

__all__ = ["DATASETS", "ROUTERS", "SCALE", "format_table", "summarise", "write_outputs"]

DATASETS = ("capitals", "harmbench", "mtbench")  # registered tasks, in the table's order
ROUTERS = ("probe gate", "MiniLM", "self-classify")
SCALE = {"accuracy": 100.0, "refusal": 100.0, "judge": 10.0}


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
    figures = _figures(work, summary)
    _report(work, summary, plan, figures)
    write_record(work.compare_summary, {k: v for k, v in summary.items() if k != "categories"})


def _values(rows: list[dict], dataset: str) -> np.ndarray:
    if dataset == "capitals":
        return np.array([row["correct"] for row in rows]) * SCALE["accuracy"]
    if dataset == "harmbench":
        return np.array([row["refused"] for row in rows]) * SCALE["refusal"]
    return np.array([row["rating"] if row["rating"] is not None else np.nan for row in rows], dtype=float) * SCALE["judge"]


def summarise(cells, systems, items, routes: dict[str, np.ndarray], seed: int = 0) -> dict:
    """The comparison's tables from its cells.

    Args:
        cells: (system, data set) -> per-item rows (``correct`` and ``margin``, ``refused`` or ``rating``).
        systems: the systems, in table order.
        items: data set -> its items (for the per-category routing).
        routes: router -> its decisions on every item, data sets in order (router agreement).
        seed: bootstrap seed.

    Returns:
        ``table`` (one row per system, 0-100 scores with 95% CIs), ``route_rates``,
        ``agreement``, ``categories`` and ``correlation``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a data set without one parsable rating gives NaN, not noise
        return _summarise(cells, systems, items, routes, seed)


def _summarise(cells, systems, items, routes: dict[str, np.ndarray], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    table, rates = [], []
    base = {d: _values(cells[("base", d)], d) for d in DATASETS if ("base", d) in cells}
    for system in systems:
        row = {"system": system}
        overall_draws = np.zeros(1000)
        for dataset in DATASETS:
            values = _values(cells[(system, dataset)], dataset)
            finite = values[np.isfinite(values)]
            estimate = bootstrap_mean(finite if finite.size else [np.nan], seed=seed)
            row.update(estimate.columns(dataset, n=True))
            overall_draws += np.nanmean(values[resample_indices(len(values), 1000, rng)], axis=1) / len(DATASETS)
            if dataset in base and system != "base":
                both = np.isfinite(values) & np.isfinite(base[dataset])
                if not both.any():
                    continue  # e.g. no rating could be parsed
                diff = paired_difference(values[both], base[dataset][both], seed=seed)
                row.update(diff.columns(f"{dataset}_vs_base"))
            routed = [r["routed"] for r in cells[(system, dataset)]]
            rates.append({"system": system, "dataset": dataset, "route_rate": float(np.mean(routed)), "n": len(routed)})
        margins = np.array([r["margin"] for r in cells[(system, "capitals")]])
        margin = bootstrap_mean(margins, seed=seed)
        row.update(margin.columns("margin"))
        if system != "base" and ("base", "capitals") in cells:
            diff = paired_difference(margins, [r["margin"] for r in cells[("base", "capitals")]], seed=seed)
            row.update(diff.columns("margin_vs_base"))
        row["overall"] = float(np.mean([row[d] for d in DATASETS]))
        row["overall_low"], row["overall_high"] = percentile_interval(overall_draws, defined_only=True)
        table.append(row)
    agreement = []
    for i, a in enumerate(ROUTERS):
        for b in ROUTERS[i + 1:]:
            agreement.append({"a": a, "b": b, "agreement": float((routes[a] == routes[b]).mean()),
                              "kappa": float(cohen_kappa_score(routes[a], routes[b])) if len(set(routes[a])) > 1 or len(set(routes[b])) > 1 else float("nan"),
                              "n": int(len(routes[a]))})
    categories = _category_routing(cells, items) if "PRISM" in systems and "expert prompt" in systems else []
    correlation = {}
    if len(categories) >= 3:
        share = [c["route_share"] for c in categories]
        effect = [c["persona_effect"] for c in categories]
        correlation = {method: bootstrap_correlation(share, effect, method=method, seed=seed).to_dict()
                       for method in ("pearson", "spearman")}
    return {"table": table, "route_rates": rates, "agreement": agreement, "categories": categories,
            "correlation": correlation}


def _category_routing(cells, items) -> list[dict]:
    """Per category: share of queries PRISM's gate sends to the adapter vs the persona's effect
    (expert prompt - base, 0-100 scale) there: the Figure-4 analogue."""
    rows = []
    for dataset in DATASETS:
        prism, base, expert = (cells[(s, dataset)] for s in ("PRISM", "base", "expert prompt"))
        base_values, expert_values = _values(base, dataset), _values(expert, dataset)
        for category in sorted({item.category for item in items[dataset]}):
            index = [i for i, row in enumerate(prism) if row["category"] == category]
            effect = np.nanmean(expert_values[index] - base_values[index]) if index else np.nan
            rows.append({"dataset": dataset, "category": category, "n": len(index),
                         "route_share": float(np.mean([prism[i]["routed"] for i in index])),
                         "persona_effect": float(effect)})
    return [row for row in rows if np.isfinite(row["persona_effect"])]


def _figures(work: PrismDirectory, summary: dict) -> list[str]:
    written = []
    panels = [("table1", plots.comparison_bars(summary["table"])), ("route_rates", plots.route_rates(summary["route_rates"]))]
    if summary["categories"]:
        panels.append(("fig4_routing_vs_effect", plots.routing_vs_effect(summary["categories"], summary["correlation"])))
    for name, figure in panels:
        save_figure(figure, work.figure(name))
        written.append(work.figure(name).relative_to(work.compare).as_posix())
    return written


def format_table(table: Sequence[dict]) -> str:
    """The comparison as a Markdown table (0-100 scale, 95% CIs)."""
    lines = ["| system | capitals acc. | capitals margin (nats) | HarmBench refusal | MT-Bench judge x10 | Overall |",
             "|---|---|---|---|---|---|"]
    for row in table:
        ci = {key: Estimate.from_columns(row, key).format(1) for key in ("capitals", "harmbench", "mtbench", "overall")}
        margin = Estimate.from_columns(row, "margin").format(2) if "margin" in row else "-"
        lines.append(f"| {row['system']} | {ci['capitals']} | {margin} | {ci['harmbench']} | {ci['mtbench']} | {ci['overall']} |")
    return "\n".join(lines)


def _report(work: PrismDirectory, summary: dict, plan, figures: Sequence[str]) -> None:
    table = {row["system"]: row for row in summary["table"]}
    rates = {(r["system"], r["dataset"]): r["route_rate"] for r in summary["route_rates"]}
    lines = ["# PRISM compared with its baselines", "",
             f"n = {plan.capitals} capital-city questions, {plan.harmbench} HarmBench requests, {plan.mtbench} MT-Bench "
             "first turns. Scores on 0-100 (accuracy, keyword refusal rate, self-judge rating x10) with bootstrap 95% CIs; "
             "Overall = their unweighted mean.", "", format_table(summary["table"]), ""]
    if "PRISM" in table and "base" in table:
        prism = table["PRISM"]
        lines.append("## Does PRISM keep knowledge at the base level and the persona's gains elsewhere?")
        lines.append("")
        for dataset, key, label in (("capitals", "capitals", "capitals accuracy"), ("capitals", "margin", "capitals margin (nats)"),
                                    ("harmbench", "harmbench", "refusal"), ("mtbench", "mtbench", "judge x10")):
            if f"{key}_vs_base" in prism:
                diff = Estimate.from_columns(prism, f"{key}_vs_base")
                significant = diff.excludes_zero
                expert = table.get("expert prompt", {})
                digits = 2 if key == "margin" else 1
                lines.append(f"- {label}: PRISM - base {diff.format(digits)}{' (significant)' if significant else ' (not significant)'}"
                             + (f"; expert prompt - base {Estimate.from_columns(expert, f'{key}_vs_base').format(digits)}"
                                if f"{key}_vs_base" in expert else "")
                             + f"; PRISM routed {rates.get(('PRISM', dataset), float('nan')):.0%} of these queries to the adapter.")
        lines.append("")
    lines += ["## Agreement between routers", ""]
    for row in summary["agreement"]:
        lines.append(f"- {row['a']} vs {row['b']}: same decision on {row['agreement']:.0%} of {row['n']} queries "
                     f"(Cohen's kappa {row['kappa']:+.2f}).")
    if summary["correlation"]:
        p, s = summary["correlation"]["pearson"], summary["correlation"]["spearman"]
        lead = (f"Per category, the share PRISM routes to the adapter vs the persona's effect there "
                f"({len(summary['categories'])} categories): ")
        if np.isfinite(p["mean"]):
            lines += ["", lead + f"Pearson {Estimate(**p).format(2)}, "
                                 f"Spearman {Estimate(**s).format(2)} (the paper: 0.65 and 0.75)."]
        else:
            lines += ["", lead + "undefined: the route share or the persona's effect is the same in every category."]
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    write_text(work.report, "\n".join(lines) + "\n")
