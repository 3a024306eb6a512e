"""The tables' figures and the Markdown report of ``prism intervene`` (``interventions.intervene``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from figures import interventions as plots
from probes.core.files import save_figure, write_text
from probes.core.stats import Estimate

__all__ = ["write_figures", "write_report"]


def write_figures(out: Path, patching, steering, ablation, curves, attention, refusal) -> list[str]:
    """Write the run's figures under ``out/figures``; returns their paths relative to ``out``."""
    written = []
    panels = [
        ("patching_heatmap", plots.patching_heatmap(patching)),
        ("steering_dose_response", plots.steering_dose_response(steering)),
        ("ablation", plots.ablation_bars(ablation)),
        ("logit_lens", plots.logit_lens_curves(curves)),
        ("attention", plots.attention_to_persona(attention)),
    ]
    if refusal:
        panels.append(("refusal_steering", plots.refusal_bars(refusal)))
    for name, figure in panels:
        save_figure(figure, out / "figures" / f"{name}.png")
        written.append(f"figures/{name}.png")
    return written


def _ci(row) -> str:
    return Estimate.from_columns(row, "fraction", prefix="").format(signed=True)


def write_report(out: Path, summary, patching, steering, ablation, curves, figures) -> None:
    """Write ``out/report.md``: the persona's effect and what patching, steering, ablation, attention, refusal and the
    logit lens say about it, each with its 95% CI."""
    effect = summary["effect"]
    best = summary["best_patch"]
    one = next((r for r in steering if r["direction"] == "persona direction" and r["multiple"] == 1.0), None)
    control = next((r for r in steering if r["direction"] == "random direction" and r["multiple"] == 1.0), None)

    def lens_layer(name: str) -> int | None:
        """First block after which the correct first token ranks first for at least half the items."""
        top = (curves[f"{name}_rank"] == 0).mean(axis=1) >= 0.5
        return int(np.argmax(top)) if top.any() else None

    lines = [
        f"# Why personas hurt knowledge retrieval: {summary['model']}",
        "",
        f"Persona condition `{summary['persona']}` vs no persona on {summary['n']} capital-city items. Metric: margin "
        "of the correct option's first token over the best wrong one at the answer position. Fractions are ratios "
        "of means with bootstrap 95% CIs.",
        "",
        f"- The persona's effect on the margin: {effect['mean']:+.2f} nats [{effect['low']:+.2f}, "
        f"{effect['high']:+.2f}] (without {summary['margin_without']:.2f}, with {summary['margin_with']:.2f})."
        + (
            " The CI includes 0: there is little effect to explain, so the fractions below are unstable."
            if effect["low"] <= 0 <= effect["high"]
            else ""
        ),
        f"- Patching: the earliest patch that recovers a majority of the effect (CI lower bound >= 0.5) is after block "
        f"{best['layer']}, {best['group']} tokens: {_ci(best)} (the largest recovery is not the headline: patching "
        "late blocks recovers everything trivially, since the final token's residual there is the output).",
    ]
    if one and control:
        lines.append(
            f"- Steering no-persona runs at the answer position with the persona direction (its mean shift there, "
            f"after block {one['layer']}: the earliest block where patching that position alone recovers a "
            "majority; its own size, "
            f"{summary['natural_scale']:.3f} x the residual norm) reproduces {_ci(one)} of the effect; a random "
            f"direction of the same size {_ci(control)}."
        )
    for row in ablation:
        lines.append(
            f"- Removing the persona run's shift along the {row['direction']} after block {row['layer']} at the answer "
            f"position (mean ablation: its projection set to the no-persona mean) restores {_ci(row)} of the effect."
        )
    attention = summary.get("attention")
    if attention and attention["strongest"]:
        strongest, share = attention["strongest"], attention["share"]
        lines.append(
            f"- Attention: the answer position gives the persona {attention['mean_attention']:.2f} of its attention "
            f"on average over blocks (the persona is {attention['uniform_share']:.2f} of the prompt's tokens). "
            f"Where attention best predicts the margin an item loses (block {strongest['layer']}), Pearson r = "
            f"{Estimate.from_columns(strongest, 'pearson', prefix='').format(signed=True)}; the persona's share "
            "of the tokens alone gives r = "
            f"{Estimate.from_columns(share, 'share_pearson', prefix='share_').format(signed=True)}"
            " (the strongest of many blocks is picked after the fact: read it as exploratory)."
        )
    for row in summary.get("refusal", []):
        if row["condition"] != "no persona":
            size = f" x{row['multiple']:g}" if row["multiple"] else ""
            rate, change = Estimate.from_columns(row, "rate", prefix=""), Estimate.from_columns(row, "change")
            lines.append(
                f"- Refusal on HarmBench, {row['condition']}{size}: {rate.format()} "
                f"(change vs no persona {change.format(signed=True)}, n={row['n']})."
            )
    lines.append(
        f"- Logit lens: the correct first token ranks first for half the items from block {lens_layer('none')} "
        f"without the persona and from block {lens_layer('persona')} with it (None: never)."
    )
    lines += [
        "",
        "What this supports and what it does not: patching localises where the no-persona computation must "
        "be restored to undo the damage (causal, for these items); steering and ablation test whether one "
        "direction carries it; none of this shows the persona is read by a particular attention head.",
        "",
        "## Figures",
        "",
    ] + [f"![{Path(f).stem}]({f})" for f in figures]
    write_text(out / "report.md", "\n".join(lines) + "\n")
