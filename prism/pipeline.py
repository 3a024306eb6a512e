"""PRISM end to end in one working directory: bootstrap -> train -> route / compare.

The directory remembers its model (``prism.json``), so later steps load the same one and a
mismatched ``--model`` is refused rather than silently mixing models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from interventions.measure.generation import generate
from prism.bootstrap import BootstrapConfig, run_bootstrap, summarise
from prism.compare import SYSTEMS, CompareBudget, evaluation_queries, resolve_budget, run_compare
from prism.distill import DistillConfig, load_adapter
from prism.gate import Gate
from prism.routing import Routed, route_probabilities
from prism.train import GATED, run_training
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, write_json
from probes.core.models import load_model
from probes.core.personas import get_persona
from probes.core.prompts import Condition, encode, render

MANIFEST = "prism.json"
VIA = ("adapter", "steering", "prompt")


def _model_for(out: Path, model_name: str | None, *, create: bool = False) -> str:
    manifest = out / MANIFEST
    recorded = json.loads(manifest.read_text(encoding="utf-8"))["model"] if manifest.is_file() else None
    if recorded is None:
        if not create:
            raise ToolkitError(f"{out} is not a PRISM directory (no {MANIFEST}): run `prism bootstrap --out {out}` first")
        write_json(manifest, {"model": model_name or "default"})
        return model_name or "default"
    if model_name is not None and model_name != recorded:
        raise ToolkitError(f"{out} was bootstrapped with model {recorded!r}, not {model_name!r}: use another --out")
    return recorded


def _load(name: str):
    return load_model(name)


def bootstrap(out: str | Path, *, model_name: str | None = None, config: BootstrapConfig = BootstrapConfig(),
              personas: Sequence[str] | None = None, progress: bool = True) -> dict:
    out = Path(out)
    model, tokenizer = _load(_model_for(out, model_name, create=True))
    samples = run_bootstrap(out / "bootstrap", model, tokenizer, config=config, personas=personas, progress=progress)
    return summarise(samples, config.seed)


def train(out: str | Path, *, model_name: str | None = None, labels: str = "bootstrap", verdict: str = "both",
          gate_kind: str = "logistic",
          max_block: int = 3, layer: int | None = None, position: str | None = None,
          distill_config: DistillConfig = DistillConfig(), per_intent: int = 64, extra: Sequence[str] = (),
          compare_budget: str | CompareBudget = "default", seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    plan = resolve_budget(compare_budget)
    model, tokenizer = _load(_model_for(out, model_name))
    return run_training(out, model, tokenizer, labels=labels, verdict=verdict, gate_kind=gate_kind, max_block=max_block, layer=layer,
                        position=position, distill_config=distill_config, per_intent=per_intent, extra=extra,
                        exclude=evaluation_queries(plan, seed), seed=seed, progress=progress)


def compare(out: str | Path, *, model_name: str | None = None, budget: str | CompareBudget = "default",
            systems: Sequence[str] = SYSTEMS, seed: int = 0, batch_size: int = 8, progress: bool = True) -> dict:
    out = Path(out)
    plan = resolve_budget(budget)
    if not (out / "gate" / "gate.safetensors").is_file():
        raise ToolkitError(f"{out} has no trained gate: run `prism train --out {out}` first")
    model, tokenizer = _load(_model_for(out, model_name))
    return run_compare(out, model, tokenizer, budget=plan, systems=systems, seed=seed, batch_size=batch_size,
                       progress=progress)


def route(out: str | Path, prompts: Sequence[str], *, via: str = "adapter", persona: str = "helpful",
          max_new_tokens: int = 64, model_name: str | None = None) -> list[dict]:
    """Answer ``prompts`` with routing; each answer comes with the gate's probability and route.
    ``via``: the gated adapter, the persona steering vector, or ``persona``'s prompt."""

    out = Path(out)
    get_persona(persona)
    if via not in VIA:
        raise ToolkitError(f"unknown route target {via!r}: use one of {', '.join(VIA)}")
    if not prompts or any(not p.strip() for p in prompts):
        raise ToolkitError("empty prompt: give each prompt some text")
    model, tokenizer = _load(_model_for(out, model_name))
    gate = Gate.load(out / "gate" / "gate.safetensors")
    plain = [render(tokenizer, prompt, Condition("none")) for prompt in prompts]
    if via == "prompt":
        probabilities = route_probabilities(model, tokenizer, gate, prompts)
        routed = probabilities >= gate.threshold
        rendered = [render(tokenizer, p, Condition(persona)) if r else q for p, q, r in zip(prompts, plain, routed)]
        answers = generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, progress=False)
        decisions = list(zip(probabilities.tolist(), routed.tolist()))
    else:
        if via == "adapter":
            load_adapter(model, GATED, out / "adapters" / GATED)
            context = Routed(model, gate, adapter=GATED)
        else:
            tensors, metadata = load_tensors(out / "steering.safetensors")
            context = Routed(model, gate, steering=(int(metadata["layer"]), tensors["vector"]))
        with context:
            answers = generate(model, tokenizer, plain, max_new_tokens=max_new_tokens, progress=False)
        decisions = [context.decision(encode(tokenizer, prompt)) for prompt in plain]
    return [{"prompt": prompt, "probability": probability, "threshold": gate.threshold, "routed": routed,
             "via": via if routed else "base model", "answer": answer} for prompt, (probability, routed), answer in zip(prompts, decisions, answers)]

