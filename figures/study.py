"""Figures of the persona-effect study (analogues of the paper's Figures 1 and 2).

Each function takes tables from ``interventions.effects`` (lists of dicts) and returns a
matplotlib Figure. Error bars are bootstrap 95% CIs; a star marks a paired difference whose
CI excludes zero; every panel says its n. Rows carry the prompt format they were measured in
(``format``; rows without one are ``plain``): figures of per-condition effects draw one panel per
format side by side, on a shared axis, and ``format_effects`` sets the formats next to each other
for every condition.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from figures.style import BLUE, LIGHT_GREY, ORANGE, PALETTE, SKY, VERMILION, annotate_cells  # noqa: E402

METRIC_LABELS = {
    "accuracy": "accuracy",
    "margin": "margin of the correct option (nats)",
    "refusal_rate": "refusal rate",
    "strict": "instructions followed (strict)",
    "loose": "instructions followed (loose)",
    "judge_score": "judge score (1-10)",
    "judge_score_turn2": "judge score, turn 2 (1-10)",
}
LENGTH_COLOURS = {"min": "#9ecae1", "short": "#4292c6", "long": "#08519c"}


def _select(table: Sequence[Mapping], **where) -> list[Mapping]:
    return [row for row in table if all(_get(row, key) == value for key, value in where.items())]


def _get(row: Mapping, key: str):
    if key == "format":
        return row.get("format") or "plain"
    return row.get(key)


def _formats(rows: Sequence[Mapping]) -> list[str]:
    """The prompt formats met in ``rows``, in order (one, ``plain``, when there are none)."""
    return list(dict.fromkeys(_get(row, "format") for row in rows)) or ["plain"]


def _panels(rows: Sequence[Mapping], width: float, height: float) -> tuple[Figure, list, list[str]]:
    """A figure with one panel per prompt format of ``rows``, sharing the y axis."""
    formats = _formats(rows)
    fig, axes = plt.subplots(1, len(formats), figsize=(width * len(formats), height), squeeze=False, sharey=True)
    return fig, list(axes[0]), formats


def _errors(rows: Sequence[Mapping], centre: str) -> np.ndarray:
    return np.array([[row[centre] - row["low"] for row in rows], [row["high"] - row[centre] for row in rows]])


def _n_range(rows: Sequence[Mapping]) -> str:
    ns = sorted({row["n"] for row in rows})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([]), ax.set_yticks([])


def _note_if_all_zero(ax, rows: Sequence[Mapping]) -> None:
    if all(row["delta"] == 0 and row["low"] == 0 and row["high"] == 0 for row in rows):
        ax.text(
            0.5,
            0.85,
            "every difference is exactly 0: the persona changed no item's outcome",
            ha="center",
            transform=ax.transAxes,
            color="grey",
            fontsize=9,
        )


def delta_by_category(
    effects_by_category: Sequence[Mapping],
    task: str,
    metric: str,
    persona_spec: str = "expert",
    placement: str = "system",
    title: str | None = None,
) -> Figure:
    """Persona-minus-baseline per category, one bar per persona length (Figure 1a/1b)."""
    rows = _select(
        effects_by_category,
        task=task,
        metric=metric,
        persona_spec=persona_spec,
        placement=placement,
        reference="none[empty]",
    )
    categories = sorted({row["category"] for row in rows})
    fig, axes, formats = _panels(rows, max(6.0, 0.9 * len(categories) + 2), 4.2)
    if not rows:
        _empty(axes[0], f"no {persona_spec} persona results for {task}")
        return fig
    for ax, name in zip(axes, formats):
        heading = title or f"{task}: {persona_spec} persona effect by category"
        _category_bars(
            ax,
            _select(rows, format=name),
            categories,
            persona_spec,
            metric,
            heading + (f", format {name}" if len(formats) > 1 else ""),
            placement,
        )
    fig.tight_layout()
    return fig


def _category_bars(
    ax, rows: Sequence[Mapping], categories: list[str], persona_spec: str, metric: str, title: str, placement: str
) -> None:
    lengths = [length for length in LENGTH_COLOURS if any(row["length"] == length for row in rows)]
    width = 0.8 / len(lengths)
    for index, length in enumerate(lengths):
        series = {row["category"]: row for row in rows if row["length"] == length}
        present = [c for c in categories if c in series]
        xs = np.array([categories.index(c) for c in present]) + (index - (len(lengths) - 1) / 2) * width
        bars = [series[c] for c in present]
        ax.bar(
            xs,
            [b["delta"] for b in bars],
            width,
            yerr=_errors(bars, "delta"),
            capsize=2,
            color=LENGTH_COLOURS[length],
            label=f"{persona_spec} persona, {length}",
        )
        for x, bar in zip(xs, bars):
            if bar["significant"]:
                ax.text(x, bar["high"], "*", ha="center", va="bottom", fontsize=11)
    _note_if_all_zero(ax, rows)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel(f"Δ {METRIC_LABELS.get(metric, metric)}\nvs no persona")
    ax.set_title(f"{title}\n({placement} prompt, {_n_range(rows)} items per bar, * = 95% CI excludes 0)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)


def generation_by_category(
    effects_by_category: Sequence[Mapping], task: str = "mtbench", metric: str = "judge_score"
) -> Figure:
    """Figure 1a: generation quality by category, expert persona at each length."""
    return delta_by_category(
        effects_by_category, task, metric, title=f"{task}: expert persona effect by category (Fig. 1a analogue)"
    )


def knowledge_by_category(
    effects_by_category: Sequence[Mapping], task: str = "capitals", metric: str = "margin"
) -> Figure:
    """Figure 1b: knowledge by category; the random persona where no expert matches the items."""
    spec = "expert" if _select(effects_by_category, task=task, persona_spec="expert") else "random"
    return delta_by_category(
        effects_by_category,
        task,
        metric,
        persona_spec=spec,
        title=f"{task}: {spec} persona effect on knowledge by category (Fig. 1b analogue)",
    )


def refusal_with_safety_persona(cells: Sequence[Mapping], task: str = "harmbench") -> Figure:
    """Figure 1c: refusal rate with no persona, the safety monitor at each length, other personas."""
    rows = [row for row in _select(cells, task=task, metric="refusal_rate") if row["mean"] is not None]
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    if not rows:
        _empty(ax, f"no refusal results for {task}")
        return fig

    def order(row):
        spec = row["persona_spec"]
        rank = 0 if spec == "none" else 1 if spec == "safety-monitor" else 2
        return (rank, spec, ["min", "short", "long", None].index(row["length"]), row["placement"] or "")

    rows = sorted(rows, key=order)
    colours = [
        LIGHT_GREY if r["persona_spec"] == "none" else VERMILION if r["persona_spec"] == "safety-monitor" else SKY
        for r in rows
    ]
    ax.bar(range(len(rows)), [r["mean"] for r in rows], yerr=_errors(rows, "mean"), capsize=2, color=colours)
    for x, row in enumerate(rows):  # counts, so that a measured zero is visible as one
        ax.text(x, row["mean"] + 0.02, f"{round(row['mean'] * row['n'])}/{row['n']}", ha="center", fontsize=7)
    ax.set_xticks(
        range(len(rows)), [r["condition"].replace("[empty]", "") for r in rows], rotation=60, ha="right", fontsize=7
    )
    ax.set_ylabel("refusal rate")
    ax.set_ylim(0, 1)
    same = len(rows) > 1 and len({r["mean"] for r in rows}) == 1
    ax.set_title(
        f"{task}: refusal with the safety-monitor persona (Fig. 1c analogue, {_n_range(rows)} per bar)"
        + ("\nthe same under every condition: the persona changed no refusal" if same else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def placement_deltas(effects_by_model: Mapping[str, Sequence[Mapping]], length: str = "long") -> Figure:
    """Figure 1d: per model, the persona effect with the persona in the system prompt vs in
    the user message, for each task metric and prompt format (matched expert where it exists, else random)."""
    models = list(effects_by_model)
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(6.0 * max(1, len(models)), 4.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        effects = _select(effects_by_model[model], length=length, reference="none[empty]")
        pairs, several = [], len(_formats(effects)) > 1
        for task, metric, name in dict.fromkeys((row["task"], row["metric"], _get(row, "format")) for row in effects):
            for spec in ("expert", "random"):
                where = dict(task=task, metric=metric, persona_spec=spec, format=name)
                system, user = (
                    _select(effects, placement="system", **where),
                    _select(effects, placement="user", **where),
                )
                if system and user:
                    pairs.append((f"{task}\n{metric} ({spec}{f', {name}' if several else ''})", system[0], user[0]))
                    break
        if not pairs:
            _empty(ax, "no condition in both placements")
            ax.set_title(model)
            continue
        xs = np.arange(len(pairs))
        for offset, index, label, colour in ((-0.2, 1, "system prompt", BLUE), (0.2, 2, "user message", ORANGE)):
            bars = [pair[index] for pair in pairs]
            ax.bar(
                xs + offset,
                [b["delta"] for b in bars],
                0.4,
                yerr=_errors(bars, "delta"),
                capsize=2,
                color=colour,
                label=label,
            )
        _note_if_all_zero(ax, [pair[index] for pair in pairs for index in (1, 2)])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(xs, [pair[0] for pair in pairs], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel(f"Δ vs no persona ({length} persona)")
        ax.set_title(f"{model} (Fig. 1d analogue)")
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def persona_lift_heatmap(
    effects_by_category: Sequence[Mapping], task: str, metric: str, length: str = "min", placement: str = "system"
) -> Figure:
    """Figure 2 (left): persona x category, mean paired lift over no persona; * = significant; one panel per format."""
    rows = [
        row
        for row in _select(
            effects_by_category, task=task, metric=metric, length=length, placement=placement, reference="none[empty]"
        )
    ]
    personas = sorted({row["persona_spec"] for row in rows}, key=lambda p: (p in ("expert", "random"), p))
    categories = sorted({row["category"] for row in rows})
    fig, axes, formats = _panels(rows, max(5.0, 0.8 * len(categories) + 3), max(3.0, 0.42 * len(personas) + 1.5))
    if not rows:
        _empty(axes[0], f"no per-persona results for {task}")
        return fig
    limit = max(abs(row["delta"]) for row in rows) or 1.0
    for ax, name in zip(axes, formats):
        grid = np.full((len(personas), len(categories)), np.nan)
        significant = np.zeros_like(grid, dtype=bool)
        mine = _select(rows, format=name)
        for row in mine:
            i, j = personas.index(row["persona_spec"]), categories.index(row["category"])
            grid[i, j], significant[i, j] = row["delta"], row["significant"]
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        annotate_cells(ax, image, grid, lambda i, j, value: f"{value:+.2f}{'*' if significant[i, j] else ''}")
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_yticks(range(len(personas)), personas)
        ax.set_title(
            f"{task}: lift over no persona{f', format {name}' if len(formats) > 1 else ''}\n"
            f"({length}, {placement}; {_n_range(mine)} per cell)",
            fontsize=10,
        )
    fig.colorbar(image, ax=axes, label=f"Δ {METRIC_LABELS.get(metric, metric)}")
    return fig


def expert_lift_bars(effects_by_category: Sequence[Mapping], task: str, metric: str, length: str = "long") -> Figure:
    """Figure 2 (right): per category, expert over no persona and expert over a random persona; one panel per format."""
    rows = _select(
        effects_by_category, task=task, metric=metric, persona_spec="expert", length=length, placement="system"
    )
    categories = sorted({row["category"] for row in rows})
    fig, axes, formats = _panels(rows, max(6.0, 0.9 * len(categories) + 2), 4.2)
    if not rows:
        _empty(axes[0], f"no expert persona results for {task}")
        return fig
    for ax, name in zip(axes, formats):
        mine = _select(rows, format=name)
        for offset, reference, label, colour in (
            (-0.2, "none[empty]", "expert − no persona", BLUE),
            (0.2, f"random/{length}/system[empty]", "expert − random persona", ORANGE),
        ):
            series = {row["category"]: row for row in mine if row["reference"] == reference}
            present = [c for c in categories if c in series]
            bars = [series[c] for c in present]
            if bars:
                ax.bar(
                    np.array([categories.index(c) for c in present]) + offset,
                    [b["delta"] for b in bars],
                    0.4,
                    yerr=_errors(bars, "delta"),
                    capsize=2,
                    color=colour,
                    label=label,
                )
        _note_if_all_zero(ax, mine)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.set_ylabel(f"Δ {METRIC_LABELS.get(metric, metric)}")
        ax.set_title(
            f"{task}: expertise vs any persona{f', format {name}' if len(formats) > 1 else ''}\n"
            f"({length} persona, {_n_range(mine)} per bar)",
            fontsize=10,
        )
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def format_effects(
    effects: Sequence[Mapping], task: str, metric: str = "margin", verdicts: Mapping[str, str] | None = None
) -> Figure:
    """Every persona condition's effect (vs no persona in the same format), the prompt formats side by side.

    Args:
        effects: effect rows (``effect_table``), each with its ``format``.
        task, metric: which effects.
        verdicts: condition label -> the across-format verdict; a condition whose effect "depends on the format"
            is marked with a red label, one that "holds across formats" with a bold one.
    """
    rows = [
        row
        for row in _select(effects, task=task, metric=metric, reference="none[empty]")
        if row["persona_spec"] != "none" and row.get("delta") is not None
    ]
    formats = _formats(rows)
    conditions = list(dict.fromkeys(row["condition"] for row in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(conditions) * len(formats) + 2), 4.6))
    if not rows:
        _empty(ax, f"no persona effects for {task}")
        return fig
    width = 0.8 / len(formats)
    for index, name in enumerate(formats):
        series = {row["condition"]: row for row in _select(rows, format=name)}
        present = [c for c in conditions if c in series]
        xs = np.array([conditions.index(c) for c in present]) + (index - (len(formats) - 1) / 2) * width
        bars = [series[c] for c in present]
        ax.bar(
            xs,
            [b["delta"] for b in bars],
            width,
            yerr=_errors(bars, "delta"),
            capsize=2,
            color=PALETTE[index % len(PALETTE)],
            label=f"format {name} ({_n_range(bars)})",
        )
        for x, bar in zip(xs, bars):
            if bar["significant"]:
                ax.text(
                    x,
                    bar["high"] if bar["delta"] >= 0 else bar["low"],
                    "*",
                    ha="center",
                    va="bottom" if bar["delta"] >= 0 else "top",
                    fontsize=11,
                )
    _note_if_all_zero(ax, rows)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        range(len(conditions)), [c.replace("[empty]", "") for c in conditions], rotation=40, ha="right", fontsize=8
    )
    for label, condition in zip(ax.get_xticklabels(), conditions):
        verdict = (verdicts or {}).get(condition, "")
        if verdict == "depends on the format":
            label.set_color(VERMILION)
        elif verdict == "holds across formats":
            label.set_fontweight("bold")
    ax.set_ylabel(f"Δ {METRIC_LABELS.get(metric, metric)}\nvs no persona (same format)")
    ax.set_title(
        f"{task}: persona effects per prompt format (* = 95% CI excludes 0;\n"
        "red label = depends on the format, bold = holds across formats)",
        fontsize=10,
    )
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
