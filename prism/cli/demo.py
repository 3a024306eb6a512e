"""``prism demo``: the toolkit's story on the embedded model, end to end, in a few minutes.

A short persona-effect study (knowledge, refusal, instruction following and judged generation
under a handful of persona conditions, with paired 95% CIs, tables, figures and a report), then
a short probe study (where intent is decodable, layer by layer, against controls; persona
directions), then a short causal run (activation patching, steering, ablation and the logit lens
on capital-city questions), each with its figures and report, and a short PRISM run (bootstrap,
probe gate, gated LoRA distilled from the long persona, routed comparison against the baselines
with the expert prompt at its min and long lengths). Each step's findings are printed from the
typed summary it returns, through the same formatting as its own command; the story closes with
what the comparison shows, in words with CIs.

Within the demo's 15 minutes on 2 cores, the PRISM step cannot run the recipe that carries the
long persona beyond what every long persona shares (32 queries per persona: the bootstrap alone
takes about 26 minutes): it distils the long teacher from its 2 queries per persona and says how much that
carries; and it compares the systems of ``DEMO_SYSTEMS`` (``prism compare`` alone adds the gated
adapter routed by the MiniLM and self-classification routers).
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from transformers import AutoConfig

from interventions.intervene import run_interventions, spread_layers
from interventions.measure.engines import EngineSpec, open_engine
from interventions.study.runner import run_study
from prism import pipeline
from prism.bootstrap import BootstrapConfig
from prism.cli.command import Command
from prism.cli.options import add_engine, add_model, add_out, add_wandb, engine_spec
from prism.compare import SYSTEMS
from prism.distill import DistillConfig
from probes.core.models import load_model, model_slug, resolve_model_directory
from probes.core.prompts import Condition
from probes.core.summary import Summary
from probes.study import run_probe_study

log = logging.getLogger(__name__)

PROBE_TARGETS = ("knowledge-vs-generation/mean", "knowledge-vs-generation/last", "harmful-vs-benign/mean")
# the time budget: the baseline routers' LoRA rows and routed steering are left to `prism compare`
DEMO_SYSTEMS = tuple(s for s in SYSTEMS if s not in ("MiniLM -> LoRA", "self-classify -> LoRA", "probe -> steering"))
DEMO_QUERIES_PER_PERSONA = 2
FULL_RECIPE = (
    "prism bootstrap --queries-per-persona 32; prism train --labels intents --teacher-length long (README: Gated LoRA)"
)


def run_demo(
    out: str | Path,
    *,
    model_name: str = "default",
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | None = None,
    progress: bool = True,
    engine: EngineSpec | None = None,
) -> Path:
    """Run the story into ``out`` and print each step's findings (progress goes to stderr).

    Args:
        out: the output directory; ``study/<model>/``, ``probe/``, ``intervene/`` and ``prism/``
            are written inside, each with its tables, figures and report.
        model_name: the model, as ``--model`` takes it (default: the embedded SmolLM2-135M-Instruct).
        device, dtype, device_map: where, in what precision and over which devices the model runs (``load_model``).
        progress: show progress bars.
        engine: what generates the study's answers, the bootstrap and the comparison's prompt-only cells (default:
            ``hf``); the probes, the causal tests, training and the adapter and steering cells run on the hooked model.

    Returns:
        ``out``.
    """
    out = Path(out)
    where = {"device": device, "dtype": dtype, "device_map": device_map}
    (engine or EngineSpec()).check()  # no vLLM to run fails before the model loads
    model, tokenizer = load_model(model_name, **where)  # the study, probe and causal steps share one model
    with _step("1. the persona-effect study, smoke budget (prism study --budget smoke)"):
        study_dir = out / "study" / model_slug(model_name)
        with open_engine(engine, model_name, tokenizer, model, device=device, dtype=dtype) as generator:
            study = run_study(study_dir, model, tokenizer, budget="smoke", progress=progress, engine=generator)
        print(f"Findings on {model_name} (smoke budget; full report: {study.report}):\n{study.format()}\n")

    with _step("2. probes and persona directions, short run (prism probe --per-intent 48 ...)"):
        probe = run_probe_study(
            out / "probe",
            model,
            tokenizer,
            per_intent=48,
            kinds=("logistic", "diff-means"),
            personas=("math", "writing", "safety-monitor", "roleplay"),
            persona_lengths=("min", "long"),
            persona_queries=12,
            progress=progress,
        )
        print(probe.format(PROBE_TARGETS))
        print(
            f"layer curves: {probe.directory / 'figures' / 'probe_knowledge-vs-generation_mean.png'}; report: "
            f"{probe.report}"
        )

    with _step("3. causal tests on knowledge items, short run (prism intervene --placement user -n 24 ...)"):
        # the study's strongest knowledge effect: a long persona in the user message
        causal = run_interventions(
            out / "intervene",
            model,
            tokenizer,
            persona=Condition("random", "long", "user"),
            n_items=24,
            layers=_spread_layers(model_name),
            multiples=(0.0, 1.0, 2.0),
            refusal_items=8,
            progress=progress,
        )
        print(causal.format())
        print(f"patching heatmap: {causal.directory / 'figures' / 'patching_heatmap.png'}; report: {causal.report}")

    with _step(
        f"4. PRISM, short run (prism bootstrap --queries-per-persona {DEMO_QUERIES_PER_PERSONA}; prism train "
        "--labels intents --per-source 6 --teacher-length long; prism compare --budget smoke)"
    ):
        prism_dir = out / "prism"
        verdicts = pipeline.bootstrap(
            prism_dir,
            model_name=model_name,
            config=BootstrapConfig(queries_per_persona=DEMO_QUERIES_PER_PERSONA),
            progress=progress,
            engine=engine,
            **where,
        )
        print(f"bootstrap: {verdicts.headline()} (a judge that follows position agrees on 0%)")
        teacher = DistillConfig(epochs=2, persona_length="long")
        trained = pipeline.train(
            prism_dir,
            labels="intents",
            per_source=6,
            compare_budget="smoke",
            distill_config=teacher,
            progress=progress,
            **where,
        )
        print(trained.format())
        compared = pipeline.compare(
            prism_dir, budget="smoke", systems=DEMO_SYSTEMS, progress=progress, engine=engine, **where
        )
        print(compared.format())
        print(f"PRISM report: {compared.report}")
        print("\nWhat the comparison shows (smoke budget; differences vs base with 95% CIs):")
        print("\n".join(compared.trade_off()))
        print(
            f"The demo's adapter is distilled from {DEMO_QUERIES_PER_PERSONA} queries per persona to fit its time "
            "budget; the recipe that carries the long persona beyond what every long persona shares needs 32 "
            f"per persona (the bootstrap alone about 26 minutes): {FULL_RECIPE}."
        )
    log.info(f"results in {out}")
    return out


@contextmanager
def _step(title: str) -> Iterator[None]:
    """Log the step's title on the way in and its wall time on the way out."""
    log.info(title)
    start = time.perf_counter()
    yield
    log.info(f"{title.split('.')[0]}. finished in {time.perf_counter() - start:.0f} s")


def _spread_layers(model_name: str, count: int = 6) -> list[int]:
    """About ``count`` blocks from first to last, for a quick patching sweep."""
    return spread_layers(AutoConfig.from_pretrained(resolve_model_directory(model_name)[0]).num_hidden_layers, count)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism demo``'s options."""
    add_out(parser, "output directory (default: runs/demo)", Path("runs/demo"))
    add_model(parser)
    add_engine(parser, "the probes, the causal tests, training and the adapter and steering cells")
    add_wandb(parser)


def run_demo_command(args: argparse.Namespace) -> Summary | None:
    """``prism demo``: ``run_demo`` with the command's options."""
    run_demo(
        args.out,
        model_name=args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        progress=args.progress,
        engine=engine_spec(args),
    )
    return None


COMMANDS = (Command("demo", add_demo_arguments, run_demo_command),)
