"""``prism bootstrap``, ``train``, ``route`` and ``compare``: PRISM in one working directory.

``bootstrap`` records its ``--model`` in the working directory (``prism.json``); ``train``,
``route`` and ``compare`` take no ``--model`` and read it from there.
"""

from __future__ import annotations

import argparse

from prism import pipeline
from prism.bootstrap import BootstrapConfig
from prism.cli.command import Command
from prism.cli.options import (
    add_batch_size,
    add_engine,
    add_judge_options,
    add_model,
    add_persona_names,
    add_precision,
    add_prism_dir,
    add_seed,
    add_wandb,
    csv_list,
    engine_spec,
    judge_settings,
)
from prism.compare import SYSTEMS
from prism.distill import DistillConfig
from probes.core.errors import ToolkitError
from probes.core.personas import LENGTHS
from probes.core.summary import Summary

FROM_DIRECTORY = (
    "No --model: the model is the one recorded in the PRISM working directory (--out) by `prism bootstrap`."
)


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism bootstrap``'s options."""
    add_prism_dir(parser)
    add_model(parser)
    parser.add_argument("--queries-per-persona", type=int, default=8, help="queries kept per persona (default: 8)")
    add_persona_names(
        parser,
        "whose queries the model writes",
        "; --personas may name them, and the working directory keeps them for train, route and "
        "compare (without the file: the directory's own)",
    )
    parser.add_argument("--answer-tokens", type=int, default=64, help="tokens per answer (default: 64)")
    add_seed(parser)
    add_batch_size(parser)
    add_engine(parser)
    add_wandb(parser)


def run_bootstrap(args: argparse.Namespace) -> Summary | None:
    """Stages 1-3 into the working directory; print the persona's win rates."""
    config = BootstrapConfig(
        queries_per_persona=args.queries_per_persona,
        answer_tokens=args.answer_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    summary = pipeline.bootstrap(
        args.out,
        model_name=args.model,
        config=config,
        personas=csv_list(args.personas),
        library=args.library if args.personas_file else None,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        progress=args.progress,
        engine=engine_spec(args),
    )
    return summary


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism train``'s options."""
    add_prism_dir(parser)
    add_precision(parser)
    parser.add_argument(
        "--labels",
        default="bootstrap",
        choices=("bootstrap", "intents"),
        help="gate labels: the bootstrap's persona wins (the paper) or intents (knowledge -> base; default: bootstrap)",
    )
    parser.add_argument(
        "--verdict",
        default="both",
        choices=("both", "debiased"),
        help="bootstrap label rule: the persona wins both orders (the paper; default), or its preference "
        "summed over both orders is positive",
    )
    parser.add_argument(
        "--gate",
        choices=("logistic", "mlp"),
        help="gate kind (default: chosen with the read-out and shrinkage by how it routes unseen sources)",
    )
    parser.add_argument("--max-block", type=int, default=3, help="sweep the gate over blocks 0..k (default: 3)")
    parser.add_argument("--layer", type=int, help="fix the gate's block instead of choosing it on unseen sources")
    parser.add_argument(
        "--position",
        choices=("last", "mean", "query"),
        help="fix the read position instead of choosing it on unseen sources",
    )
    parser.add_argument(
        "--per-source",
        type=int,
        default=24,
        help="with --labels intents: queries per source, each source held out whole in turn (default: 24)",
    )
    parser.add_argument(
        "--per-intent", type=int, help="with --labels intents: cap on queries per intent (default: none)"
    )
    parser.add_argument(
        "--exam-stems",
        type=int,
        default=200,
        metavar="N",
        help="with --labels intents: MMLU stems outside the gate's data that the exam check routes, by the gate "
        "fitted without MMLU and by the deployed gate (default: 200; 0: no check)",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="FILE",
        help="with --labels intents: a .jsonl/.csv of further queries whose category is their intent, "
        "e.g. 'knowledge'; each file is one more source (repeatable)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DistillConfig.epochs,
        help=f"distillation epochs (default: {DistillConfig.epochs})",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=DistillConfig.learning_rate,
        help=f"distillation learning rate (AdamW; default: {DistillConfig.learning_rate:g})",
    )
    parser.add_argument(
        "--retain-weight",
        type=float,
        default=DistillConfig.retain_weight,
        help="weight of the term that keeps the adapted model's next-token distributions on the gate's "
        f"base-path queries close to the base model's (default: {DistillConfig.retain_weight:g}; 0 turns it off)",
    )
    parser.add_argument(
        "--teacher-length",
        default=DistillConfig.persona_length,
        choices=LENGTHS,
        help="length of the persona text in the distillation teacher's prompt (and of the steering "
        "vector's persona); the long persona carries more of itself to held-out queries on the "
        f"embedded model, see docs/results.md (default: {DistillConfig.persona_length})",
    )
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank; default: 16)")
    parser.add_argument(
        "--distill-batch-size",
        type=int,
        default=DistillConfig.batch_size,
        help=f"samples per distillation optimiser step (default: {DistillConfig.batch_size})",
    )
    parser.add_argument(
        "--distill-micro-batch-size",
        type=int,
        help="samples per distillation forward pass, in padded batches; a step accumulates the gradients "
        "of its micro-batches (default: the whole step at once; lower it if memory runs out)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in distillation's backward pass: less memory, about a third more compute",
    )
    parser.add_argument(
        "--budget",
        default="default",
        choices=("smoke", "default"),
        help="the comparison budget whose items the gate must not see; the intent sources asking what its "
        "knowledge sets ask (geo:continent, geo:currency, geo:city) are always left out (default: default)",
    )
    add_seed(parser, "split and training seed")
    add_wandb(parser)


def run_train(args: argparse.Namespace) -> Summary | None:
    """Fit the gate, distil the adapters and fit the baseline routers; print the gate's quality."""
    return pipeline.train(
        args.out,
        labels=args.labels,
        verdict=args.verdict,
        gate_kind=args.gate,
        max_block=args.max_block,
        layer=args.layer,
        position=args.position,
        per_intent=args.per_intent,
        per_source=args.per_source,
        extra=args.extra,
        compare_budget=args.budget,
        exam_stems=args.exam_stems,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        progress=args.progress,
        distill_config=distill_config(args),
    )


def distill_config(args: argparse.Namespace) -> DistillConfig:
    """The distillation settings ``prism train``'s options ask for."""
    micro = args.distill_micro_batch_size
    if min(args.rank, args.epochs, args.distill_batch_size) < 1 or (micro is not None and micro < 1):
        raise ToolkitError("--rank, --epochs, --distill-batch-size and --distill-micro-batch-size must be at least 1")
    return DistillConfig(
        rank=args.rank,
        alpha=2 * args.rank,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        retain_weight=args.retain_weight,
        batch_size=args.distill_batch_size,
        micro_batch_size=micro,
        gradient_checkpointing=args.gradient_checkpointing,
        persona_length=args.teacher_length,
        seed=args.seed,
    )


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism route``'s options."""
    add_prism_dir(parser, lock=False)  # route only reads it
    add_precision(parser)
    parser.add_argument("prompts", nargs="+", help="prompts to answer")
    parser.add_argument(
        "--via",
        default="adapter",
        choices=pipeline.VIA,
        help="what the persona path is: the gated adapter (default), the steering vector, or a persona prompt",
    )
    parser.add_argument(
        "--persona",
        default="helpful",
        help="persona of the prompt path with --via prompt: a built-in one or one of the --personas-file "
        "the directory was bootstrapped with (default: helpful)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default: 64)")


def run_route(args: argparse.Namespace) -> Summary | None:
    """Answer the prompts with routing, each with the gate's probability and decision."""
    for row in pipeline.route(
        args.out,
        args.prompts,
        via=args.via,
        persona=args.persona,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
    ):
        sign = ">=" if row["routed"] else "<"
        print(
            f"[gate p={row['probability']:.3f} {sign} {row['threshold']:.3f} -> {row['via']}] "
            f"{row['prompt']}\n{row['answer']}\n"
        )
    return None


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism compare``'s options."""
    add_prism_dir(parser)
    add_precision(parser)
    parser.add_argument(
        "--budget", default="default", choices=("smoke", "default"), help="items per data set (default: default)"
    )
    parser.add_argument("--systems", help="comma-separated systems (default: all); see docs/prism.md")
    add_judge_options(parser)
    add_seed(parser)
    add_engine(
        parser, "the adapter and steering systems (ungated LoRA, PRISM, probe -> steering, the baseline routers)"
    )
    add_wandb(parser)


def run_compare(args: argparse.Namespace) -> Summary | None:
    """The Table-1 evaluation; print the comparison table."""
    return pipeline.compare(
        args.out,
        budget=args.budget,
        systems=csv_list(args.systems) or list(SYSTEMS),
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        judge=judge_settings(args),
        progress=args.progress,
        engine=engine_spec(args),
    )


COMMANDS = (
    Command(
        "bootstrap",
        add_bootstrap_arguments,
        run_bootstrap,
        "The working directory (--out) records --model; train, route and compare read it from there.",
    ),
    Command("train", add_train_arguments, run_train, FROM_DIRECTORY),
    Command("route", add_route_arguments, run_route, FROM_DIRECTORY),
    Command("compare", add_compare_arguments, run_compare, FROM_DIRECTORY),
)
