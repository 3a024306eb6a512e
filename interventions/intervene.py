"""``prism intervene``: causal experiments on knowledge items (``run_interventions``; metric in ``interventions.causal``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from figures import interventions as plots
from interventions import causal
from interventions.hooks import AddDirection
from interventions.measure.tasks import TASKS
from interventions.summary import InterventionSummary
from probes.core.batching import right_pad
from probes.core.errors import ToolkitError
from probes.core.files import save_figure, write_table, write_text
from probes.core.models import load_model
from probes.core.prompts import Condition
from probes.core.stats import Estimate, bootstrap_correlation, bootstrap_mean, paired_difference
from probes.readouts import residual_norms

DEFAULT_MULTIPLES = (0.0, 0.5, 1.0, 2.0, 4.0)


def run_interventions(
    out: str | Path,
    *,
    model_name: str = "default",
    persona: Condition = Condition("random", "long", "system"),
    n_items: int = 48,
    layers: Sequence[int] | None = None,
    refusal_items: int = 12,
    refusal_multiples: Sequence[float] = (1.0, 4.0),
    steer_layer: int | None = None,
    multiples: Sequence[float] = DEFAULT_MULTIPLES,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> InterventionSummary:
    """Run the causal tests into ``out``; returns the headline numbers (the full record: ``summary.json``).

    Items are capital-city questions the model answers well, each paired with and without the persona; the tests are
    activation patching, steering, mean ablation, attention to the persona, refusal under steering and the logit lens.

    Args:
        out: the output directory (CSV + JSON tables, ``logit_lens.json``, ``figures/``, ``report.md``, ``summary.json``).
        model_name: the model to load (``load_model``).
        persona: the persona condition, not ``"none"`` (default: a long persona in the system prompt, random per item,
            as in the study's strongest knowledge effect).
        n_items: capital-city items to sample (those whose query tokenises differently next to the persona are dropped).
        layers: blocks of the patching sweep (default: about eight, spread from the first to the last).
        refusal_items, refusal_multiples: HarmBench prompts for refusal under steering (0 skips it), and its multiples.
        steer_layer: the block of steering and ablation (default: the earliest where patching the answer position
            alone recovers a majority of the effect).
        multiples: steering strengths, as multiples of the persona's own shift (its mean residual change) there.
        seed: sampling, bootstrap and random-direction seed.
        batch_size, progress: prompts per forward pass; show progress bars.

    Returns:
        the ``InterventionSummary``: the persona's effect on the answer margin (nats) and the decisive patch.

    Raises:
        ToolkitError: a ``"none"`` persona, a layer the model does not have, or a model that cannot be loaded.
    """
    out = Path(out)
    if persona.persona == "none":
        raise ToolkitError("the interventions compare a persona with no persona: choose a persona")
    model, tokenizer = load_model(model_name)
    n_layers = model.cfg.n_layers
    layers = sorted(set(spread_layers(n_layers) if layers is None else layers))
    for layer in layers + ([steer_layer] if steer_layer is not None else []):
        if not 0 <= layer < n_layers:
            raise ToolkitError(f"layer {layer} does not exist: the model has {n_layers} blocks (0..{n_layers - 1})")
    items = causal.paired_items(tokenizer, TASKS["capitals"].load_items(n_items, seed), persona, seed)
    _say(f"{len(items)} capital-city items, persona {persona.label}, {len(layers)} layers")
    with_persona, without = causal.baseline_margins(model, tokenizer, items, batch_size)
    effect = with_persona - without
    summary = {"model": model.cfg.model_name, "persona": persona.label, "n": len(items),
               "margin_without": float(without.mean()), "margin_with": float(with_persona.mean()),
               "effect": causal.fraction(effect, np.ones_like(effect)).to_dict()}

    sweep = causal.patching_sweep(model, tokenizer, items, layers, batch_size=batch_size, progress=progress)
    patching = []
    for (layer, group), patched in sweep.items():
        estimate = causal.fraction(patched - with_persona, without - with_persona, seed=seed)
        patching.append({"layer": layer, "group": group, **estimate.columns("fraction", prefix="", n=True),
                         "margin": float(patched.mean())})
    write_table(out / "patching.csv", patching)
    best = decisive_patch(patching)
    summary["best_patch"] = best

    steer_layer = answer_position_layer(patching) if steer_layer is None else steer_layer
    direction, plain_mean = causal.persona_direction(model, tokenizer, items, steer_layer, batch_size)
    sample = items[: min(len(items), 16)]
    norms = residual_norms(model, right_pad([p.source for p in sample], tokenizer.pad_token_id), [len(p.source) for p in sample])
    natural = float(direction.norm()) / norms[steer_layer]  # the persona's own shift, in residual-norm units
    generator = torch.Generator().manual_seed(seed)
    random_direction = torch.randn(direction.shape, generator=generator).to(direction.device)
    steering = []
    for multiple in multiples:
        for name, vector in (("persona direction", direction), ("random direction", random_direction)):
            margins = causal.steering_margins(model, tokenizer, items, vector, steer_layer, multiple * natural, norms, batch_size) \
                if multiple else without
            estimate = causal.fraction(margins - without, with_persona - without, seed=seed)
            steering.append({"direction": name, "multiple": multiple, "layer": steer_layer, "scale": multiple * natural,
                             **estimate.columns("fraction", prefix="", n=True)})
    write_table(out / "steering.csv", steering)

    ablation = []
    for name, vector in (("persona direction", direction), ("random direction", random_direction)):
        unit = vector / vector.norm()
        ablated = causal.ablation_margins(model, tokenizer, items, vector, steer_layer, float(plain_mean @ unit), batch_size)
        estimate = causal.fraction(ablated - with_persona, without - with_persona, seed=seed)
        ablation.append({"direction": name, "layer": steer_layer, **estimate.columns("fraction", prefix="", n=True)})
    write_table(out / "ablation.csv", ablation)

    attention = _attention_rows(causal.persona_attention(model, tokenizer, items, batch_size), items, without - with_persona, seed)
    write_table(out / "attention.csv", attention)
    summary["attention"] = _attention_summary(attention)

    refusal = []
    if refusal_items:
        refusal = _refusal_under_steering(model, tokenizer, persona, refusal_items, direction, random_direction, steer_layer,
                                          natural, norms, refusal_multiples, seed, batch_size, progress)
        write_table(out / "refusal.csv", refusal)
    summary["refusal"] = refusal

    curves = causal.lens_curves(model, tokenizer, items, batch_size)
    write_text(out / "logit_lens.json", json.dumps({k: v.tolist() for k, v in curves.items()}) + "\n")
    summary.update(steering_layer=steer_layer, natural_scale=natural, steering=steering, ablation=ablation)
    figures = _figures(out, patching, steering, ablation, curves, attention, refusal)
    _report(out, summary, patching, steering, ablation, curves, figures)
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return InterventionSummary.from_record(out, summary)


def decisive_patch(rows: Sequence[dict]) -> dict:
    """The earliest (block, position group) whose patch recovers a majority of the effect (CI lower bound >= 0.5):
    where the damage has been written into few positions. Late blocks recover everything trivially (the final
    token's residual is the output), so the maximum says little. Falls back to the largest recovery."""
    decisive = [r for r in rows if r["low"] >= 0.5]
    if decisive:
        return min(decisive, key=lambda r: (r["layer"], GROUP_ORDER.index(r["group"]) if r["group"] in GROUP_ORDER else 0))
    return max(rows, key=lambda r: r["fraction"])


GROUP_ORDER = ("final", "after_query", "query")


def answer_position_layer(rows: Sequence[dict]) -> int:
    """The earliest block where patching the answer position alone recovers a majority of the
    effect: from there on the damage is in that residual, where steering and ablation act."""
    final = [r for r in rows if r["group"] == "final" and r["low"] >= 0.5]
    return min(r["layer"] for r in final) if final else decisive_patch(rows)["layer"]


def spread_layers(n_layers: int, count: int = 8) -> list[int]:
    """About ``count`` blocks from the first to the last, for a patching sweep."""
    count = min(count, n_layers)
    return sorted({round(i * (n_layers - 1) / max(1, count - 1)) for i in range(count)})


def _attention_rows(masses: np.ndarray, items, harm: np.ndarray, seed: int) -> list[dict]:
    """Per block: mean attention from the answer position to the persona, the share of the prompt the persona takes
    (what uniform attention would give), and how well the attention predicts each item's harm (margin lost to the
    persona), next to the persona's share alone."""
    share = np.array([len(p.persona_positions) / len(p.target) for p in items])
    by_share = bootstrap_correlation(share, harm, seed=seed)
    rows = []
    for layer, mass in enumerate(masses):
        r = bootstrap_correlation(mass, harm, seed=seed)
        rho = bootstrap_correlation(mass, harm, method="spearman", seed=seed)
        rows.append({"layer": layer, "attention": float(mass.mean()), "uniform_share": float(share.mean()),
                     **r.columns("pearson", prefix=""), "spearman": rho.mean,
                     **by_share.columns("share_pearson", prefix="share_"), "n": r.n})
    return rows


def _attention_summary(rows: list[dict]) -> dict:
    finite = [r for r in rows if np.isfinite(r["pearson"])]
    strongest = max(finite, key=lambda r: abs(r["pearson"])) if finite else None
    return {"mean_attention": float(np.mean([r["attention"] for r in rows])), "uniform_share": rows[0]["uniform_share"],
            "strongest": strongest, "share": {k: rows[0][k] for k in ("share_pearson", "share_low", "share_high")}}


def _refusal_under_steering(model, tokenizer, persona: Condition, n_items: int, direction, random_direction, layer: int,
                            natural: float, norms, multiples, seed: int, batch_size: int, progress: bool) -> list[dict]:
    """Keyword refusal on HarmBench prompts: no persona, the persona prompt, and no-persona runs
    steered (at every position, prompt and generated) by the persona direction or a random one."""
    task = TASKS["harmbench"]
    items = task.load_items(n_items, seed)
    plain = task.render(tokenizer, items, Condition("none", base_system=persona.base_system), seed=seed)

    def refusals(prompts) -> np.ndarray:
        records = task.measure(model, tokenizer, items, prompts, max_new_tokens=REFUSAL_TOKENS, batch_size=batch_size, seed=seed)
        return np.array([task.item_metrics(item, record)["refusal_rate"] for item, record in zip(items, records)])

    runs = [("no persona", 0.0, None), ("persona prompt", 0.0, None)]
    runs += [(name, multiple, vector) for multiple in multiples if multiple
             for name, vector in (("persona direction", direction), ("random direction", random_direction))]
    baseline = None
    rows = []
    for name, multiple, vector in tqdm(runs, desc="refusal", unit="condition", disable=not progress):
        if name == "persona prompt":
            values = refusals(task.render(tokenizer, items, persona, seed=seed))
        elif vector is None:
            values = baseline = refusals(plain)
        else:
            with AddDirection(model, {layer: vector}, scale=multiple * natural, norms=norms):
                values = refusals(plain)
        rate, change = bootstrap_mean(values, seed=seed), paired_difference(values, baseline, seed=seed)
        rows.append({"condition": name, "multiple": multiple, **rate.columns("rate", prefix=""), **change.columns("change"),
                     "n": rate.n})
    return rows


REFUSAL_TOKENS = 32


def _figures(out: Path, patching, steering, ablation, curves, attention, refusal) -> list[str]:
    written = []
    panels = [("patching_heatmap", plots.patching_heatmap(patching)),
              ("steering_dose_response", plots.steering_dose_response(steering)),
              ("ablation", plots.ablation_bars(ablation)),
              ("logit_lens", plots.logit_lens_curves(curves)),
              ("attention", plots.attention_to_persona(attention))]
    if refusal:
        panels.append(("refusal_steering", plots.refusal_bars(refusal)))
    for name, figure in panels:
        save_figure(figure, out / "figures" / f"{name}.png")
        written.append(f"figures/{name}.png")
    return written


def _ci(row) -> str:
    return Estimate.from_columns(row, "fraction", prefix="").format(signed=True)


def _report(out: Path, summary, patching, steering, ablation, curves, figures) -> None:
    effect = summary["effect"]
    best = summary["best_patch"]
    one = next((r for r in steering if r["direction"] == "persona direction" and r["multiple"] == 1.0), None)
    control = next((r for r in steering if r["direction"] == "random direction" and r["multiple"] == 1.0), None)
    def lens_layer(name: str) -> int | None:
        """First block after which the correct first token ranks first for at least half the items."""
        top = (curves[f"{name}_rank"] == 0).mean(axis=1) >= 0.5
        return int(np.argmax(top)) if top.any() else None

    lines = [
        f"# Why personas hurt knowledge retrieval: {summary['model']}", "",
        f"Persona condition `{summary['persona']}` vs no persona on {summary['n']} capital-city items. Metric: margin "
        "of the correct option's first token over the best wrong one at the answer position. Fractions are ratios "
        "of means with bootstrap 95% CIs.", "",
        f"- The persona's effect on the margin: {effect['mean']:+.2f} nats [{effect['low']:+.2f}, {effect['high']:+.2f}] "
        f"(without {summary['margin_without']:.2f}, with {summary['margin_with']:.2f})."
        + (" The CI includes 0: there is little effect to explain, so the fractions below are unstable." if effect["low"] <= 0 <= effect["high"] else ""),
        f"- Patching: the earliest patch that recovers a majority of the effect (CI lower bound >= 0.5) is after block "
        f"{best['layer']}, {best['group']} tokens: {_ci(best)} (the largest recovery is not the headline: patching late "
        "blocks recovers everything trivially, since the final token's residual there is the output).",
    ]
    if one and control:
        lines.append(f"- Steering no-persona runs at the answer position with the persona direction (its mean shift there, "
                     f"after block {one['layer']}: the earliest block where patching that position alone recovers a majority; its own size, "
                     f"{summary['natural_scale']:.3f} x the residual norm) reproduces {_ci(one)} of the effect; a random "
                     f"direction of the same size {_ci(control)}.")
    for row in ablation:
        lines.append(f"- Removing the persona run's shift along the {row['direction']} after block {row['layer']} at the answer "
                     f"position (mean ablation: its projection set to the no-persona mean) restores {_ci(row)} of the effect.")
    attention = summary.get("attention")
    if attention and attention["strongest"]:
        strongest, share = attention["strongest"], attention["share"]
        lines.append(f"- Attention: the answer position gives the persona {attention['mean_attention']:.2f} of its attention "
                     f"on average over blocks (the persona is {attention['uniform_share']:.2f} of the prompt's tokens). "
                     f"Where attention best predicts the margin an item loses (block {strongest['layer']}), Pearson r = "
                     f"{Estimate.from_columns(strongest, 'pearson', prefix='').format(signed=True)}; the persona's share "
                     f"of the tokens alone gives r = {Estimate.from_columns(share, 'share_pearson', prefix='share_').format(signed=True)}"
                     " (the strongest of many blocks is picked after the fact: read it as exploratory).")
    for row in summary.get("refusal", []):
        if row["condition"] != "no persona":
            size = f" x{row['multiple']:g}" if row["multiple"] else ""
            rate, change = Estimate.from_columns(row, "rate", prefix=""), Estimate.from_columns(row, "change")
            lines.append(f"- Refusal on HarmBench, {row['condition']}{size}: {rate.format()} "
                         f"(change vs no persona {change.format(signed=True)}, n={row['n']}).")
    lines.append(f"- Logit lens: the correct first token ranks first for half the items from block {lens_layer('none')} "
                 f"without the persona and from block {lens_layer('persona')} with it (None: never).")
    lines += ["", "What this supports and what it does not: patching localises where the no-persona computation must "
              "be restored to undo the damage (causal, for these items); steering and ablation test whether one "
              "direction carries it; none of this shows the persona is read by a particular attention head.", "",
              "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    write_text(out / "report.md", "\n".join(lines) + "\n")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
