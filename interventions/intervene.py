"""``prism intervene``: causal experiments on knowledge items (``run_interventions``; metric in
``interventions.causal``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interventions import causal
from interventions.hooks import AddDirection
from interventions.intervene_report import write_figures, write_report
from interventions.measure.tasks import TASKS
from interventions.summary import InterventionSummary
from probes.core.batching import right_pad
from probes.core.correlation import bootstrap_correlation
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import write_record, write_table, write_text
from probes.core.personas import Persona, get_persona
from probes.core.prompts import EXPERT_PERSONA, RANDOM_PERSONA, Condition
from probes.core.stats import Estimate, bootstrap_mean, paired_difference
from probes.readouts import residual_norms

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MULTIPLES = (0.0, 0.5, 1.0, 2.0, 4.0)


def run_interventions(
    out: str | Path,
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    *,
    persona: Condition = Condition("random", "long", "system"),
    personas: Mapping[str, Persona] | None = None,
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
        out: the output directory (CSV + JSON tables, ``logit_lens.json``, ``figures/``, ``report.md``,
            ``summary.json``).
        model, tokenizer: the bridged model and its tokenizer (``load_model``).
        persona: the persona condition, not ``"none"`` (default: a long persona in the system prompt, random per item,
            as in the study's strongest knowledge effect).
        personas: the persona library ``persona`` names a persona of, and the random one is drawn from (default: the
            built-in personas; ``persona_library`` adds a user's file).
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
        ToolkitError: a ``"none"`` persona, one not in ``personas``, or a layer the model does not have.
    """
    out = Path(out)
    check_persona(persona, personas)
    layers = _checked_layers(layers, steer_layer, model.cfg.n_layers)
    items = causal.paired_items(tokenizer, TASKS["capitals"].load_items(n_items, seed), persona, seed, personas)
    log.info(f"{len(items)} capital-city items, persona {persona.label}, {len(layers)} layers")
    paired = _Paired(
        model, tokenizer, items, *causal.baseline_margins(model, tokenizer, items, batch_size), seed, batch_size
    )
    with_persona, without = paired.with_persona, paired.without
    effect = with_persona - without
    summary = {
        "model": model.cfg.model_name,
        **precision(model),
        "persona": persona.label,
        "n": len(items),
        "margin_without": float(without.mean()),
        "margin_with": float(with_persona.mean()),
        "effect": causal.fraction(effect, np.ones_like(effect)).to_dict(),
    }

    patching = _patching(paired, layers, progress)
    write_table(out / "patching.csv", patching)
    summary["best_patch"] = decisive_patch(patching)

    steer_layer = answer_position_layer(patching) if steer_layer is None else steer_layer
    direction, plain_mean = causal.persona_direction(model, tokenizer, items, steer_layer, batch_size)
    sample = items[: min(len(items), 16)]
    norms = residual_norms(
        model, right_pad([p.source for p in sample], tokenizer.pad_token_id), [len(p.source) for p in sample]
    )
    natural = float(direction.norm()) / norms[steer_layer]  # the persona's own shift, in residual-norm units
    generator = torch.Generator().manual_seed(seed)
    random_direction = torch.randn(direction.shape, generator=generator).to(direction.device)
    directions = {"persona direction": direction, "random direction": random_direction}
    steering = _steering(paired, directions, steer_layer, natural, norms, multiples)
    write_table(out / "steering.csv", steering)
    ablation = _ablation(paired, directions, steer_layer, plain_mean)
    write_table(out / "ablation.csv", ablation)

    attention = _attention_rows(
        causal.persona_attention(model, tokenizer, items, batch_size), items, without - with_persona, seed
    )
    write_table(out / "attention.csv", attention)
    summary["attention"] = _attention_summary(attention)

    refusal = []
    if refusal_items:
        refusal = _refusal_under_steering(
            model,
            tokenizer,
            persona,
            personas,
            refusal_items,
            direction,
            random_direction,
            steer_layer,
            natural,
            norms,
            refusal_multiples,
            seed,
            batch_size,
            progress,
        )
        write_table(out / "refusal.csv", refusal)
    summary["refusal"] = refusal

    curves = causal.lens_curves(model, tokenizer, items, batch_size)
    write_text(out / "logit_lens.json", json.dumps({k: v.tolist() for k, v in curves.items()}) + "\n")
    summary.update(steering_layer=steer_layer, natural_scale=natural, steering=steering, ablation=ablation)
    figures = write_figures(out, patching, steering, ablation, curves, attention, refusal)
    write_report(out, summary, patching, steering, ablation, curves, figures)
    write_record(out / "summary.json", summary)
    return InterventionSummary.from_record(out, summary)


@dataclass(frozen=True)
class _Paired:
    """The causal tests' items, each with and without the persona, and their answer margins (nats) both ways."""

    model: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    items: list
    with_persona: np.ndarray
    without: np.ndarray
    seed: int
    batch_size: int

    def recovered(self, margins: np.ndarray, start: np.ndarray, end: np.ndarray) -> Estimate:
        """The share of the way from ``start`` to ``end`` that ``margins`` went, item by item (``causal.fraction``)."""
        return causal.fraction(margins - start, end - start, seed=self.seed)


def _patching(paired: _Paired, layers: Sequence[int], progress: bool) -> list[dict]:
    """Per (block, position group): the share of the persona's effect that patching in the plain run's activations
    undoes."""
    sweep = causal.patching_sweep(
        paired.model, paired.tokenizer, paired.items, layers, batch_size=paired.batch_size, progress=progress
    )
    rows = []
    for (layer, group), patched in sweep.items():
        estimate = paired.recovered(patched, paired.with_persona, paired.without)
        rows.append(
            {
                "layer": layer,
                "group": group,
                **estimate.columns("fraction", prefix="", n=True),
                "margin": float(patched.mean()),
            }
        )
    return rows


def _steering(
    paired: _Paired,
    directions: Mapping[str, torch.Tensor],
    layer: int,
    natural: float,
    norms: Sequence[float],
    multiples: Sequence[float],
) -> list[dict]:
    """Per multiple of the persona's own shift and direction: the share of the persona's effect that adding the
    direction to the plain run reproduces (0: the plain margins)."""
    rows = []
    for multiple in multiples:
        for name, vector in directions.items():
            margins = (
                causal.steering_margins(
                    paired.model,
                    paired.tokenizer,
                    paired.items,
                    vector,
                    layer,
                    multiple * natural,
                    norms,
                    paired.batch_size,
                )
                if multiple
                else paired.without
            )
            estimate = paired.recovered(margins, paired.without, paired.with_persona)
            rows.append(
                {
                    "direction": name,
                    "multiple": multiple,
                    "layer": layer,
                    "scale": multiple * natural,
                    **estimate.columns("fraction", prefix="", n=True),
                }
            )
    return rows


def _ablation(
    paired: _Paired, directions: Mapping[str, torch.Tensor], layer: int, plain_mean: torch.Tensor
) -> list[dict]:
    """Per direction: the share of the persona's effect undone by setting the persona run's component along it to the
    plain runs' mean."""
    rows = []
    for name, vector in directions.items():
        unit = vector / vector.norm()
        ablated = causal.ablation_margins(
            paired.model, paired.tokenizer, paired.items, vector, layer, float(plain_mean @ unit), paired.batch_size
        )
        estimate = paired.recovered(ablated, paired.with_persona, paired.without)
        rows.append({"direction": name, "layer": layer, **estimate.columns("fraction", prefix="", n=True)})
    return rows


def _checked_layers(layers: Sequence[int] | None, steer_layer: int | None, n_layers: int) -> list[int]:
    """The patching sweep's blocks (default: ``spread_layers``), sorted; a block the model lacks is refused."""
    chosen = sorted(set(spread_layers(n_layers) if layers is None else layers))
    for layer in chosen + ([steer_layer] if steer_layer is not None else []):
        if not 0 <= layer < n_layers:
            raise ToolkitError(f"layer {layer} does not exist: the model has {n_layers} blocks (0..{n_layers - 1})")
    return chosen


def check_persona(persona: Condition, personas: Mapping[str, Persona] | None = None) -> None:
    """One line when ``persona`` cannot be compared with no persona: ``"none"``, or a name or length the library lacks
    (the shell checks it before the model loads).

    Raises:
        ToolkitError: what is wrong with the persona.
    """
    if persona.persona == "none":
        raise ToolkitError("the interventions compare a persona with no persona: choose a persona")
    if persona.persona not in (RANDOM_PERSONA, EXPERT_PERSONA):
        get_persona(persona.persona, personas).text(persona.length)


def decisive_patch(rows: Sequence[dict]) -> dict:
    """The earliest (block, position group) whose patch recovers a majority of the effect (CI lower bound >= 0.5):
    where the damage has been written into few positions. Late blocks recover everything trivially (the final
    token's residual is the output), so the maximum says little. Falls back to the largest recovery."""
    decisive = [r for r in rows if r["low"] >= 0.5]
    if decisive:
        return min(
            decisive, key=lambda r: (r["layer"], GROUP_ORDER.index(r["group"]) if r["group"] in GROUP_ORDER else 0)
        )
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
        rows.append(
            {
                "layer": layer,
                "attention": float(mass.mean()),
                "uniform_share": float(share.mean()),
                **r.columns("pearson", prefix=""),
                "spearman": rho.mean,
                **by_share.columns("share_pearson", prefix="share_"),
                "n": r.n,
            }
        )
    return rows


def _attention_summary(rows: list[dict]) -> dict:
    finite = [r for r in rows if np.isfinite(r["pearson"])]
    strongest = max(finite, key=lambda r: abs(r["pearson"])) if finite else None
    return {
        "mean_attention": float(np.mean([r["attention"] for r in rows])),
        "uniform_share": rows[0]["uniform_share"],
        "strongest": strongest,
        "share": {k: v for k, v in rows[0].items() if k.startswith("share_")},
    }


def _refusal_under_steering(
    model: TransformerBridge,
    tokenizer,
    persona: Condition,
    personas: Mapping[str, Persona] | None,
    n_items: int,
    direction,
    random_direction,
    layer: int,
    natural: float,
    norms,
    multiples,
    seed: int,
    batch_size: int,
    progress: bool,
) -> list[dict]:
    """Keyword refusal on HarmBench prompts: no persona, the persona prompt (its persona from the library
    ``personas``), and no-persona runs steered (at every position, prompt and generated) by the persona direction or
    a random one."""
    task = TASKS["harmbench"]
    items = task.load_items(n_items, seed)
    plain = task.render(tokenizer, items, Condition("none", base_system=persona.base_system), seed=seed)

    def refusals(prompts) -> np.ndarray:
        records = task.measure(
            model, tokenizer, items, prompts, max_new_tokens=REFUSAL_TOKENS, batch_size=batch_size, seed=seed
        )
        return np.array([task.item_metrics(item, record)["refusal_rate"] for item, record in zip(items, records)])

    runs = [("no persona", 0.0, None), ("persona prompt", 0.0, None)]
    runs += [
        (name, multiple, vector)
        for multiple in multiples
        if multiple
        for name, vector in (("persona direction", direction), ("random direction", random_direction))
    ]
    baseline = None
    rows = []
    for name, multiple, vector in tqdm(runs, desc="refusal", unit="condition", disable=not progress):
        if name == "persona prompt":
            values = refusals(task.render(tokenizer, items, persona, personas=personas, seed=seed))
        elif vector is None:
            values = baseline = refusals(plain)
        else:
            with AddDirection(model, {layer: vector}, scale=multiple * natural, norms=norms):
                values = refusals(plain)
        rate, change = bootstrap_mean(values, seed=seed), paired_difference(values, baseline, seed=seed)
        rows.append(
            {
                "condition": name,
                "multiple": multiple,
                **rate.columns("rate", prefix=""),
                **change.columns("change"),
                "n": rate.n,
            }
        )
    return rows


REFUSAL_TOKENS = 32
