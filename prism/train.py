"""``prism train``: the gate, the adapters, the steering vector and the baseline routers.

In a PRISM working directory (``prism.workdir``) that ``prism bootstrap`` filled:

- ``gate/``: the read-out sweep (blocks 0..k x last/mean/query, AUC on held-out groups with
  the prompt-length-only, shuffled-label and random-direction controls), the candidates
  evaluated leave-one-source-out (``candidates.csv``; ``prism.unseen``), the chosen gate
  (``gate.safetensors``: read-out, kind and shrinkage that route unseen sources best,
  refitted on every source, threshold calibrated on out-of-source scores), and the headline
  table: per unseen source, AUC and route rate of the gate, the baseline routers and the
  controls (``sources.csv``, ``sources.png``). Labels: the bootstrap's "persona wins" (the
  paper; source = persona) or intents (knowledge -> base model; generation and harmful requests
  -> persona path; ``probes.intents``: many sources per intent, the bootstrapped queries one
  more generation source).
- ``adapters/prism``: LoRA distilled on the label-1 samples, blocks after the gate's (gated);
  ``adapters/sft``: the same on every sample (ungated, the paper's SFT baseline). peft format.
  A quarter of the label-1 samples is held out of both, and each adapter's fidelity to the
  persona is measured on them; the gate's base-path queries are the retain set that keeps the
  adapters close to the base model off the persona path (``prism.persona_path``).
- ``steering.safetensors``: the persona's mean shift of the residual (persona prompt minus
  plain prompt, last token) over the label-1 samples, for probe-routed steering.
- ``baselines/``: the MiniLM + logistic router (same labels, same split) and the
  self-classification router's calibrated threshold.
- ``train.json``: the leave-one-source-out table and routing quality (AUCs and route rates with
  CIs), label noise, losses; with intent labels, the exam check: MMLU question stems outside
  the gate's data (and outside ``exclude``), routed by the gate fitted without MMLU (its
  leave-one-source-out row, on more stems) and by the deployed gate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from figures import prism as plots
from prism.baselines import EmbeddingRouter, SelfClassifyRouter
from prism.distill import DistillConfig
from prism.gate import (
    GATE_KINDS,
    READ_POSITIONS,
    Gate,
    LabelledPrompts,
    choose,
    gate_features,
    split_for,
    sweep,
    template_tokens,
    train_gate,
)
from prism.persona_path import persona_shift, train_adapters
from prism.samples import Sample, load_samples
from prism.summary import TrainSummary
from prism.unseen import (
    BASE_LIMIT,
    PERSONA_LIMIT,
    choose_read_out,
    evaluate,
    held_out_rate,
    logistic_scorer,
    probe_scorer,
)
from prism.workdir import PrismDirectory
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import save_figure, save_tensors, write_record, write_table
from probes.core.items import Item
from probes.core.prompts import Condition, encode, render
from probes.core.stats import Estimate, bootstrap_mean
from probes.intents import ALL_SOURCES, LabelledQuery, intent_queries

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

LABEL_SOURCES = ("bootstrap", "intents")


MIN_PER_ROUTE = 4
EXAM_SOURCE = "mmlu"  # the exam check's source: knowledge asked as exam questions, the gate's hardest


def labelled_prompts(
    source: str,
    samples: Sequence[Sample],
    *,
    verdict: str = "both",
    per_intent: int | None = None,
    per_source: int | None = 24,
    extra: Sequence[str] = (),
    seed: int = 0,
    exclude: set[str] = frozenset(),
    exclude_sources: Collection[str] = frozenset(),
) -> LabelledPrompts:
    """Gate training data without the queries in ``exclude`` (the evaluation's) or, for intents, the
    ``exclude_sources``.

    ``bootstrap``: the self-verdicts under ``verdict`` (group and source = persona). ``intents``: every built-in
    source of ``probes.intents`` plus the bootstrapped queries as a generation source (``bootstrap``), up to
    ``per_source`` queries of each source and ``per_intent`` of each intent; ``extra`` files add queries whose
    category is their intent (each file one more source)."""
    if source == "bootstrap":
        kept = [s for s in samples if s.query not in exclude]
        return LabelledPrompts(
            [s.query for s in kept],
            np.array([s.verdict(verdict) for s in kept]),
            [s.persona for s in kept],
            f"bootstrap ({verdict})",
            [s.persona for s in kept],
        )
    if source == "intents":
        own = [
            LabelledQuery(
                Item(s.id, "bootstrap", s.query, s.persona, turns=(s.query,)),
                "generation",
                f"bootstrap:{s.persona}",
                "bootstrap",
            )
            for s in samples
        ]
        queries = intent_queries(
            per_intent,
            per_source=per_source,
            sources=ALL_SOURCES,
            added=own,
            extra=extra,
            exclude=exclude,
            exclude_sources=exclude_sources,
            seed=seed,
        )
        return LabelledPrompts(
            [q.item.prompt for q in queries],
            np.array([int(q.intent != "knowledge") for q in queries]),
            [q.group for q in queries],
            source,
            [q.source for q in queries],
        )
    raise ToolkitError(f"unknown label source {source!r}: use one of {', '.join(LABEL_SOURCES)}")


def run_training(
    out: str | Path,
    model: TransformerBridge,
    tokenizer,
    *,
    labels: str = "bootstrap",
    verdict: str = "both",
    gate_kind: str | None = None,
    max_block: int = 3,
    layer: int | None = None,
    position: str | None = None,
    distill_config: DistillConfig = DistillConfig(),
    per_intent: int | None = None,
    per_source: int | None = 24,
    extra: Sequence[str] = (),
    steering_layer: int | None = None,
    exclude: set[str] = frozenset(),
    exclude_sources: Collection[str] = frozenset(),
    exam_stems: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> TrainSummary:
    """Train the gate, the adapters, the steering vector and the baseline routers.

    Args:
        out: the PRISM working directory (``prism bootstrap`` wrote its samples there, and the personas a user added
            in ``prism.json``: the teacher's prompts render the samples' personas from that library).
        model, tokenizer: the bridged model and its tokenizer.
        labels: ``bootstrap`` (the self-verdicts) or ``intents`` (knowledge -> base path).
        verdict: the bootstrap verdict rule (``both`` orders, or ``debiased``).
        gate_kind: ``logistic`` or ``mlp``; None: chosen with the read-out, by how it routes unseen sources.
        max_block: the last block the read-out sweep tries (0..n_layers-2: the adapter needs blocks after it).
        layer, position: fix the gate's block or read position instead of choosing them.
        distill_config: LoRA distillation settings (its ``first_block`` is replaced by the block after the gate's).
        per_intent, per_source: with intent labels, the most queries per intent and per source (None: no cap).
        extra: files of more intent-labelled queries.
        steering_layer: the steering vector's block (default: after the gate, mid-model).
        exclude: queries left out of the gate's data (the comparison's items).
        exclude_sources: intent sources left out whole (``prism.compare.excluded_sources``); recorded in ``train.json``.
        exam_stems: with intent labels, how many MMLU stems outside the gate's data (and ``exclude``) the exam check
            routes (0: no check).
        seed: split, fitting and sampling seed.
        progress: show progress bars.

    Returns:
        the ``TrainSummary``; its ``record`` is what ``train.json`` holds: the gate, the leave-one-source-out table of
        the gate, the baseline routers and the controls, the candidates' summaries, the held-out-groups sweep's best
        read-out, routing quality (out-of-source AUCs with CIs), bootstrap label statistics, adapters and steering
        vector.

    Raises:
        ToolkitError: no bootstrap samples, a ``max_block``, ``layer``, ``position``, label source, verdict rule,
            gate kind or steering block out of range or unknown, ``extra`` without intent labels, fewer than
            ``MIN_PER_ROUTE`` queries on either route, fewer than two sources, no sample on the persona path, or a
            missing sentence encoder.
    """
    work = PrismDirectory(out)
    samples = load_samples(work)
    library = work.persona_library()  # the samples' personas: built in, or a user's recorded by the bootstrap
    n_layers = model.cfg.n_layers
    _check_options(n_layers, max_block, layer, position, gate_kind, labels, extra, exam_stems)
    labelled = labelled_prompts(
        labels,
        samples,
        verdict=verdict,
        per_intent=per_intent,
        per_source=per_source,
        extra=extra,
        seed=seed,
        exclude=exclude,
        exclude_sources=exclude_sources,
    )
    counts = np.bincount(labelled.labels, minlength=2)
    if counts.min() < MIN_PER_ROUTE:
        agreement = np.mean([s.persona_first_wins == s.persona_second_wins for s in samples])
        raise ToolkitError(
            f"{labelled.source} labels give {counts[1]} persona-path and {counts[0]} base-path queries; the gate "
            f"needs {MIN_PER_ROUTE}+ of each (the self-verdicts agree across orders on {agreement:.0%} of queries): "
            "use --verdict debiased, --labels intents, or bootstrap more queries"
        )
    split, split_kind = split_for(labelled, seed)
    log.info(
        f"gate data: {len(labelled.queries)} {labels}-labelled queries from {len(set(labelled.sources))} sources "
        f"({labelled.labels.mean():.0%} persona path); evaluated leave-one-source-out"
    )

    features = _read_outs(model, tokenizer, labelled.queries, max_block, work, progress)
    lengths = [len(encode(tokenizer, render(tokenizer, query, Condition("none")))) for query in labelled.queries]
    rows = sweep(features, labelled, split, seed=seed, lengths=lengths, progress=progress)
    write_table(work.gate_sweep, rows)
    gate, chosen, candidates, gate_report = _fit_gate(
        model, tokenizer, features, labelled, layer, position, gate_kind, labels, work, seed
    )

    exam = _exam_check(model, tokenizer, labelled, features, chosen, gate, exclude, exam_stems, seed)
    routers = _routers(model, tokenizer, labelled, chosen["result"], features, lengths, chosen, work, seed)
    table = _source_table(routers)
    write_table(work.gate_directory / "sources.csv", table)
    save_figure(plots.gate_sweep(rows, None), work.gate_sweep_figure)
    save_figure(plots.route_by_source(table, (BASE_LIMIT, PERSONA_LIMIT)), work.gate_directory / "sources.png")

    routes = _persona_path_routes(model, tokenizer, samples, gate, labels, verdict, work, progress)
    base_path = [
        query for query, label in zip(labelled.queries, labelled.labels) if not label
    ]  # kept as the base model has them
    adapters = train_adapters(
        model,
        tokenizer,
        samples,
        routes,
        gate.layer,
        distill_config,
        work,
        retain=base_path,
        personas=library,
        seed=seed,
        progress=progress,
    )
    steering_layer, vector = _steering_vector(
        model, tokenizer, samples, routes, gate.layer, steering_layer, distill_config, library, work
    )
    summary = {
        "labels": labelled.source,
        "split": "leave one source out",
        "n_gate_queries": len(labelled.queries),
        "gate_label_share": float(labelled.labels.mean()),
        "excluded_sources": sorted(exclude_sources),
        "gate": {
            "layer": gate.layer,
            "position": gate.position,
            "kind": gate.kind,
            "regularisation": chosen["regularisation"],
            "threshold": gate.threshold,
            "parameters": gate.n_parameters,
            **gate_report,
        },
        "leave_one_source_out": {
            "limits": {"base": BASE_LIMIT, "persona": PERSONA_LIMIT},
            "table": table,
            "routers": {name: {"threshold": r["threshold"], **r["summary"]} for name, r in routers.items()},
            "candidates": candidates,
        },
        "exam_check": exam,
        "sweep_best": choose([r for r in rows if r["layer"] >= 0]),
        "held_out_groups_split": split_kind,
        "length_only": next(r for r in rows if r["position"] == "length only"),
        "routing_quality": {
            "n_test": len(labelled.queries),
            **{
                name: Estimate.from_columns(r["summary"], "auc", prefix="auc_").columns(
                    "auc", prefix="", n=True
                )  # with its share of undefined resamples and note
                for name, r in routers.items()
            },
        },
        "bootstrap_labels": {
            "n": len(samples),
            "persona_wins": float(np.mean([s.label for s in samples])),
            "debiased_persona_wins": float(np.mean([s.debiased_label for s in samples])),
            "distilled": int(routes.sum()),
            "order_agreement": float(np.mean([s.persona_first_wins == s.persona_second_wins for s in samples])),
        },
        "adapters": adapters,
        "steering": {"layer": steering_layer, "norm": float(vector.norm())},
    }
    write_record(work.train_summary, summary)
    return TrainSummary.from_record(summary)


def _check_options(
    n_layers: int,
    max_block: int,
    layer: int | None,
    position: str | None,
    gate_kind: str | None,
    labels: str,
    extra: Sequence[str],
    exam_stems: int = 0,
) -> None:
    """One line for a read-out sweep, a fixed read-out, a gate kind or an exam check the model or the toolkit cannot
    give."""
    if not 0 <= max_block < n_layers - 1:
        raise ToolkitError(
            f"the gate must read a block in 0..{n_layers - 2} (the adapter needs blocks after it), got {max_block}"
        )
    if layer is not None and not 0 <= layer <= max_block:
        raise ToolkitError(f"--layer {layer} is outside the swept blocks 0..{max_block}")
    if position is not None and position not in READ_POSITIONS:
        raise ToolkitError(f"unknown read position {position!r}: use one of {', '.join(READ_POSITIONS)}")
    if gate_kind is not None and gate_kind not in GATE_KINDS:
        raise ToolkitError(f"unknown gate kind {gate_kind!r}: use one of {', '.join(GATE_KINDS)}")
    if extra and labels != "intents":
        raise ToolkitError("--extra adds intent-labelled queries: use it with --labels intents")
    if exam_stems < 0:
        raise ToolkitError(f"--exam-stems counts MMLU stems: give 0 (no exam check) or more, got {exam_stems}")


def _read_outs(
    model: TransformerBridge, tokenizer, queries: Sequence[str], max_block: int, work: PrismDirectory, progress: bool
) -> dict[tuple[int, str], np.ndarray]:
    """(block, read position) -> the gate's features of every query, for blocks 0..``max_block``."""
    features = {}
    for read in READ_POSITIONS:
        for block, x in gate_features(
            model, tokenizer, queries, list(range(max_block + 1)), read, work.gate_features, progress=progress
        ).items():
            features[(block, read)] = x
    return features


def _fit_gate(
    model: TransformerBridge,
    tokenizer,
    features: dict,
    labelled: LabelledPrompts,
    layer: int | None,
    position: str | None,
    gate_kind: str | None,
    labels: str,
    work: PrismDirectory,
    seed: int,
) -> tuple[Gate, dict, list[dict], dict]:
    """The read-out and kind chosen by how they route unseen sources, the gate fitted on every query and saved with
    its calibrated threshold: (gate, the choice, every candidate's summary, the gate's report)."""
    allowed = {
        key: x
        for key, x in features.items()
        if (layer is None or key[0] == layer) and (position is None or key[1] == position)
    }
    chosen, candidates = choose_read_out(
        allowed, labelled.labels, labelled.sources, kinds=GATE_KINDS if gate_kind is None else (gate_kind,), seed=seed
    )
    write_table(work.gate_directory / "candidates.csv", candidates)
    x = features[(chosen["layer"], chosen["position"])]
    result = chosen["result"]
    metadata = {
        "model": model.cfg.model_name,
        **precision(model),
        "labels": labels,
        "split": "leave one source out",
        "regularisation": chosen["regularisation"],
    }
    gate = train_gate(
        x,
        labelled.labels,
        np.arange(len(labelled.queries)),
        layer=chosen["layer"],
        position=chosen["position"],
        kind=chosen["kind"],
        regularisation=chosen["regularisation"],
        seed=seed,
        metadata=metadata,
        template=template_tokens(tokenizer),
    )
    gate.threshold = result["threshold"]
    gate_report = {
        "auc": result["summary"]["auc"],
        "threshold": gate.threshold,
        "route_rate": float((result["scores"] >= gate.threshold).mean()),
        "n_test": len(labelled.queries),
        "positives": float(labelled.labels.mean()),
        **result["summary"],
    }
    gate.metadata.update(report=gate_report)
    gate.save(work.gate)
    log.info(
        f"gate: block {gate.layer}, {gate.position} token(s), {gate.kind} (C={chosen['regularisation']}); on "
        "unseen sources "
        f"AUC {gate_report['auc']:.2f}, {gate_report['passing']} of {gate_report['sources']} within target"
    )

    return gate, chosen, candidates, gate_report


def _exam_stems(labelled: LabelledPrompts, exclude: Collection[str], stems: int, seed: int) -> list[str]:
    """Up to ``stems`` MMLU question stems, spread over its subjects, none in the gate's data or ``exclude``."""
    drawn = intent_queries(
        None, per_source=stems, sources=[EXAM_SOURCE], exclude={*exclude, *labelled.queries}, seed=seed
    )
    return [query.item.prompt for query in drawn]


def _exam_check(
    model: TransformerBridge,
    tokenizer,
    labelled: LabelledPrompts,
    features: dict,
    chosen: dict,
    gate: Gate,
    exclude: Collection[str],
    stems: int,
    seed: int,
) -> dict | None:
    """MMLU stems outside the gate's data and ``exclude``, routed by the gate fitted without MMLU at its
    out-of-source threshold (``held_out_rate``: the leave-one-source-out row on more stems) and by the deployed gate;
    None without intent labels, MMLU in the data, or ``stems``."""
    if not stems or labelled.source != "intents" or EXAM_SOURCE not in labelled.sources:
        return None
    drawn = _exam_stems(labelled, exclude, stems, seed)
    more = gate_features(model, tokenizer, drawn, [gate.layer], gate.position, None, progress=False)[gate.layer]
    unseen = held_out_rate(
        features[(chosen["layer"], chosen["position"])],
        labelled.labels,
        labelled.sources,
        chosen["result"]["scores"],
        EXAM_SOURCE,
        more,
        kind=chosen["kind"],
        regularisation=chosen["regularisation"],
        seed=seed,
    )
    deployed = bootstrap_mean(gate.route(more).astype(float), seed=seed)
    log.info(
        f"exam check: {len(drawn)} {EXAM_SOURCE} stems outside the gate's data; routed {unseen.format(2)} by the gate "
        f"without {EXAM_SOURCE}, {deployed.format(2)} by the deployed gate (target <= {BASE_LIMIT:.0%})"
    )
    return {
        "source": EXAM_SOURCE,
        "n": len(drawn),
        "limit": BASE_LIMIT,
        **unseen.columns("unseen_route_rate"),
        **deployed.columns("deployed_route_rate"),
    }


def _persona_path_routes(
    model: TransformerBridge,
    tokenizer,
    samples: Sequence[Sample],
    gate: Gate,
    labels: str,
    verdict: str,
    work: PrismDirectory,
    progress: bool,
) -> np.ndarray:
    """Which bootstrapped samples the adapters learn from: the self-verdicts, or the samples the intent gate sends
    to the persona path."""
    if labels == "bootstrap":
        return np.array([s.verdict(verdict) for s in samples])
    else:  # the samples the intent gate sends to the persona path are the ones to distil
        sample_x = gate_features(
            model,
            tokenizer,
            [s.query for s in samples],
            [gate.layer],
            gate.position,
            work.sample_features,
            progress=progress,
        )[gate.layer]
        routes = gate.route(sample_x).astype(int)
    return routes


def _steering_vector(
    model: TransformerBridge,
    tokenizer,
    samples: Sequence[Sample],
    routes: np.ndarray,
    gate_layer: int,
    steering_layer: int | None,
    distill_config: DistillConfig,
    library,
    work: PrismDirectory,
) -> tuple[int, torch.Tensor]:
    """The persona's mean shift over the persona-path samples, after ``steering_layer`` (default: after the gate,
    mid-model), saved: (its block, the vector)."""
    n_layers = model.cfg.n_layers
    steering_layer = max(gate_layer + 1, n_layers // 2) if steering_layer is None else steering_layer
    if not gate_layer < steering_layer < n_layers:
        raise ToolkitError(f"the steering block must lie after the gate's block {gate_layer} and below {n_layers}")
    persona_path = [s for s, route in zip(samples, routes) if route]
    vector = persona_shift(
        model, tokenizer, persona_path, steering_layer, distill_config.persona_length, personas=library
    )
    save_tensors(
        work.steering,
        {"vector": vector},
        {"kind": "persona-steering", "layer": steering_layer, "model": model.cfg.model_name, "n": len(persona_path)},
    )
    return steering_layer, vector


ROUTERS, SELF_CLASSIFY_PER_SOURCE = ("gate", "embedding", "self_classify", "length_only", "shuffled_labels"), 8


def _routers(
    model: TransformerBridge,
    tokenizer,
    labelled: LabelledPrompts,
    gate_result: dict,
    features: dict,
    lengths: Sequence[int],
    chosen: dict,
    work: PrismDirectory,
    seed: int,
) -> dict[str, dict]:
    """Leave-one-source-out results (``prism.unseen.evaluate``) of the gate, the MiniLM router, self-classification (the
    first ``SELF_CLASSIFY_PER_SOURCE`` of each source), a probe on the prompt's length alone and the chosen gate fitted
    to shuffled labels. Baseline routers are saved refitted on every source, thresholds calibrated out of source."""
    y, sources = labelled.labels, labelled.sources
    embedding = EmbeddingRouter()
    embedded = embedding.encoder.encode(labelled.queries)
    results = {
        "gate": gate_result,
        "embedding": evaluate(logistic_scorer(embedded, y, seed=seed), y, sources, seed=seed),
    }
    fitted = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed).fit(embedded, y)
    embedding.coef, embedding.intercept = fitted.coef_[0].astype(np.float64), float(fitted.intercept_[0])
    embedding.n_train, embedding.threshold = len(y), results["embedding"]["threshold"]
    embedding.save(work.embedding_router)
    asked_rows = np.sort(
        np.concatenate(
            [np.flatnonzero(np.asarray(sources) == name)[:SELF_CLASSIFY_PER_SOURCE] for name in dict.fromkeys(sources)]
        )
    )  # a forward pass of a long prompt each
    asked = SelfClassifyRouter(model, tokenizer).scores([labelled.queries[i] for i in asked_rows])
    results["self_classify"] = evaluate(
        lambda train, test: asked[test], y[asked_rows], [sources[i] for i in asked_rows], seed=seed
    )
    write_record(work.self_classify, {"threshold": results["self_classify"]["threshold"], "labels": labelled.source})
    length = np.log(np.asarray(lengths, dtype=float))[:, None]
    results["length_only"] = evaluate(logistic_scorer(length, y, seed=seed), y, sources, seed=seed)
    shuffled = np.random.default_rng(seed).permutation(y)  # the shuffled-label control
    control = probe_scorer(
        features[(chosen["layer"], chosen["position"])],
        shuffled,
        kind=chosen["kind"],
        regularisation=chosen["regularisation"],
        seed=seed,
    )
    results["shuffled_labels"] = evaluate(control, y, sources, seed=seed)
    return {name: results[name] for name in ROUTERS}


def _source_table(routers: dict[str, dict]) -> list[dict]:
    """One row per unseen source: each router's route rate and AUC with their 95% CIs, and whether it passes."""
    table = []
    for row in routers["gate"]["rows"]:
        merged = {"source": row["source"], "route": row["route"], "n": row["n"]}
        for name, result in routers.items():
            theirs = next(other for other in result["rows"] if other["source"] == row["source"])
            merged.update(
                {
                    f"{name}_{key}": theirs[key]
                    for key in (
                        "n",
                        "route_rate",
                        "route_rate_low",
                        "route_rate_high",
                        "auc",
                        "auc_low",
                        "auc_high",
                        "passes",
                    )
                }
            )
        table.append(merged)
    return table
