"""Figures of PRISM: the Table-1 comparison, route rates, route rate and knowledge margin per source, routing vs
persona effect, gate sweep, route rate per unseen source."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PANELS = (
    ("knowledge", "Knowledge accuracy (mean of sources)"),
    ("harmbench", "HarmBench refusal"),
    ("mtbench", "MT-Bench judge x10"),
    ("overall", "Overall"),
)
DATASET_COLOURS = {
    "capitals": "#2171b5",
    "continents": "#6baed6",
    "currencies": "#08306b",
    "city-countries": "#4292c6",
    "harmbench": "#cb181d",
    "mtbench": "#238b45",
}


COUNTED = ("harmbench", "capitals")  # panels whose score is a share of items: an equal panel writes k/n per row


def comparison_bars(table: Sequence[Mapping]) -> Figure:
    """One panel per sub-score and Overall: every system with its 95% CI (0-100 scale). A table without the
    knowledge column (from before the knowledge quizzes) shows capitals accuracy in its place. A panel where every
    system scores the same (0 refusals for all) writes each row's value (``0/8`` for a share of items) and says in
    its title that it cannot separate the systems; a mark at each mean keeps a score of 0 visible."""
    panels = [
        (key, title) if key != "knowledge" or "knowledge" in table[0] else ("capitals", "Capitals accuracy")
        for key, title in PANELS
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.42 * len(table) + 2.0), sharey=True)
    names = [row["system"] for row in table]
    for ax, (key, title) in zip(axes, panels):
        centre = np.array([row[key] for row in table], dtype=float)
        low = np.array([row[f"{key}_low"] for row in table], dtype=float)
        high = np.array([row[f"{key}_high"] for row in table], dtype=float)
        colours = ["#636363" if name == "base" else "#d94801" if name == "PRISM" else "#9ecae1" for name in names]
        errors = np.clip(np.nan_to_num([centre - low, high - centre]), 0, None)
        ax.barh(range(len(table)), centre, xerr=errors, color=colours, capsize=2)
        ax.scatter(centre, range(len(table)), marker="|", color=colours, s=60, zorder=3)
        if "base" in names:
            ax.axvline(centre[names.index("base")], color="#636363", linestyle="--", linewidth=0.8)
        if len(table) > 1 and np.isfinite(centre).all() and np.ptp(centre) == 0:
            for y, row in enumerate(table):
                right = high[y] if np.isfinite(high[y]) else centre[y]  # past the whisker
                ax.text(min(right, 85) + 2, y, equal_label(row, key), va="center", fontsize=8)
            title += f"\nthe same for all {len(table)} systems: cannot separate them"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("score (0-100)")
        ax.set_xlim(0, 100)
    axes[0].set_yticks(range(len(table)), names)
    axes[0].invert_yaxis()
    fig.suptitle("PRISM and its baselines (bars: mean, whiskers: 95% CI; dashed: base model)", fontsize=11)
    fig.tight_layout()
    return fig


def equal_label(row: Mapping, key: str) -> str:
    """A row's value where a panel cannot separate the systems: ``k/n`` items for a share of items, else the score."""
    n = row.get(f"{key}_n")
    if key in COUNTED and n:
        return f"{round(row[key] / 100 * n)}/{n}"
    return f"{row[key]:.1f}"


def route_rates(rows: Sequence[Mapping]) -> Figure:
    """Share of each data set's queries sent to the persona path, per routed system."""
    routed = [s for s in dict.fromkeys(r["system"] for r in rows) if s not in ("base", "expert prompt", "ungated LoRA")]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(routed) + 2.5, 4))
    width = 0.8 / max(1, len(datasets))
    for k, dataset in enumerate(datasets):
        values = [
            next((r["route_rate"] for r in rows if r["system"] == s and r["dataset"] == dataset), np.nan)
            for s in routed
        ]
        where = np.arange(len(routed)) + (k - (len(datasets) - 1) / 2) * width
        colour = DATASET_COLOURS.get(dataset, "#969696")
        ax.bar(where, values, width, color=colour, label=dataset)
        ax.scatter(where, values, marker="_", color=colour, s=40, zorder=3)  # a rate of 0 stays visible
    ax.set_xticks(range(len(routed)), [s.replace(" -> ", "\n-> ") for s in routed], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share routed to the persona path")
    ax.legend(fontsize=8, frameon=False)
    n = {r["dataset"]: r["n"] for r in rows}
    title = "Route rate per data set (n = " + ", ".join(f"{d} {n[d]}" for d in datasets) + ")"
    shown = [r["route_rate"] for r in rows if r["system"] in routed]
    if len(set(shown)) == 1:
        title += f"\nevery routed system sends {shown[0]:.0%} of every data set: the panel cannot separate them"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


ROUTER_COLOURS = {"probe gate": "#d94801", "MiniLM": "#238b45", "self-classify": "#a6761d"}
OTHER_COLOURS = ("#6baed6", "#238b45", "#a6761d", "#6a3d9a", "#e7298a", "#08306b")


def route_and_margin_by_source(rates: Sequence[Mapping], knowledge: Sequence[Mapping]) -> Figure:
    """Left: each router's share of every data set's queries sent to the persona path (knowledge sets first);
    right: each system's change of the knowledge margin vs base per knowledge source. Whiskers: 95% CIs."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
    routers = list(dict.fromkeys(r["router"] for r in rates))
    datasets = list(dict.fromkeys(r["dataset"] for r in rates))
    width = 0.8 / max(1, len(routers))
    for k, router in enumerate(routers):
        rows = [next(r for r in rates if r["router"] == router and r["dataset"] == d) for d in datasets]
        centre, low, high = (
            np.array([r[key] for r in rows], dtype=float) for key in ("route_rate", "route_rate_low", "route_rate_high")
        )
        where = np.arange(len(datasets)) + (k - (len(routers) - 1) / 2) * width
        colour = ROUTER_COLOURS.get(router, "#969696")
        left.bar(
            where,
            centre,
            width,
            yerr=[centre - low, high - centre],
            color=colour,
            label=router,
            capsize=1.5,
            error_kw={"linewidth": 0.7},
        )
        left.scatter(where, centre, marker="_", color=colour, s=40, zorder=3)  # a rate of 0 stays visible
    knowledge_sets = [d for d in datasets if any(r["dataset"] == d and r["knowledge"] for r in rates)]
    if knowledge_sets and len(knowledge_sets) < len(datasets):
        left.axvline(len(knowledge_sets) - 0.5, color="#636363", linewidth=0.6)
    n = {r["dataset"]: r["n"] for r in rates}
    left.set_xticks(range(len(datasets)), [f"{d}\n(n={n[d]})" for d in datasets], fontsize=7)
    left.set_ylim(0, 1.05)
    left.set_ylabel("share routed to the persona path")
    left.set_title("Route rate per data set (left of the line: knowledge)", fontsize=10)
    left.legend(fontsize=7, frameon=False)
    changed = [r for r in knowledge if "margin_vs_base" in r]
    systems = list(dict.fromkeys(r["system"] for r in changed))
    sources = list(dict.fromkeys(r["source"] for r in changed))
    step = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        rows = [next((r for r in changed if r["system"] == system and r["source"] == s), None) for s in sources]
        y = np.arange(len(sources)) + (k - (len(systems) - 1) / 2) * step
        drawn = [(where, row) for where, row in zip(y, rows) if row is not None]
        centre, low, high = (
            np.array([r[key] for _, r in drawn], dtype=float)
            for key in ("margin_vs_base", "margin_vs_base_low", "margin_vs_base_high")
        )
        colour = {"PRISM": "#d94801", "expert prompt": "#636363"}.get(system, OTHER_COLOURS[k % len(OTHER_COLOURS)])
        right.errorbar(
            centre,
            [where for where, _ in drawn],
            xerr=[centre - low, high - centre],
            fmt="o",
            color=colour,
            markersize=4,
            capsize=2,
            linestyle="none",
            label=system,
        )
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(range(len(sources)), sources, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("margin change vs base (nats; system - base, paired)")
    right.set_title("Knowledge margin per source vs base", fontsize=10)
    if systems:
        right.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def routing_vs_effect(categories: Sequence[Mapping], correlation: Mapping) -> Figure:
    """Figure-4 analogue: per category, the share PRISM routes vs the persona's effect there."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for dataset, colour in DATASET_COLOURS.items():
        points = [c for c in categories if c["dataset"] == dataset]
        if points:
            ax.scatter(
                [c["persona_effect"] for c in points],
                [c["route_share"] for c in points],
                color=colour,
                label=dataset,
                s=[12 + 4 * c["n"] for c in points],
                alpha=0.8,
            )
    ax.axvline(0, color="black", linewidth=0.6)
    expert = categories[0].get("expert", "expert prompt") if categories else "expert prompt"
    ax.set_xlabel(f"persona's effect in the category ({expert} - base, 0-100 scale)")
    ax.set_ylabel("share routed to the adapter by PRISM")
    ax.set_ylim(-0.05, 1.05)
    title = "Routing vs persona effect per category"
    if correlation and np.isfinite(correlation["pearson"]["mean"]):
        p, s = correlation["pearson"], correlation["spearman"]
        if np.isfinite(p["low"]) and np.isfinite(s["low"]):
            title += (
                f"\nPearson {p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}], "
                f"Spearman {s['mean']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}] (n={p['n']} categories)"
            )
        else:  # no interval: the note says why (e.g. it rests on 3 of 34 points)
            note = p.get("note") or s.get("note") or "no interval"
            title += (
                f"\nPearson {p['mean']:+.2f}, Spearman {s['mean']:+.2f} (n={p['n']} categories)\n" + note.split(";")[0]
            )
        if p.get("note") and np.isfinite(p["low"]):
            title += f"\n{p['note']}"
    elif correlation:
        title += f"\ncorrelation undefined: no variation across the {len(categories)} categories"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, title="point size: items", title_fontsize=7)
    fig.tight_layout()
    return fig


def gate_sweep(rows: Sequence[Mapping], quality: Mapping | None = None) -> Figure:
    """Held-out AUC of the gate per block and read position, with both controls; the
    baseline routers' AUCs on the same split as horizontal bands."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for position, colour in (("last", "#08519c"), ("mean", "#d94801"), ("query", "#6a3d9a")):
        points = sorted((r for r in rows if r["position"] == position), key=lambda r: r["layer"])
        if not points:
            continue
        layers = [r["layer"] for r in points]
        ax.plot(layers, [r["auc"] for r in points], marker="o", color=colour, label=f"probe, {position} token(s)")
        ax.fill_between(
            layers, [r["auc_low"] for r in points], [r["auc_high"] for r in points], color=colour, alpha=0.15
        )
        ax.plot(
            layers,
            [r["shuffled_auc"] for r in points],
            linestyle=":",
            color=colour,
            label=f"shuffled labels ({position})",
        )
        ax.plot(
            layers,
            [r["random_auc"] for r in points],
            linestyle="--",
            color=colour,
            alpha=0.6,
            label=f"random direction ({position})",
        )
    length = next((r for r in rows if r["position"] == "length only"), None)
    if length is not None:
        ax.axhline(length["auc"], color="#969696", linestyle="-.", linewidth=1, label="prompt length alone")
    rows = [r for r in rows if r["position"] != "length only"]
    for name, colour in (("embedding", "#238b45"), ("self_classify", "#a6761d")):
        if quality and name in quality:
            q = quality[name]
            ax.axhspan(q["low"], q["high"], color=colour, alpha=0.12)
            ax.axhline(
                q["auc"],
                color=colour,
                linewidth=1,
                label=f"{'MiniLM router' if name == 'embedding' else 'self-classify'} (any block)",
            )
    ax.axhline(0.5, color="black", linewidth=0.6)
    ax.set_xlabel("gate reads the residual after block")
    ax.set_xticks(sorted({r["layer"] for r in rows}))
    ax.set_ylabel("held-out AUC")
    lowest = min(
        [r[key] for r in rows for key in ("auc_low", "shuffled_auc", "random_auc") if np.isfinite(r[key])], default=0.3
    )
    ax.set_ylim(min(0.3, lowest - 0.05), 1.02)
    n = rows[0]["n_test"] if rows else 0
    ax.set_title(f"Where the route is decodable (held-out n={n}; bands: 95% CI)", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


SOURCE_ROUTERS = (
    ("gate", "in-model probe gate", "#d94801"),
    ("embedding", "MiniLM router", "#238b45"),
    ("self_classify", "self-classification", "#a6761d"),
    ("length_only", "prompt length alone", "#bdbdbd"),
)


def route_by_source(table: Sequence[Mapping], limits: tuple[float, float] = (0.1, 0.9)) -> Figure:
    """Share of each unseen source routed to the persona path (leave one source out), per router, with 95% CIs;
    base-path sources on the left (target: at most ``limits[0]``), persona-path ones on the right (at least
    ``limits[1]``)."""
    rows = sorted(table, key=lambda r: (r["route"] != "base", r["route"] == "mixed"))
    routers = [r for r in SOURCE_ROUTERS if f"{r[0]}_route_rate" in (rows[0] if rows else {})]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.62 * len(rows) + 2.5), 4.6))
    width = 0.8 / max(1, len(routers))
    x = np.arange(len(rows))
    for k, (name, label, colour) in enumerate(routers):
        centre = np.array([r[f"{name}_route_rate"] for r in rows], dtype=float)
        low = np.array([r[f"{name}_route_rate_low"] for r in rows], dtype=float)
        high = np.array([r[f"{name}_route_rate_high"] for r in rows], dtype=float)
        where = x + (k - (len(routers) - 1) / 2) * width
        ax.bar(
            where,
            centre,
            width,
            yerr=[centre - low, high - centre],
            color=colour,
            label=label,
            capsize=1.5,
            error_kw={"linewidth": 0.7},
        )
        ax.scatter(where, centre, marker="_", color=colour, s=40, zorder=3)  # a rate of 0 stays visible
    base = [i for i, r in enumerate(rows) if r["route"] == "base"]
    persona = [i for i, r in enumerate(rows) if r["route"] == "persona"]
    for members, level, text in (
        (base, limits[0], f"target <= {limits[0]:.0%}"),
        (persona, limits[1], f"target >= {limits[1]:.0%}"),
    ):
        if members:
            ax.hlines(level, min(members) - 0.45, max(members) + 0.45, color="black", linestyle="--", linewidth=0.9)
            ax.text((min(members) + max(members)) / 2, level + 0.02, text, ha="center", va="bottom", fontsize=7)
    if base and persona:
        ax.axvline(max(base) + 0.5, color="#636363", linewidth=0.6)
    ax.set_xticks(
        x, [f"{r['source']} (n={r['n']})" for r in rows], rotation=50, ha="right", rotation_mode="anchor", fontsize=7
    )
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share routed to the persona path")
    ax.set_title(
        "Route rate on unseen sources (each source held out whole; left: knowledge -> base model, "
        "right: persona path; whiskers: 95% CI)",
        fontsize=9,
    )
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig
