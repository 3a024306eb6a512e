"""``prism evaluate``, ``personas``, ``study`` and ``report``: persona conditions, measured."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from interventions.measure.engines import EngineSpec, open_engine
from interventions.measure.evaluate import evaluate
from interventions.measure.judge import make_judge
from interventions.measure.tasks import TASKS
from interventions.study.plan import prompt_formats, resolve_plan
from interventions.study.report import compare_models, summarise_study
from interventions.study.runner import run_study
from prism.cli.command import Command
from prism.cli.options import (
    add_batch_size,
    add_engine,
    add_items,
    add_judge_options,
    add_model,
    add_out,
    add_persona_options,
    add_personas_file,
    add_seed,
    add_wandb,
    csv_list,
    engine_spec,
    load_timed,
    sample_items,
)
from probes.core.errors import ToolkitError
from probes.core.files import figure_format, write_record
from probes.core.models import model_slug
from probes.core.parallel import world
from probes.core.personas import LENGTHS, persona_library
from probes.core.summary import Summary


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism evaluate``'s options."""
    add_model(parser)
    add_items(parser)
    add_persona_options(parser)
    parser.add_argument(
        "--scoring", default="letter", choices=("letter", "cloze"), help="multiple-choice scoring (default: letter)"
    )
    parser.add_argument(
        "--answer-prefix",
        default="Answer:",
        help="text that opens the assistant turn when scoring (default: 'Answer:')",
    )
    parser.add_argument(
        "--normalise",
        choices=("none", "tokens", "chars"),
        help="cloze score normalisation (default: none for letter, tokens for cloze)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="generation length for open questions (default: 64)"
    )
    add_out(parser, "output JSON (default: runs/evaluate/<dataset>_<condition>.json)", kind="file")
    add_engine(parser, "multiple-choice items (scored on the hooked model)")


def run_evaluate(args: argparse.Namespace) -> Summary | None:
    """Score one persona condition on a data set; write per-item JSON and print the mean with its CI."""
    items = sample_items(args)
    if args.max_new_tokens < 1:
        raise ToolkitError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    out = args.out or Path("runs/evaluate") / f"{Path(args.dataset).stem}_{args.condition.slug}.json"
    model, tokenizer = load_timed(args)
    spec = engine_spec(args)
    if any(item.is_multiple_choice for item in items):
        spec = EngineSpec()  # scoring reads the hooked model's log-probabilities; nothing to generate
    with open_engine(spec, args.model, tokenizer, model, device=args.device, dtype=args.dtype) as engine:
        result = evaluate(
            model,
            tokenizer,
            items,
            args.condition,
            scoring=args.scoring,
            answer_prefix=args.answer_prefix,
            normalise=args.normalise,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            personas=args.library,
            seed=args.seed,
            progress=args.progress,
            engine=engine,
        )
    result["dataset"] = args.dataset
    write_record(out, result)
    summary = result["summary"]
    chance = f" (chance {result['chance']:.2f})" if "chance" in result else ""
    print(
        f"{args.dataset} {args.condition.label}: {result['metric']} {summary['mean']:.3f} "
        f"[95% CI {summary['low']:.3f}, {summary['high']:.3f}], n={summary['n']}{chance}"
    )
    print(f"wrote {out}")
    return None


def add_personas_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism personas``'s options."""
    add_personas_file(parser)
    parser.add_argument("--length", choices=LENGTHS, default="min", help="which text to show (default: min)")


def run_personas(args: argparse.Namespace) -> Summary | None:
    """List the persona library: name, kind, category and the text at ``--length``."""
    for persona in persona_library(args.personas_file).values():
        text = persona.texts.get(args.length, "-")
        print(f"{persona.name:<16} {persona.kind:<12} {persona.category or '-':<12} {text[:90]}")
    return None


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism study``'s options."""
    add_model(parser, repeatable=True)
    parser.add_argument(
        "--budget",
        default="default",
        choices=("smoke", "default", "full"),
        help="items per cell and grid: smoke (~4 min), default (~20 min on 2 cores), full (hours)",
    )
    parser.add_argument(
        "--grid",
        choices=("smoke", "default", "full"),
        help="persona conditions; 'full' = all 12 personas, expert and random at every length and placement",
    )
    parser.add_argument("--items", type=int, help="items per cell for every task (overrides the budget)")
    parser.add_argument("--tasks", help=f"comma-separated subset of: {', '.join(TASKS)}")
    parser.add_argument(
        "--formats",
        help="comma-separated prompt formats of the knowledge tasks: plain, qa "
        "(default: plain,qa without a chat template, plain with one)",
    )
    add_personas_file(parser, " (each of them is also run on every task, at each length it has)")
    add_judge_options(parser)
    add_seed(parser)
    add_batch_size(parser)
    add_engine(parser, "multiple-choice tasks (scored on the hooked model)")
    add_out(
        parser,
        "results directory; each model gets a subdirectory (default: runs/study; rerun to resume)",
        Path("runs/study"),
    )
    add_wandb(parser)
    parser.set_defaults(locked=study_directories)


def study_directories(args: argparse.Namespace) -> list[Path]:
    """The directories ``prism study`` writes into, one per ``--model`` (so studies of other models may run beside
    it in the same ``--out``)."""
    return [args.out / model_slug(name) for name in args.models or ["default"]]


def run_study_command(args: argparse.Namespace) -> Summary | None:
    """Run (or resume) the persona-effect study for each ``--model``, then write its tables,
    figures and report; with several models, also the cross-model placement figure."""
    tasks = csv_list(args.tasks)
    formats = csv_list(args.formats)
    # what can be refused is refused before any model loads: the plan, formats, personas file, judge and engine
    resolve_plan(args.budget, tasks, args.items, args.grid)
    prompt_formats(formats, chat_template=True)
    personas = persona_library(args.personas_file)
    options = dict(api_key_env=args.judge_api_key_env, concurrency=args.judge_concurrency, deadline=args.judge_timeout)
    asked = args.judge_url or args.judge_model or args.judge_api_key_env
    judge = make_judge(args.judge_url, args.judge_model, **options) if asked else None
    spec = engine_spec(args)
    spec.check()
    directories = []
    for name, directory in zip(args.models or ["default"], study_directories(args)):
        start = time.perf_counter()
        args.model = name
        model, tokenizer = load_timed(args)
        with open_engine(spec, name, tokenizer, model, device=args.device, dtype=args.dtype) as engine:
            summary = run_study(
                directory,
                model,
                tokenizer,
                budget=args.budget,
                tasks=tasks,
                items=args.items,
                grid=args.grid,
                formats=formats,
                personas=personas,
                judge=judge,
                seed=args.seed,
                batch_size=args.batch_size,
                progress=args.progress,
                engine=engine,
            )
        directories.append(directory)
        if not world().is_main:
            continue  # under torchrun rank 0 speaks
        print(f"{name}: study finished in {time.perf_counter() - start:.0f}s; report: {summary.report}")
    if len(directories) > 1 and world().is_main:
        print(f"compared models: {compare_models(directories, args.out / 'fig1d_placement_models.png')}")
    return None


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism report``'s options."""
    parser.add_argument("directories", nargs="+", type=Path, help="study directories (one per model)")
    parser.add_argument(
        "--compare",
        type=Path,
        help="also write the cross-model placement figure here; the suffix picks the "
        "format (.png, which also writes a .pdf beside it, .pdf or .svg)",
    )


def run_report(args: argparse.Namespace) -> Summary | None:
    """Rewrite the tables, figures and report of finished study directories."""
    if args.compare:
        figure_format(args.compare)  # a suffix no figure can have is refused before any report is rewritten
    for directory in args.directories:
        summary = summarise_study(directory)
        print(f"wrote {summary.report} with its tables and figures")
    if args.compare:
        print(f"compared models: {compare_models(args.directories, args.compare)}")
    return None


COMMANDS = (
    Command("evaluate", add_evaluate_arguments, run_evaluate),
    Command("personas", add_personas_arguments, run_personas),
    Command("study", add_study_arguments, run_study_command),
    Command("report", add_report_arguments, run_report),
)
