"""Figures of the probe study: layer curves with controls, projections, PCA, cosine heatmaps."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from figures.style import BLUE, GREEN, ORANGE, PALETTE, PURPLE, VERMILION, annotate_cells  # noqa: E402

KIND_COLOURS = {"logistic": BLUE, "diff-means": VERMILION, "lda": GREEN}
CONTROL_STYLE = {"shuffled labels": ("#969696", "--"), "random direction": ("#636363", ":")}
INTENT_COLOURS = {"knowledge": BLUE, "generation": ORANGE, "harmful": VERMILION, "benign": PURPLE}


def _layer_label(layer: int) -> str:
    return "emb" if layer < 0 else str(layer)


def probe_curves(
    rows: Sequence[Mapping], target: str, position: str, metric: str = "auc", chance: float = 0.5
) -> Figure:
    """Held-out and in-distribution score vs layer for each probe kind, with both controls
    (logistic fitted to shuffled labels; a probe reading one random direction) and 95% CIs."""
    splits = ("held-out", "in-distribution")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, split in zip(axes, splits):
        chosen = [r for r in rows if r["target"] == target and r["position"] == position and r["split"] == split]
        series = sorted({r["probe"] for r in chosen})
        for name in series:
            points = sorted((r for r in chosen if r["probe"] == name), key=lambda r: r["layer"])
            layers = [r["layer"] for r in points]
            centre = np.array([r[metric] for r in points])
            low = np.array([r[f"{metric}_low"] for r in points])
            high = np.array([r[f"{metric}_high"] for r in points])
            if name in KIND_COLOURS:
                colour, style, label = KIND_COLOURS[name], "-", name
            elif name == "random direction":
                (colour, style), label = CONTROL_STYLE["random direction"], "control: random direction"
            elif name == "logistic (shuffled labels)":
                (colour, style), label = CONTROL_STYLE["shuffled labels"], "control: shuffled labels (logistic)"
            else:
                continue  # the other kinds' shuffled-label controls: in the table, not the figure
            ax.plot(layers, centre, style, color=colour, label=label, marker="o", markersize=2.5)
            ax.fill_between(layers, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.axhline(0.5 if metric == "auc" else chance, color="black", linewidth=0.6, alpha=0.5)
        n = sorted({r["n"] for r in chosen})
        ax.set_title(f"{split} (test n={n[0] if n else 0})", fontsize=10)
        ax.set_xlabel("layer (emb = token embeddings, i = after block i)")
        if chosen:
            ticks = sorted({r["layer"] for r in chosen})
            step = max(1, len(ticks) // 10)
            ax.set_xticks(ticks[::step], [_layer_label(t) for t in ticks[::step]])
    axes[0].set_ylabel(metric.upper() if metric == "auc" else metric)
    axes[0].set_ylim(min(0.3, chance - 0.05), 1.02)
    axes[1].legend(fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(
        f"{target}: probe {'AUC' if metric == 'auc' else metric} by layer, {position} position "
        f"(95% CI bands; line = chance)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def projection_histograms(groups: Mapping[str, np.ndarray], title: str, xlabel: str) -> Figure:
    """Histograms of projections onto one direction, one per group (e.g. intent, or persona)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    values = [v for v in groups.values() if len(v)]
    if not values:
        ax.text(0.5, 0.5, "nothing to project", ha="center", transform=ax.transAxes)
        return fig
    bins = np.linspace(min(v.min() for v in values), max(v.max() for v in values), 40)
    for index, (name, projection) in enumerate(groups.items()):
        colour = INTENT_COLOURS.get(name, PALETTE[index % len(PALETTE)])
        # densities, so groups of different sizes (24 queries vs 288 persona prompts) compare
        ax.hist(projection, bins=bins, alpha=0.5, color=colour, density=True, label=f"{name} (n={len(projection)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def pca_scatter(panels: Mapping[str, tuple[np.ndarray, Sequence[str], Sequence[bool]]]) -> Figure:
    """2-D PCA per layer: points coloured by intent, persona prompts drawn as crosses.

    ``panels`` maps a title to (activations [n, d], intent per row, persona flag per row)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    for ax, (title, (x, intents, persona)) in zip(axes[0], panels.items()):
        x = np.asarray(x, dtype=np.float64)
        centred = x - x.mean(axis=0)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:2].T
        explained = singular[:2] ** 2 / (singular**2).sum()
        persona = np.asarray(persona, dtype=bool)
        intents = np.asarray(intents)
        for intent in sorted(set(intents.tolist())):
            for flag, marker in ((False, "o"), (True, "x")):
                chosen = (intents == intent) & (persona == flag)
                if chosen.any():
                    ax.scatter(
                        points[chosen, 0],
                        points[chosen, 1],
                        s=12,
                        marker=marker,
                        alpha=0.7,
                        color=INTENT_COLOURS.get(intent, "grey"),
                        label=f"{intent}{' + persona' if flag else ''} ({chosen.sum()})",
                    )
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def cosine_heatmap(names: Sequence[str], matrix: np.ndarray, title: str) -> Figure:
    """Pairwise cosine similarities, annotated."""
    size = max(4.5, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    if len(names) <= 20:
        annotate_cells(ax, image, matrix, fontsize=6)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def persona_norms(rows: Sequence[Mapping], position: str) -> Figure:
    """Norm of the persona direction by layer and persona length, relative to the residual norm
    (mean over personas, with the spread across personas)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    chosen = [r for r in rows if r["position"] == position]
    for length, colour in (("min", "#9ecae1"), ("short", "#4292c6"), ("long", "#08519c")):
        points = [r for r in chosen if r["length"] == length]
        if not points:
            continue
        layers = sorted({r["layer"] for r in points})
        ratios = [[r["norm"] / r["residual_norm"] for r in points if r["layer"] == layer] for layer in layers]
        ax.plot(
            layers, [np.mean(v) for v in ratios], color=colour, marker="o", markersize=2.5, label=f"{length} persona"
        )
        ax.fill_between(layers, [np.min(v) for v in ratios], [np.max(v) for v in ratios], color=colour, alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("|persona direction| / mean |residual|")
    ax.set_title(f"Persona direction size by length ({position} position; band = range over personas)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
