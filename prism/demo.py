"""The toolkit's story on the embedded model, end to end, in a few minutes.

So far: a short persona-effect study (knowledge, refusal, instruction following and judged
generation under a handful of persona conditions, with paired 95% CIs, tables, figures and a
report), then an activation recording of the residual stream with and without a persona.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from interventions.evaluate import render_items
from interventions.study import TASKS, run_study
from interventions.study_report import summarise_study
from probes.models import load_model, model_slug
from probes.prompts import Condition
from probes.recording import record_activations


def run_demo(out: Path, *, model_name: str = "default") -> Path:
    out = Path(out)
    start = time.perf_counter()
    _say("1. the persona-effect study, smoke budget (prism study --budget smoke)")
    study_dir = out / "study" / model_slug(model_name)
    run_study(study_dir, model_name=model_name, budget="smoke", progress=True)
    summarise_study(study_dir)
    report = (study_dir / "report.md").read_text(encoding="utf-8")
    findings = report.split("## Findings, set against the paper", 1)[1].split("## Every effect", 1)[0]
    print(f"Findings on {model_name} (smoke budget; full report: {study_dir / 'report.md'}):\n{findings.strip()}\n")

    _say("2. recording the residual stream (last prompt token, every block) with and without a persona")
    model, tokenizer = load_model(model_name)
    knowledge = TASKS["capitals"].load_items(16, seed=0)
    harmful = TASKS["harmbench"].load_items(16, seed=0)
    for condition in (Condition("none"), Condition("stem", "long", "system")):
        prompts = render_items(tokenizer, knowledge, condition, scoring="cloze") + render_items(tokenizer, harmful, condition)
        store = record_activations(
            model, tokenizer, prompts, out / "activations" / condition.slug,
            positions="last", progress=False, metadata={"condition": condition.to_dict()},
        )
        _say(f"   {condition.label}: {len(store)} prompts x {len(store.hooks)} hooks -> {store.path}")
    _say(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    return out


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
