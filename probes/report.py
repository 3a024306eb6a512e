"""Figures and the Markdown report of a probe study (``probes.study``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from figures import probes as plots
from probes.core.files import save_figure, write_text
from probes.core.stats import Estimate
from probes.directions import cosine_matrix
from probes.intents import INTENTS, POSITIONS, TARGETS, target_classes
from probes.passes import layer_index


def _save(figure, path: Path) -> str:
    save_figure(figure, path)
    return f"figures/{path.name}"


def _nearest(hooks: Sequence[str], layer: int) -> str:
    """The recorded block output closest to ``layer`` (the embeddings only if nothing else)."""
    blocks = [hook for hook in hooks if layer_index(hook) >= 0] or list(hooks)
    return min(blocks, key=lambda hook: (abs(layer_index(hook) - layer), layer_index(hook)))


def write_probe_report(
    out: Path,
    rows,
    persona: Mapping,
    activations,
    queries,
    persona_set,
    intent_directions,
    hooks: Sequence[str],
    summary: dict,
) -> Path:

    figures_dir = out / "figures"
    written = []
    for target in TARGETS:
        for position in POSITIONS:
            written.append(
                _save(plots.probe_curves(rows, target, position), figures_dir / f"probe_{target}_{position}.png")
            )
        chance = 1 / (len(INTENTS) if TARGETS[target] is None else len(set(TARGETS[target].values())))
        written.append(
            _save(
                plots.probe_curves(rows, target, "mean", metric="accuracy", chance=chance),
                figures_dir / f"probe_{target}_mean_accuracy.png",
            )
        )

    # the early layer a gate would read: where knowledge vs generation first beats the controls at
    # the last prompt token (block 3 if it never does)
    early = summary["earliest"].get("knowledge-vs-generation/last") or {"layer": min(3, len(hooks) - 2)}
    hook = _nearest(hooks, max(0, early["layer"]))
    early_layer = layer_index(hook)
    direction = intent_directions[("knowledge-vs-generation", "last")][hooks.index(hook)]
    towards = target_classes("knowledge-vs-generation")[1]
    intents = np.array([q.intent for q in queries])
    projections = {intent: activations["last"][hook][intents == intent] @ direction for intent in sorted(set(intents))}
    written.append(
        _save(
            plots.projection_histograms(
                projections,
                f"Intent queries on the knowledge-vs-generation direction, layer {early_layer} (last token)",
                f"projection (towards {towards})",
            ),
            figures_dir / "projection_intents.png",
        )
    )
    base, differences = persona["base"], persona["differences"]
    with_persona = {"no persona": base["last"][hook] @ direction}
    for length in ("min", "long"):
        stacks = [differences[key][hook] for key in differences if key[1] == length and key[2] == "last"]
        if stacks:
            with_persona[f"{length} persona (all)"] = np.concatenate(
                [(base["last"][hook] + d) @ direction for d in stacks]
            )
    written.append(
        _save(
            plots.projection_histograms(
                with_persona,
                f"The same direction: queries with and without a persona (layer {early_layer}, last token)",
                f"projection (towards {towards})",
            ),
            figures_dir / "projection_personas.png",
        )
    )

    late_layer = layer_index(_nearest(hooks, layer_index(hooks[-1]) * 2 // 3))
    panels = {}
    for layer in (early_layer, late_layer):
        h = _nearest(hooks, layer)
        persona_rows = [
            base["last"][h] + differences[key][h] for key in differences if key[1] == "long" and key[2] == "last"
        ]
        x = np.concatenate([activations["last"][h]] + persona_rows) if persona_rows else activations["last"][h]
        labels = list(intents) + [q.intent for q in persona_set] * len(persona_rows)
        flags = [False] * len(intents) + [True] * (len(x) - len(intents))
        panels[f"layer {layer}, last token"] = (x, labels, flags)
    written.append(_save(plots.pca_scatter(panels), figures_dir / "pca_early_late.png"))

    middle = layer_index(hooks[len(hooks) // 2])
    mid_hook = hooks[len(hooks) // 2]
    named = {
        f"{key[0]}/{key[1]}": differences[key][mid_hook].mean(axis=0)
        for key in sorted(differences)
        if key[2] == "last" and key[1] == "long"
    }
    named.update(
        {
            f"intent: towards {target_classes(target)[1]}": intent_directions[(target, "last")][len(hooks) // 2]
            for target in ("knowledge-vs-generation", "harmful-vs-benign")
        }
    )
    if len(named) > 1:
        names, matrix = cosine_matrix(named)
        written.append(
            _save(
                plots.cosine_heatmap(
                    names, matrix, f"Cosine of persona (long) and intent directions, layer {middle}, last token"
                ),
                figures_dir / "cosine_personas.png",
            )
        )
    if persona["rows"]:
        for position in POSITIONS:
            written.append(
                _save(plots.persona_norms(persona["rows"], position), figures_dir / f"persona_norms_{position}.png")
            )

    text = _report(rows, persona, summary, hooks, middle, early_layer, written)
    write_text(out / "report.md", text)
    return out / "report.md"


def _report(rows, persona, summary, hooks, middle, early_layer, figures) -> str:
    lines = [
        f"# Probe study: {summary['model']}",
        "",
        f"{summary['n_queries']} intent queries (balanced), data hash {summary['data']}; persona directions from "
        f"{summary['personas']['n_queries']} queries x {summary['personas']['conditions']} persona conditions. "
        "AUCs are held-out scores with bootstrap 95% CIs; layer `-1` is the token embeddings (a lexical "
        "baseline); layer i is the residual stream after block i.",
        "",
        "## Where intent becomes decodable (logistic probe, held-out groups)",
        "",
        "Earliest layer whose AUC CI lies above both controls' CIs (shuffled labels; one random direction).",
        "",
        "| target | position | earliest layer | AUC [95% CI] | shuffled-label AUC | random-direction AUC | "
        "in-distribution AUC, same layer |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += _earliest_rows(rows, summary)
    lines += _early_layer_rows(rows)
    lines += ["", "## Persona directions", ""] + _persona_lines(persona, middle, early_layer)
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _earliest_rows(rows, summary) -> list[str]:
    """The table of the earliest decodable layer per target and position, with both controls."""
    lines = []
    for target in TARGETS:
        for position in POSITIONS:
            found = summary["earliest"].get(f"{target}/{position}")
            if not found:
                lines.append(f"| {target} | {position} | none | — | — | — | — |")
                continue
            controls = found["controls"]
            inside = next(
                (
                    r
                    for r in rows
                    if r["target"] == target
                    and r["position"] == position
                    and r["split"] == "in-distribution"
                    and r["probe"] == "logistic"
                    and r["layer"] == found["layer"]
                ),
                None,
            )
            shuffled, random_direction = (
                Estimate(*controls[name], found["n"]) for name in ("logistic (shuffled labels)", "random direction")
            )
            lines.append(
                f"| {target} | {position} | {found['layer']} | {Estimate.from_columns(found, 'auc').format(n=True)} "
                f"| {shuffled.format()} | {random_direction.format()} | "
                f"{Estimate.from_columns(inside, 'auc').format() if inside else '—'} |"
            )
    return lines


def _early_layer_rows(rows) -> list[str]:
    """What a gate reading blocks 0..3 sees: held-out AUC per target, position and early layer."""
    lines = [
        "",
        "At the last prompt token the embeddings are the same template token for every prompt, so "
        "layer 0 is the first place intent can appear there; at the prompt mean the token embeddings "
        "(layer -1) are a bag-of-words baseline: intent decodable there is lexical, and the curves show "
        "what the blocks add.",
        "",
        "Early layers (what a gate reading block 0..3 sees), logistic probe, held-out AUC:",
        "",
        "| target | position | " + " | ".join(f"layer {layer}" for layer in range(-1, 4)) + " |",
        "|---|---|" + "---|" * 5,
    ]
    for target in TARGETS:
        for position in POSITIONS:
            cells = []
            for layer in range(-1, 4):
                row = next(
                    (
                        r
                        for r in rows
                        if r["target"] == target
                        and r["position"] == position
                        and r["split"] == "held-out"
                        and r["probe"] == "logistic"
                        and r["layer"] == layer
                    ),
                    None,
                )
                cells.append(Estimate.from_columns(row, "auc").format() if row else "—")
            lines.append(f"| {target} | {position} | " + " | ".join(cells) + " |")
    return lines


def _persona_lines(persona, middle, early_layer) -> list[str]:
    """The persona directions in words: their size, what length does to them, how shared they are, and how they
    lie against the intent directions."""
    lines: list[str] = []
    rows_p, shared, lengths = persona["rows"], persona["shared"], persona["lengths"]
    if not rows_p:
        return lines
    at = [r for r in rows_p if r["layer"] == middle and r["position"] == "last"]
    for length in ("min", "short", "long"):
        chosen = [r for r in at if r["length"] == length]
        if chosen:
            ratio = np.mean([r["norm"] / r["residual_norm"] for r in chosen])
            lines.append(
                f"- Layer {middle}, last token, {length} personas: |direction| / |residual| = {ratio:.3f} "
                f"(mean over {len(chosen)} personas; per-persona CIs in persona_directions.csv)."
            )
    pairs = [r for r in lengths if r["layer"] == middle and r["position"] == "last"]
    if pairs:
        lines.append(
            f"- Does length scale it? At layer {middle}: long/min norm ratio "
            f"{np.mean([p['norm_ratio_long_min'] for p in pairs]):.2f} (range "
            f"{min(p['norm_ratio_long_min'] for p in pairs):.2f}-{max(p['norm_ratio_long_min'] for p in pairs):.2f}), "
            f"cosine(min, long) {np.mean([p['cos_min_long'] for p in pairs]):.2f} (mean over personas)."
        )
    for row in [s for s in shared if s["position"] == "last" and s["layer"] in (early_layer, middle)]:
        verdict = (
            "mostly one shared direction"
            if row["mean_pairwise_cosine"] > 0.5 and row["first_component_share"] > 0.6
            else "persona-specific directions with a shared part"
            if row["mean_pairwise_cosine"] > 0.2
            else "largely persona-specific directions"
        )
        lines.append(
            f"- One direction or many? Layer {row['layer']}, {row['length']} personas: mean pairwise cosine "
            f"{row['mean_pairwise_cosine']:.2f}, first shared component holds {row['first_component_share']:.0%} "
            f"of the directions' energy: {verdict}."
        )
    for target in ("knowledge-vs-generation", "harmful-vs-benign"):
        values = [r[f"cos_{target}"] for r in at if f"cos_{target}" in r]
        if values:
            towards = target_classes(target)[1]
            lines.append(
                f"- Persona vs intent at layer {middle}: cosine with the {target} direction (pointing "
                f"towards {towards}) {np.mean(values):+.2f} "
                f"(range {min(values):+.2f} to {max(values):+.2f} over persona conditions)."
            )
    return lines
