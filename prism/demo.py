"""The toolkit's story on the embedded model, end to end, in a few minutes.

So far: a short persona-effect study (knowledge, refusal, instruction following and judged
generation under a handful of persona conditions, with paired 95% CIs, tables, figures and a
report), then a short probe study (where intent is decodable, layer by layer, against controls;
persona directions), then a short causal run (activation patching, steering, ablation and the
logit lens on capital-city questions), each with its figures and report, and a short PRISM run
(bootstrap, probe gate, gated LoRA, routed comparison against the baselines).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from interventions.intervene import run_interventions, spread_layers
from interventions.study.report import summarise_study
from interventions.study.runner import run_study
from prism import pipeline
from prism.bootstrap import BootstrapConfig
from prism.compare import format_table
from prism.distill import DistillConfig
from probes.core.models import model_slug, resolve_model_directory
from probes.study import run_probe_study


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

    _say("2. probes and persona directions, short run (prism probe --per-intent 48 ...)")
    probe_dir = out / "probe"
    summary = run_probe_study(
        probe_dir, model_name=model_name, per_intent=48, kinds=("logistic", "diff-means"),
        personas=("math", "writing", "safety-monitor", "roleplay"), persona_lengths=("min", "long"), persona_queries=12,
        progress=True,
    )
    for name in ("knowledge-vs-generation/mean", "knowledge-vs-generation/last", "harmful-vs-benign/mean"):
        found = summary["earliest"].get(name)
        text = (f"layer {found['layer']}, AUC {found['auc']:.2f} [{found['auc_low']:.2f}, {found['auc_high']:.2f}] (n={found['n']})"
                if found else "not above the controls at any layer")
        print(f"held-out {name}: {text}")
    print(f"layer curves: {probe_dir / 'figures' / 'probe_knowledge-vs-generation_mean.png'}; report: {probe_dir / 'report.md'}")
    _say("3. causal tests on knowledge items, short run (prism intervene -n 16 ...)")
    effects = run_interventions(out / "intervene", model_name=model_name, n_items=16, layers=_spread_layers(model_name),
                                multiples=(0.0, 1.0, 2.0), refusal_items=8, progress=True)
    effect, best = effects["effect"], effects["best_patch"]
    print(f"persona effect on the capitals answer margin: {effect['mean']:+.2f} [{effect['low']:+.2f}, {effect['high']:+.2f}] "
          f"(n={effects['n']}); decisive patch: block {best['layer']}, {best['group']} tokens, "
          f"{best['fraction']:+.2f} [{best['low']:+.2f}, {best['high']:+.2f}] recovered")
    print(f"patching heatmap: {out / 'intervene' / 'figures' / 'patching_heatmap.png'}; report: {out / 'intervene' / 'report.md'}")

    _say("4. PRISM, short run (prism bootstrap --queries-per-persona 2; prism train --labels intents; prism compare --budget smoke)")
    prism_dir = out / "prism"
    verdicts = pipeline.bootstrap(prism_dir, model_name=model_name, config=BootstrapConfig(queries_per_persona=2), progress=True)
    overall = verdicts["overall"]
    print(f"bootstrap: the persona won both orders on {overall['win_rate']:.0%} of {overall['n']} self-written queries; "
          f"the two orders agreed on {overall['order_agreement']:.0%} (a judge that follows position agrees on 0%)")
    trained = pipeline.train(prism_dir, labels="intents", per_intent=32, compare_budget="smoke",
                             distill_config=DistillConfig(epochs=1), progress=True)
    quality = trained["routing_quality"]
    print(f"gate: block {trained['gate']['layer']}, {trained['gate']['position']} token(s); held-out AUC "
          f"{quality['gate']['auc']:.2f} [{quality['gate']['low']:.2f}, {quality['gate']['high']:.2f}] vs MiniLM router "
          f"{quality['embedding']['auc']:.2f} [{quality['embedding']['low']:.2f}, {quality['embedding']['high']:.2f}] (n={quality['n_test']})")
    compared = pipeline.compare(prism_dir, budget="smoke", progress=True)
    print(format_table(compared["table"]))
    print(f"PRISM report: {prism_dir / 'compare' / 'report.md'}")
    _say(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    return out


def _spread_layers(model_name: str, count: int = 6) -> list[int]:
    """About ``count`` blocks from first to last, for a quick patching sweep."""
    from transformers import AutoConfig

    return spread_layers(AutoConfig.from_pretrained(resolve_model_directory(model_name)[0]).num_hidden_layers, count)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
