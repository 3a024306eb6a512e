"""Figures of the causal experiments: patching heatmap, steering dose-response, ablation, logit lens."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from figures.style import BLUE, GREY, LIGHT_GREY, VERMILION, annotate_cells  # noqa: E402


def patching_heatmap(rows: Sequence[Mapping]) -> Figure:
    """Fraction of the persona's effect recovered by patching no-persona activations into the
    persona run, per layer (rows) and position group (columns)."""
    layers = sorted({r["layer"] for r in rows})
    groups = list(dict.fromkeys(r["group"] for r in rows))
    grid = np.full((len(layers), len(groups)), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), groups.index(r["group"])] = r["fraction"]
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 2.5, 0.32 * len(layers) + 2))
    image = ax.imshow(grid, cmap="RdBu", vmin=-1.2, vmax=1.2, aspect="auto")
    annotate_cells(ax, image, grid)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("position group patched from the no-persona run")
    ax.set_ylabel("after block")
    n = rows[0]["n"] if rows else 0
    ax.set_title(f"Share of the persona's effect on the answer margin recovered (n={n} items)", fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction recovered (1 = all of it)")
    fig.tight_layout()
    return fig


def steering_dose_response(rows: Sequence[Mapping]) -> Figure:
    """Fraction of the persona effect reproduced by adding the persona direction, by scale,
    with a random direction of the same norm as control."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, colour in (("persona direction", BLUE), ("random direction", "#969696")):
        points = sorted((r for r in rows if r["direction"] == kind), key=lambda r: r["multiple"])
        if not points:
            continue
        xs = [r["multiple"] for r in points]
        ax.plot(xs, [r["fraction"] for r in points], marker="o", color=colour, label=kind)
        ax.fill_between(xs, [r["low"] for r in points], [r["high"] for r in points], color=colour, alpha=0.15)
    ax.axhline(1, color="black", linewidth=0.6, linestyle="--")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("steering size (multiples of the persona's own mean shift)")
    ax.set_ylabel("fraction of the persona effect reproduced")
    layer = rows[0]["layer"] if rows else "?"
    n = rows[0]["n"] if rows else 0
    ax.set_title(
        f"Steering no-persona runs at the answer position after block {layer} (n={n}; 95% CI bands)", fontsize=10
    )
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def ablation_bars(rows: Sequence[Mapping]) -> Figure:
    """Fraction of the persona's damage restored by projecting a direction out of persona runs."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = [r["direction"] for r in rows]
    centre = np.array([r["fraction"] for r in rows])
    errors = np.array([[r["fraction"] - r["low"] for r in rows], [r["high"] - r["fraction"] for r in rows]])
    ax.bar(
        range(len(rows)), centre, yerr=errors, capsize=3, color=[BLUE if "persona" in n else "#969696" for n in names]
    )
    ax.set_xticks(range(len(rows)), names)
    ax.axhline(1, color="black", linewidth=0.6, linestyle="--")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("fraction of the persona effect restored")
    n = rows[0]["n"] if rows else 0
    layer = rows[0].get("layer", "?") if rows else "?"
    ax.set_title(f"Mean-ablating the direction at the answer position after block {layer} (n={n})", fontsize=10)
    fig.tight_layout()
    return fig


def logit_lens_curves(curves: Mapping[str, np.ndarray]) -> Figure:
    """Correct answer's log-probability and rank by layer, with and without the persona."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("logprob", "rank")):
        for name, colour in (("none", GREY), ("persona", VERMILION)):
            values = curves[f"{name}_{metric}"]
            if metric == "rank":
                values = np.log10(values + 1)
            mean = values.mean(axis=1)
            spread = 1.96 * values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])
            layers = np.arange(len(mean))
            ax.plot(layers, mean, color=colour, label="no persona" if name == "none" else "with persona")
            ax.fill_between(layers, mean - spread, mean + spread, color=colour, alpha=0.2)
        ax.set_xlabel("after block")
        ax.set_ylabel("log-probability of the correct first token" if metric == "logprob" else "log10(rank + 1)")
        ax.legend(fontsize=8, frameon=False)
    n = next(iter(curves.values())).shape[1]
    fig.suptitle(f"Logit lens at the answer position (n={n} items; bands: 95% CI of the mean)", fontsize=11)
    fig.tight_layout()
    return fig


def attention_to_persona(rows: Sequence[Mapping]) -> Figure:
    """Left: attention from the answer position to the persona per block, against the share
    uniform attention would give. Right: per block, how well that attention predicts the margin
    each item loses, against the persona's share of the tokens alone."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    layers = [r["layer"] for r in rows]
    left.plot(layers, [r["attention"] for r in rows], marker="o", color=VERMILION, label="attention to persona tokens")
    left.axhline(
        rows[0]["uniform_share"],
        color=GREY,
        linestyle="--",
        linewidth=1,
        label="persona's share of the tokens (uniform attention)",
    )
    left.set_xlabel("block")
    left.set_ylabel("attention mass (mean over heads and items)")
    left.legend(fontsize=8, frameon=False, loc="center right")
    right.plot(layers, [r["pearson"] for r in rows], marker="o", color=BLUE, label="attention to persona")
    right.fill_between(layers, [r["low"] for r in rows], [r["high"] for r in rows], color=BLUE, alpha=0.15)
    share = rows[0]
    right.axhspan(share["share_low"], share["share_high"], color="#969696", alpha=0.2)
    right.axhline(
        share["share_pearson"], color=GREY, linestyle="--", linewidth=1, label="persona's share of the tokens"
    )
    right.axhline(0, color="black", linewidth=0.6)
    right.set_xlabel("block")
    right.set_ylabel("Pearson r with the margin lost")
    right.legend(fontsize=8, frameon=False)
    fig.suptitle(
        f"Attention from the answer position to the persona (n={rows[0]['n']} items; 95% CI bands)", fontsize=11
    )
    fig.tight_layout()
    return fig


def refusal_bars(rows: Sequence[Mapping]) -> Figure:
    """Keyword refusal rate on harmful requests: no persona, the persona prompt, and steering."""
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 3, 4))
    labels = [r["condition"] + (f"\nx{r['multiple']:g}" if r["multiple"] else "") for r in rows]
    centre = np.array([r["rate"] for r in rows])
    errors = np.array([[r["rate"] - r["low"] for r in rows], [r["high"] - r["rate"] for r in rows]])
    colours = {
        "no persona": GREY,
        "persona prompt": VERMILION,
        "persona direction": BLUE,
        "random direction": LIGHT_GREY,
    }
    ax.bar(
        range(len(rows)), centre, yerr=errors, capsize=3, color=[colours.get(r["condition"], "#969696") for r in rows]
    )
    for x, row in enumerate(rows):  # counts, so that a measured zero is visible as one
        ax.text(
            x, row["rate"] + 0.02, f"{round(row['rate'] * row['n'])}/{row['n']}", ha="center", va="bottom", fontsize=8
        )
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("keyword refusal rate")
    title = f"Refusal on HarmBench requests under the persona and under steering (n={rows[0]['n']})"
    if len(rows) > 1 and len({r["rate"] for r in rows}) == 1:
        title += "\nthe same under every condition: this panel cannot separate them"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
