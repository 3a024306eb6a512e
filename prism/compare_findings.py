"""What the comparison shows, in words with CIs: the report's and the demo's closing lines.

``trade_off`` reads the Table-1 rows (``prism.compare_report``): what each expert prompt (min and
long persona) costs knowledge against base, what PRISM costs it and how much knowledge it routes,
what the persona path carries on held-out queries against the other-persona control, and which
columns cannot separate the systems. ``correlation_line`` is the Figure-4 sentence, saying what
the per-category data cannot say (``probes.core.correlation``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from prism.compare_sources import KNOWLEDGE
from probes.core.stats import Estimate

__all__ = ["correlation_line", "trade_off"]


def trade_off(table: Sequence[dict], route_rates: Sequence[dict] = ()) -> list[str]:
    """What the table shows, in words with CIs: what the expert prompts cost knowledge (margin and accuracy vs base),
    what PRISM costs it and how much of the knowledge it routes, what the persona path carries on held-out queries
    against the other-persona control, and the columns that cannot separate the systems."""
    rows = {row["system"]: row for row in table}
    lines = []

    def change(row: dict, key: str, digits: int, unit: str) -> str:
        diff = Estimate.from_columns(row, f"{key}_vs_base")
        verdict = "significant" if diff.excludes_zero else "not significant"
        return f"{diff.format(digits, signed=True)} {unit} ({verdict})"

    knowledge = "knowledge" if all("knowledge" in row for row in table) else "capitals"
    margin = "knowledge_margin" if knowledge == "knowledge" else "margin"
    for system in [s for s in rows if s.startswith("expert prompt")] + ["ungated LoRA", "PRISM"]:
        row = rows.get(system, {})
        if f"{margin}_vs_base" not in row:
            continue
        routed = [r["route_rate"] for r in route_rates if r["system"] == system and r["dataset"] in KNOWLEDGE]
        where = (
            f", routing {np.mean(routed):.0%} of the knowledge questions to the adapter"
            if system == "PRISM" and routed
            else ""
        )
        lines.append(
            f"- {system}: knowledge margin vs base {change(row, margin, 2, 'nats')}, accuracy "
            f"{change(row, knowledge, 1, 'points')}{where}."
        )
    prism = rows.get("PRISM", {})
    if "fidelity" in prism:
        fidelity = Estimate.from_columns(prism, "fidelity")
        text = (
            f"- What the persona path carries: on held-out persona-path queries PRISM's adapter reproduces "
            f"{fidelity.format(2)} (n={fidelity.n}) of the {prism['teacher_length']} persona's effect"
        )
        if "other_persona_fidelity" in prism:
            control = Estimate.from_columns(prism, "other_persona_fidelity")
            both = fidelity.has_interval and control.has_interval
            verdict = (
                "the adapter carries more than every persona shares."
                if both and fidelity.low > control.high
                else "the adapter carries less than another persona's prompt already does."
                if both and fidelity.high < control.low
                else "at this data size the adapter is not distinguishable from what every persona shares."
            )
            text += f"; another persona's prompt reproduces {control.format(2)}: {verdict}"
        lines.append(text)
    elif "teacher_length" in prism:
        lines.append(
            "- What the persona path carries: not measured (the gate sent no held-out bootstrapped sample to it)."
        )
    for key, label in (("harmbench", "HarmBench refusal"), ("mtbench", "MT-Bench judge x10")):
        values = {row[key] for row in table if key in row}
        if len(table) > 1 and len(values) == 1:
            value, n = values.pop(), table[0].get(f"{key}_n")
            shown = f"{round(value / 100 * n)}/{n}" if key == "harmbench" and n else f"{value:.1f}"
            lines.append(f"- {label} is {shown} for every system: this column cannot separate them.")
    return lines


def correlation_line(correlation: dict, categories: Sequence[dict]) -> str:
    """The Figure-4 sentence: per category, PRISM's route share vs the persona's effect, Pearson and Spearman with their
    CIs, or what the data cannot say (a correlation resting on a few categories, or on few distinct values)."""
    p, s = Estimate(**correlation["pearson"]), Estimate(**correlation["spearman"])
    routed = sum(c["route_share"] > 0 for c in categories)
    moved = sum(c["persona_effect"] != 0 for c in categories)
    lead = (
        f"Per category, the share PRISM routes to the adapter vs the persona's effect there ({len(categories)} "
        f"categories; {routed} with any query routed, {moved} where the persona changed the score): "
    )
    if not np.isfinite(p.mean):
        return lead + "undefined: the route share or the persona's effect is the same in every category."
    if not p.has_interval and not s.has_interval and p.note == s.note:
        return lead + f"Pearson {p.mean:+.2f}, Spearman {s.mean:+.2f}, {p.note} (the paper: 0.65 and 0.75)."
    return lead + f"Pearson {p.format(2, signed=True)}, Spearman {s.format(2, signed=True)} (the paper: 0.65 and 0.75)."
