"""``prism train``: the gate, the adapters, the steering vector and the baseline routers.

In a PRISM working directory (``prism.workdir``) that ``prism bootstrap`` filled:

- ``gate/``: the read-out sweep (blocks 0..k x last/mean, held-out AUC with controls), the
  chosen gate (``gate.safetensors``), its held-out report and the MLP gate's for comparison.
  Labels: the bootstrap's "persona wins" (the paper) or intents (knowledge -> base model;
  generation and harmful requests -> persona path), held out by persona or by subject/category.
- ``adapters/prism``: LoRA distilled on the label-1 samples, blocks after the gate's (gated);
  ``adapters/sft``: the same on every sample (ungated, the paper's SFT baseline). peft format.
- ``steering.safetensors``: the persona's mean shift of the residual (persona prompt minus
  plain prompt, last token) over the label-1 samples, for probe-routed steering.
- ``baselines/``: the MiniLM + logistic router (same labels, same split) and the
  self-classification router's calibrated threshold.
- ``train.json``: routing quality on the held-out side (AUCs with CIs), label noise, losses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from figures import prism as plots
from prism.adapters import save_adapter
from prism.baselines import EmbeddingRouter, SelfClassifyRouter, balanced_threshold
from prism.distill import DistillConfig, distill
from prism.gate import (
    CHOSEN_FROM,
    READ_POSITIONS,
    LabelledPrompts,
    choose,
    fit_gate,
    gate_features,
    split_for,
    sweep,
    template_tokens,
)
from prism.samples import Sample, load_samples
from prism.workdir import PrismDirectory
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import save_figure, save_tensors, write_json, write_table
from probes.core.prompts import Condition, encode, render
from probes.core.stats import bootstrap_auc
from probes.intents import intent_queries
from probes.readouts import final_residuals

LABEL_SOURCES = ("bootstrap", "intents")
GATED, UNGATED = "prism", "sft"


MIN_PER_ROUTE = 4


def labelled_prompts(source: str, samples: Sequence[Sample], *, verdict: str = "both", per_intent: int = 64,
                     extra: Sequence[str] = (), seed: int = 0, exclude: set[str] = frozenset()) -> LabelledPrompts:
    """Gate training data: bootstrap verdicts under ``verdict`` (group = persona) or intents
    (group = subject or category; ``extra`` files add queries whose category is their intent,
    e.g. more "knowledge"), leaving out any query in ``exclude`` (the evaluation's items)."""
    if source == "bootstrap":
        kept = [s for s in samples if s.query not in exclude]
        return LabelledPrompts([s.query for s in kept], np.array([s.verdict(verdict) for s in kept]),
                               [s.persona for s in kept], f"bootstrap ({verdict})")
    if source == "intents":
        queries = [q for q in intent_queries(per_intent, extra=extra, seed=seed) if q.item.prompt not in exclude]
        return LabelledPrompts([q.item.prompt for q in queries], np.array([int(q.intent != "knowledge") for q in queries]),
                               [q.group for q in queries], source)
    raise ToolkitError(f"unknown label source {source!r}: use one of {', '.join(LABEL_SOURCES)}")


def run_training(out: str | Path, model, tokenizer, *, labels: str = "bootstrap", verdict: str = "both",
                 gate_kind: str = "logistic",
                 max_block: int = 3, layer: int | None = None, position: str | None = None,
                 distill_config: DistillConfig = DistillConfig(), per_intent: int = 64, extra: Sequence[str] = (),
                 steering_layer: int | None = None,
                 exclude: set[str] = frozenset(), seed: int = 0, progress: bool = True) -> dict:
    """Train the gate, the adapters, the steering vector and the baseline routers.

    Args:
        out: the PRISM working directory (``prism bootstrap`` wrote its samples there).
        model, tokenizer: the bridged model and its tokenizer.
        labels: ``bootstrap`` (the self-verdicts) or ``intents`` (knowledge -> base path).
        verdict: the bootstrap verdict rule (``both`` orders, or ``debiased``).
        gate_kind: ``logistic`` or ``mlp``.
        max_block: the last block the read-out sweep tries (0..n_layers-2: the adapter needs blocks after it).
        layer, position: fix the gate's block or read position instead of choosing them.
        distill_config: LoRA distillation settings (its ``first_block`` is replaced by the block after the gate's).
        per_intent, extra: intent-labelled queries per intent, and files of more of them.
        steering_layer: the steering vector's block (default: after the gate, mid-model).
        exclude: queries left out of the gate's data (the comparison's items).
        seed: split, fitting and sampling seed.
        progress: show progress bars.

    Returns:
        the training record written to ``train.json``: the gate and its held-out report, the sweep's best
        read-out, routing quality (AUCs with CIs), bootstrap label statistics, adapters and steering vector.

    Raises:
        ToolkitError: no bootstrap samples, a ``max_block``, ``layer``, ``position``, label source, verdict rule,
            gate kind or steering block out of range or unknown, ``extra`` without intent labels, fewer than
            ``MIN_PER_ROUTE`` queries on either route, no sample on the persona path, or a missing sentence encoder.
    """
    work = PrismDirectory(out)
    samples = load_samples(work)
    n_layers = model.cfg.n_layers
    if not 0 <= max_block < n_layers - 1:
        raise ToolkitError(f"the gate must read a block in 0..{n_layers - 2} (the adapter needs blocks after it), got {max_block}")
    if layer is not None and not 0 <= layer <= max_block:
        raise ToolkitError(f"--layer {layer} is outside the swept blocks 0..{max_block}")
    if position is not None and position not in READ_POSITIONS:
        raise ToolkitError(f"unknown read position {position!r}: use one of {', '.join(READ_POSITIONS)}")
    if extra and labels != "intents":
        raise ToolkitError("--extra adds intent-labelled queries: use it with --labels intents")
    labelled = labelled_prompts(labels, samples, verdict=verdict, per_intent=per_intent, extra=extra, seed=seed,
                                exclude=exclude)
    counts = np.bincount(labelled.labels, minlength=2)
    if counts.min() < MIN_PER_ROUTE:
        agreement = np.mean([s.persona_first_wins == s.persona_second_wins for s in samples])
        raise ToolkitError(f"{labelled.source} labels give {counts[1]} persona-path and {counts[0]} base-path queries; the gate "
                           f"needs {MIN_PER_ROUTE}+ of each (the self-verdicts agree across orders on {agreement:.0%} of queries): "
                           "use --verdict debiased, --labels intents, or bootstrap more queries")
    split, split_kind = split_for(labelled, seed)
    _say(f"gate data: {len(labelled.queries)} {labels}-labelled queries ({labelled.labels.mean():.0%} persona path); "
         f"split: {split_kind}, {len(split.train)} train / {len(split.test)} held out")

    layers = list(range(max_block + 1))
    features = {}
    for read in READ_POSITIONS:
        for block, x in gate_features(model, tokenizer, labelled.queries, layers, read, work.gate_features,
                                      progress=progress).items():
            features[(block, read)] = x
    lengths = [len(encode(tokenizer, render(tokenizer, query, Condition("none")))) for query in labelled.queries]
    rows = sweep(features, labelled, split, seed=seed, lengths=lengths, progress=progress)
    write_table(work.gate_sweep, rows)
    chosen = choose([r for r in rows if r["layer"] >= 0 and (layer is None or r["layer"] == layer)
                     and (r["position"] == position if position else r["position"] in CHOSEN_FROM)])
    x = features[(chosen["layer"], chosen["position"])]
    metadata = {"model": model.cfg.model_name, **precision(model), "labels": labels, "split": split_kind}
    gate, gate_report = fit_gate(x, labelled.labels, split, layer=chosen["layer"], position=chosen["position"],
                                 kind=gate_kind, seed=seed, metadata=metadata, template=template_tokens(tokenizer))
    other_kind = "mlp" if gate_kind == "logistic" else "logistic"
    _, other_report = fit_gate(x, labelled.labels, split, layer=chosen["layer"], position=chosen["position"],
                               kind=other_kind, seed=seed)
    gate.save(work.gate)
    _say(f"gate: block {gate.layer}, {gate.position} token(s), held-out AUC {gate_report['auc']:.2f}, "
         f"threshold {gate.threshold:.3f} routes {gate_report['route_rate']:.0%} of held-out queries")

    quality = _routing_quality(model, tokenizer, gate, x, labelled, split, work, seed)

    save_figure(plots.gate_sweep(rows, quality), work.gate_sweep_figure)
    if labels == "bootstrap":
        routes = np.array([s.verdict(verdict) for s in samples])
    else:  # the samples the intent gate sends to the persona path are the ones to distil
        sample_x = gate_features(model, tokenizer, [s.query for s in samples], [gate.layer], gate.position,
                                 work.sample_features, progress=progress)[gate.layer]
        routes = gate.route(sample_x).astype(int)
    adapters = _adapters(model, tokenizer, samples, routes, gate.layer, distill_config, work, progress)
    steering_layer = max(gate.layer + 1, n_layers // 2) if steering_layer is None else steering_layer
    if not gate.layer < steering_layer < n_layers:
        raise ToolkitError(f"the steering block must lie after the gate's block {gate.layer} and below {n_layers}")
    persona_path = [s for s, route in zip(samples, routes) if route]
    vector = persona_shift(model, tokenizer, persona_path, steering_layer, distill_config.persona_length)
    save_tensors(work.steering, {"vector": vector},
                 {"kind": "persona-steering", "layer": steering_layer, "model": model.cfg.model_name, "n": len(persona_path)})
    labels_bootstrap = np.array([s.label for s in samples])
    summary = {
        "labels": labelled.source, "split": split_kind, "n_gate_queries": len(labelled.queries),
        "gate_label_share": float(labelled.labels.mean()),
        "gate": {"layer": gate.layer, "position": gate.position, "kind": gate.kind, "threshold": gate.threshold,
                 "parameters": gate.n_parameters, **gate_report},
        "other_kind": {"kind": other_kind, **other_report},
        "sweep_best": chosen, "length_only": next(r for r in rows if r["position"] == "length only"),
        "routing_quality": quality,
        "bootstrap_labels": {"n": len(samples), "persona_wins": float(labels_bootstrap.mean()),
                             "debiased_persona_wins": float(np.mean([s.debiased_label for s in samples])),
                             "distilled": int(routes.sum()),
                             "order_agreement": float(np.mean([s.persona_first_wins == s.persona_second_wins for s in samples]))},
        "adapters": adapters, "steering": {"layer": steering_layer, "norm": float(vector.norm())},
    }
    write_json(work.train_summary, summary)
    return summary


def persona_shift(model, tokenizer, samples: Sequence[Sample], layer: int, length: str = "min",
                  batch_size: int = 8) -> torch.Tensor:
    """Mean over samples of (persona prompt - plain prompt) residual after ``layer`` at the last token."""
    shifts = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        runs = []
        for condition in (lambda s: Condition(s.persona, length, "system"), lambda s: Condition("none")):
            ids = [encode(tokenizer, render(tokenizer, s.query, condition(s))) for s in chunk]
            runs.append(final_residuals(model, ids, layer, tokenizer.pad_token_id))
        shifts.append(runs[0] - runs[1])
    return torch.cat(shifts).mean(dim=0)


def _routing_quality(model, tokenizer, gate, x, labelled: LabelledPrompts, split, work: PrismDirectory, seed: int) -> dict:
    """Held-out AUC with 95% CIs: the in-model gate, the MiniLM router and self-classification,
    all on the same labels and split; their calibrated thresholds are saved for routing."""
    train, test = split.train, split.test
    y_test = labelled.labels[test]
    queries = np.array(labelled.queries, dtype=object)
    embedding = EmbeddingRouter().fit(list(queries[train]), labelled.labels[train], seed=seed)
    embedding_scores = embedding.scores(list(queries[test]))
    embedding.threshold = balanced_threshold(embedding_scores, y_test)
    embedding.save(work.embedding_router)
    asker = SelfClassifyRouter(model, tokenizer)
    asked = asker.scores(list(queries[test]))
    threshold = balanced_threshold(asked, y_test)
    write_json(work.self_classify, {"threshold": threshold, "labels": labelled.source})
    return {
        "n_test": int(len(test)),
        "gate": _auc_with_ci(y_test, gate.probability(x[test]), seed),
        "embedding": {**_auc_with_ci(y_test, embedding_scores, seed), "parameters": embedding.encoder.n_parameters},
        "self_classify": _auc_with_ci(y_test, asked, seed),
    }


def _auc_with_ci(y: np.ndarray, scores: np.ndarray, seed: int, n_resamples: int = 1000) -> dict:
    return bootstrap_auc(y == 1, scores, n_resamples=n_resamples, seed=seed).columns("auc", prefix="", n=True)


def _adapters(model, tokenizer, samples: Sequence[Sample], routes: np.ndarray, gate_layer: int, config: DistillConfig,
              work: PrismDirectory, progress: bool) -> dict:
    """The gated adapter on the persona-path samples, the ungated one on all of them."""
    from dataclasses import replace

    config = replace(config, first_block=gate_layer + 1)
    winners = [s for s, route in zip(samples, routes) if route]
    if not winners:
        raise ToolkitError("no bootstrapped query is on the persona path: nothing to distil into the gated adapter "
                           "(bootstrap more queries per persona, or use other labels)")
    report = {}
    for name, chosen in ((GATED, winners), (UNGATED, list(samples))):
        _say(f"distilling adapter {name!r} on {len(chosen)} samples (blocks {config.first_block}..{model.cfg.n_layers - 1})")
        info = distill(model, tokenizer, chosen, name, config, progress=progress)
        save_adapter(model, name, work.adapter(name), info["peft_config"], info)
        per_epoch = max(1, info["steps"] // config.epochs)
        report[name] = {"n_samples": info["n_samples"], "steps": info["steps"],
                        "first_epoch_loss": float(np.mean(info["losses"][:per_epoch])),
                        "last_epoch_loss": float(np.mean(info["losses"][-per_epoch:]))}
    return report


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
