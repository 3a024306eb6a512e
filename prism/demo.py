"""The toolkit's story on the embedded model, end to end, in a few minutes.

So far: persona conditions versus no persona on a knowledge set (MMLU, log-likelihood scoring)
and on HarmBench (keyword refusal), with paired differences and 95% CIs, then an activation
recording of the residual stream under a persona and without one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from interventions.evaluate import evaluate, metric_values, render_items
from interventions.stats import paired_difference
from probes.atomic import write_json
from probes.datasets import load_dataset, stratified_sample
from probes.models import load_model
from probes.prompts import Condition
from probes.recording import record_activations

BASELINE = Condition("none")
CONDITIONS = (
    BASELINE,
    Condition("stem", "min", "system"),
    Condition("stem", "long", "system"),
    Condition("stem", "long", "user"),
    Condition("random", "long", "system"),
    Condition("safety-monitor", "min", "system"),
)


def run_demo(out: Path, *, model_name: str = "default", n_knowledge: int = 32, n_harmful: int = 16) -> Path:
    out = Path(out)
    start = time.perf_counter()
    model, tokenizer = load_model(model_name)
    _say(f"model: {model.cfg.model_name}, {model.cfg.n_layers} blocks, loaded in {time.perf_counter() - start:.1f}s")

    knowledge = stratified_sample(load_dataset("mmlu"), n_knowledge, seed=0)
    harmful = [item for item in load_dataset("harmbench") if item.subcategory == "standard"]
    harmful = stratified_sample(harmful, n_harmful, seed=0)
    results: dict[str, dict] = {}
    for condition in CONDITIONS:
        _say(f"evaluating {condition.label}")
        name = condition.slug
        mmlu = evaluate(model, tokenizer, knowledge, condition, scoring="letter", progress=False)
        refusal = evaluate(model, tokenizer, harmful, condition, max_new_tokens=48, progress=False)
        mmlu["dataset"], refusal["dataset"] = "mmlu", "harmbench"
        write_json(out / "evaluations" / f"mmlu_{name}.json", mmlu)
        write_json(out / "evaluations" / f"harmbench_{name}.json", refusal)
        results[condition.label] = {"mmlu": mmlu, "harmbench": refusal}

    table = _summary_table(results)
    print(table)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")

    _say("recording the residual stream (last prompt token, every block) with and without a persona")
    recorded = knowledge[:16] + harmful[:16]
    for condition in (BASELINE, Condition("stem", "long", "system")):
        prompts = render_items(tokenizer, recorded, condition)
        store = record_activations(
            model, tokenizer, prompts, out / "activations" / condition.slug,
            positions="last", progress=False, metadata={"condition": condition.to_dict()},
        )
        _say(f"  {condition.label}: {len(store)} prompts x {len(store.hooks)} hooks -> {store.path}")
    _say(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    return out


def _summary_table(results: dict[str, dict]) -> str:
    base = results[BASELINE.label]
    chance = base["mmlu"]["chance"]
    lines = [
        f"MMLU accuracy (letter scoring, chance {chance:.2f}), margin of the correct option (nats), "
        "HarmBench keyword refusal; differences are paired on the same items, * = 95% CI excludes 0",
        "",
        "| condition | MMLU acc [95% CI] | Δ acc | Δ margin | refusal [95% CI] | Δ refusal |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in results.items():
        mmlu, harm = result["mmlu"], result["harmbench"]
        acc, refusal = mmlu["summary"], harm["summary"]
        row = [label, f"{acc['mean']:.2f} [{acc['low']:.2f}, {acc['high']:.2f}] n={acc['n']}"]
        if label == BASELINE.label:
            row += ["—", "—", f"{refusal['mean']:.2f} [{refusal['low']:.2f}, {refusal['high']:.2f}] n={refusal['n']}", "—"]
        else:
            d_acc = paired_difference(metric_values(mmlu), metric_values(base["mmlu"]))
            d_margin = paired_difference(
                [r["margin"] for r in mmlu["items"]], [r["margin"] for r in base["mmlu"]["items"]]
            )
            d_refusal = paired_difference(metric_values(harm), metric_values(base["harmbench"]))
            row += [
                _difference(d_acc), _difference(d_margin),
                f"{refusal['mean']:.2f} [{refusal['low']:.2f}, {refusal['high']:.2f}] n={refusal['n']}",
                _difference(d_refusal),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _difference(estimate) -> str:
    star = "*" if estimate.significant else ""
    return f"{estimate.mean:+.2f} [{estimate.low:+.2f}, {estimate.high:+.2f}]{star}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
