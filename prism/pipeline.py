"""PRISM end to end in one working directory: bootstrap -> train -> route / compare.

The directory remembers its model (``prism.json``), so later steps load the same one and a
mismatched ``--model`` is refused rather than silently mixing models. ``bootstrap``, ``train``
and ``compare`` return typed summaries (``BootstrapSummary``, ``TrainSummary``,
``CompareSummary``) that ``prism`` and the demo print; the full records are the JSON files they
write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from interventions.measure.engines import EngineSpec, open_engine
from interventions.measure.generation import generate
from interventions.measure.judge import make_judge
from prism.adapters import load_adapter
from prism.bootstrap import BootstrapConfig, chosen_personas, run_bootstrap
from prism.compare import SYSTEMS, CompareBudget, evaluation_queries, excluded_sources, resolve_budget, run_compare
from prism.distill import DistillConfig
from prism.gate import Gate
from prism.persona_path import GATED
from prism.routing import Routed, route_probabilities
from prism.summary import BootstrapSummary, CompareSummary, TrainSummary
from prism.train import run_training
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors
from probes.core.models import load_model
from probes.core.personas import Persona, get_persona
from probes.core.prompts import Condition, encode, render
from probes.core.tokenizers import load_tokenizer

VIA = ("adapter", "steering", "prompt")


def _model_for(out: Path, model_name: str | None, *, create: bool = False) -> str:
    """The working directory's model name (``PrismDirectory.model_name``)."""
    return PrismDirectory(out).model_name(model_name, create=create)


def _load(name: str, device: str, dtype: str, device_map: str | None = None):
    """``load_model``: one place for every step to load its model."""
    return load_model(name, device=device, dtype=dtype, device_map=device_map)


def bootstrap(
    out: str | Path,
    *,
    model_name: str | None = None,
    config: BootstrapConfig = BootstrapConfig(),
    personas: Sequence[str] | None = None,
    library: Mapping[str, Persona] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    progress: bool = True,
    engine: EngineSpec | None = None,
) -> BootstrapSummary:
    """Run stages 1-3 in the working directory ``out`` (``prism bootstrap``).

    Args:
        out: the PRISM working directory; on first use its model, and the personas a user added to ``library``, are
            recorded in ``prism.json`` (train, route and compare read them from there).
        model_name: the model to load (default: the recorded one, else ``default``); must match a recorded one.
        config: query, answer and verdict settings.
        personas: names in the library of the personas whose queries the model writes (default: every persona in it).
        library: the persona library, e.g. ``persona_library(file)`` (default: the directory's, else the built-in
            personas); its user personas must match those the directory recorded.
        device, dtype, device_map: where, in what precision and over which devices the model runs (``load_model``).
        progress: show progress bars.
        engine: what writes, answers and judges (default: ``hf``, the hooked model); with ``vllm`` this process
            loads only the tokenizer and vLLM the weights.

    Returns:
        the ``BootstrapSummary``: win rates overall and per persona.

    Raises:
        ToolkitError: a ``model_name`` or user personas other than the recorded ones, an unknown persona (before the
            model loads), a model that cannot be loaded, or what ``run_bootstrap`` refuses (no usable query, ...).
    """
    out = Path(out)
    work = PrismDirectory(out)
    name = _model_for(out, model_name, create=True)
    library = work.persona_library(library)
    chosen = chosen_personas(personas, library, config.persona_length)
    engine = engine or EngineSpec()
    engine.check()
    if engine.hooks:
        model, tokenizer = _load(name, device, dtype, device_map)
    else:
        model, tokenizer = None, load_tokenizer(name)
    with open_engine(engine, name, tokenizer, model, device=device, dtype=dtype) as generator:
        work.record_model(name, library)  # only a model that loaded claims the directory
        return run_bootstrap(
            out, model, tokenizer, config=config, personas=chosen, library=library, progress=progress, engine=generator
        )


def train(
    out: str | Path,
    *,
    model_name: str | None = None,
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
    compare_budget: str | CompareBudget = "default",
    exam_stems: int = 200,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train the gate, the adapters, the steering vector and the baseline routers in ``out`` (``prism train``).

    The comparison's evaluation queries (of ``compare_budget`` and ``seed``) are left out of the gate's data, and so
    are, whole, the intent sources that ask the kinds of fact its knowledge sets ask
    (``prism.compare.excluded_sources``: ``geo:continent``, ``geo:currency``, ``geo:city``), so that every knowledge set
    it scores is one the gate never saw.

    Args:
        out: the PRISM working directory, bootstrapped.
        model_name: the model to load (default: the directory's); must match the directory's.
        labels: ``bootstrap`` (the self-verdicts) or ``intents`` (knowledge -> base path).
        verdict: the bootstrap verdict rule (``both`` orders, or ``debiased``).
        gate_kind: ``logistic`` or ``mlp``; None: chosen with the read-out, by how it routes unseen sources.
        max_block: the last block the read-out sweep tries.
        layer, position: fix the gate's block or read position instead of choosing them.
        distill_config: LoRA distillation settings (the first block follows the gate's).
        per_intent, per_source: with intent labels, the most queries per intent and per source (None: no cap).
        extra: files of more intent-labelled queries (each file one more source).
        compare_budget: the comparison budget whose items are left out (``smoke``, ``default`` or a ``CompareBudget``).
        exam_stems: with intent labels, the MMLU stems outside the gate's data and the comparison's items that the
            exam check routes (0: no check; ``run_training``).
        seed: split, fitting and sampling seed (also the evaluation items' sampling seed).
        device, dtype, device_map: where, in what precision and over which devices the model runs (``load_model``).
        progress: show progress bars.

    Returns:
        the ``TrainSummary`` (the full record is ``train.json``).

    Raises:
        ToolkitError: an unknown comparison budget, a directory not bootstrapped or bootstrapped with another model,
            or what ``run_training`` refuses.
    """
    out = Path(out)
    plan = resolve_budget(compare_budget)
    model, tokenizer = _load(_model_for(out, model_name), device, dtype, device_map)
    return run_training(
        out,
        model,
        tokenizer,
        labels=labels,
        verdict=verdict,
        gate_kind=gate_kind,
        max_block=max_block,
        layer=layer,
        position=position,
        distill_config=distill_config,
        per_intent=per_intent,
        per_source=per_source,
        extra=extra,
        exclude=evaluation_queries(plan, seed),
        exclude_sources=excluded_sources(),
        exam_stems=exam_stems,
        seed=seed,
        progress=progress,
    )


def compare(
    out: str | Path,
    *,
    model_name: str | None = None,
    budget: str | CompareBudget = "default",
    systems: Sequence[str] = SYSTEMS,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    judge: Mapping | None = None,
    progress: bool = True,
    engine: EngineSpec | None = None,
) -> CompareSummary:
    """Run the Table-1 comparison in ``out`` (``prism compare``); finished cells are reused.

    Args:
        out: the PRISM working directory, trained.
        model_name: the model to load (default: the directory's); must match the directory's.
        budget: ``smoke``, ``default`` or a ``CompareBudget``.
        systems: the systems to compare (default: all of ``SYSTEMS``).
        seed: sampling, generation and bootstrap seed (use the one training used, so its left-out items are these).
        batch_size: prompts per forward pass.
        device, dtype, device_map: where, in what precision and over which devices the model runs (``load_model``).
        judge: ``make_judge`` settings of the MT-Bench judge (``url``, ``judge_model``, ...; default: the model judges
            itself). Cells remember their judge: another judge recomputes the MT-Bench cells.
        progress: show a progress bar over the cells.
        engine: what generates the cells that need no hooks and the self-judge's ratings (default: ``hf``).

    Returns:
        the ``CompareSummary``.

    Raises:
        ToolkitError: an unknown budget or system, no trained gate, a directory of another model, or what
            ``run_compare`` refuses.
    """
    out = Path(out)
    plan = resolve_budget(budget)
    PrismDirectory(out).require_gate()
    judge = dict(judge or {})
    if judge.get("url"):
        make_judge(**judge)  # bad judge settings fail before the model loads
    engine = engine or EngineSpec()
    engine.check()
    name = _model_for(out, model_name)
    model, tokenizer = _load(name, device, dtype, device_map)
    with open_engine(engine, name, tokenizer, model, device=device, dtype=dtype) as generator:
        return run_compare(
            out,
            model,
            tokenizer,
            budget=plan,
            systems=systems,
            seed=seed,
            batch_size=batch_size,
            judge=make_judge(**judge, model=model, tokenizer=tokenizer, batch_size=batch_size, engine=generator),
            progress=progress,
            engine=generator,
        )


def route(
    out: str | Path,
    prompts: Sequence[str],
    *,
    via: str = "adapter",
    persona: str = "helpful",
    max_new_tokens: int = 64,
    model_name: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
) -> list[dict]:
    """Answer ``prompts`` with routing; each answer comes with the gate's probability and route.

    Args:
        out: the PRISM working directory, trained.
        prompts: the user queries (plain text, each non-empty).
        via: ``adapter`` (the gated adapter), ``steering`` (the persona steering vector) or ``prompt`` (``persona``'s
            prompt, its ``min`` text in the system message, for the routed queries).
        persona: the persona of ``via="prompt"``: a built-in one or a user's the directory was bootstrapped with
            (checked whatever ``via`` is).
        max_new_tokens: the most tokens generated per answer (greedy).
        model_name: the model to load (default: the directory's); must match the directory's.

    Returns:
        one dict per prompt: ``prompt``, ``probability`` (the gate's), ``threshold``, ``routed``, ``via`` (the route
        target, or ``"base model"``) and ``answer``.

    Raises:
        ToolkitError: an unknown persona or route target, an empty prompt, a directory without a model, gate,
            adapter or steering vector, or one of another model.
    """

    work = PrismDirectory(out)
    library = work.persona_library()
    get_persona(persona, library)
    if via not in VIA:
        raise ToolkitError(f"unknown route target {via!r}: use one of {', '.join(VIA)}")
    if not prompts or any(not p.strip() for p in prompts):
        raise ToolkitError("empty prompt: give each prompt some text")
    model, tokenizer = _load(_model_for(work.root, model_name), device, dtype, device_map)
    gate = Gate.load(work.gate)
    plain = [render(tokenizer, prompt, Condition("none")) for prompt in prompts]
    if via == "prompt":
        probabilities = route_probabilities(model, tokenizer, gate, prompts)
        routed = probabilities >= gate.threshold
        rendered = [
            render(tokenizer, p, Condition(persona), personas=library) if r else q
            for p, q, r in zip(prompts, plain, routed)
        ]
        answers = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, progress=False)
        decisions = list(zip(probabilities.tolist(), routed.tolist()))
    else:
        if via == "adapter":
            load_adapter(model, GATED, work.adapter(GATED))
            context = Routed(model, gate, adapter=GATED)
        else:
            tensors, metadata = load_tensors(work.steering)
            context = Routed(model, gate, steering=(int(metadata["layer"]), tensors["vector"]))
        with context:
            answers = generate(model, tokenizer, plain, max_new_tokens=max_new_tokens, progress=False)
        decisions = [context.decision(encode(tokenizer, prompt)) for prompt in plain]
    return [
        {
            "prompt": prompt,
            "probability": probability,
            "threshold": gate.threshold,
            "routed": routed,
            "via": via if routed else "base model",
            "answer": answer,
        }
        for prompt, (probability, routed), answer in zip(prompts, decisions, answers)
    ]
