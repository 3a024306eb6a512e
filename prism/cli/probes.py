"""``prism record`` and ``prism probe``: reading the model's activations."""

from __future__ import annotations

import argparse
from pathlib import Path

from prism.cli.command import Command
from prism.cli.options import (
    add_batch_size,
    add_items,
    add_model,
    add_out,
    add_persona_names,
    add_persona_options,
    add_seed,
    add_wandb,
    csv_list,
    layer_list,
    load_timed,
    sample_items,
)
from probes.core.errors import ToolkitError
from probes.core.parallel import world
from probes.core.rendering import render_items
from probes.core.summary import Summary
from probes.passes import residual_hooks
from probes.recording import record_activations
from probes.study import persona_conditions, run_probe_study


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism record``'s options."""
    add_model(parser)
    add_items(parser)
    add_persona_options(parser)
    parser.add_argument("--hooks", help="comma-separated hook points (default: every block's residual output)")
    parser.add_argument("--layers", help="comma-separated block indices, shorthand for their residual outputs")
    parser.add_argument(
        "--positions",
        default="last",
        choices=("last", "mean", "all"),
        help="which token positions to keep (default: last)",
    )
    parser.add_argument("--shard-size", type=int, default=256, help="prompts per shard file (default: 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    add_out(parser, "store directory (re-run the same command to resume)", required=True)


def run_record(args: argparse.Namespace) -> Summary | None:
    """Record activations under one persona condition into a resumable store."""
    items = sample_items(args)
    if args.hooks and args.layers:
        raise ToolkitError("give --hooks or --layers, not both")
    layers = layer_list(args.layers)
    model, tokenizer = load_timed(args)
    hooks = None
    if args.hooks:
        hooks = [hook.strip() for hook in args.hooks.split(",") if hook.strip()]
    elif layers is not None:
        hooks = residual_hooks(model, layers)
    prompts = render_items(tokenizer, items, args.condition, personas=args.library, seed=args.seed)
    store = record_activations(
        model,
        tokenizer,
        prompts,
        args.out,
        hooks=hooks,
        positions=args.positions,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        world=world(),
        progress=args.progress,
        metadata={"dataset": args.dataset, "n": args.n, "seed": args.seed, "condition": args.condition.to_dict()},
    )
    print(f"recorded {len(store)} prompts x {len(store.hooks)} hooks ({store.positions} positions) into {store.path}")
    return None


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism probe``'s options."""
    add_model(parser)
    parser.add_argument(
        "--per-intent", type=int, default=160, help="queries per intent: knowledge, generation, harmful (default: 160)"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="FILE",
        help="a .jsonl/.csv of further queries whose category is their intent label (repeatable)",
    )
    parser.add_argument("--layers", help="comma-separated block indices (default: every block)")
    parser.add_argument(
        "--probes", default="logistic,diff-means,lda", help="probe kinds (default: logistic,diff-means,lda)"
    )
    add_persona_names(parser, "for persona directions", "; --personas may name them")
    parser.add_argument("--persona-lengths", default="min,short,long", help="persona lengths (default: min,short,long)")
    parser.add_argument(
        "--persona-queries", type=int, default=24, help="queries recorded under every persona (default: 24)"
    )
    add_seed(parser, "split and sampling seed")
    add_batch_size(parser, 16)
    add_out(parser, "output directory (default: runs/probe; rerun to resume)", Path("runs/probe"))
    add_wandb(parser)


def run_probe(args: argparse.Namespace) -> Summary | None:
    """Run (or resume) the probe study and print the earliest decodable layer of each target."""
    layers = layer_list(args.layers)
    kinds, personas, lengths = csv_list(args.probes), csv_list(args.personas), csv_list(args.persona_lengths)
    persona_conditions(personas, lengths, args.library)  # an unknown persona or length fails before the model loads
    model, tokenizer = load_timed(args)
    summary = run_probe_study(
        args.out,
        model,
        tokenizer,
        per_intent=args.per_intent,
        extra=args.extra,
        layers=layers,
        kinds=kinds,
        personas=personas,
        library=args.library,
        persona_lengths=lengths,
        persona_queries=args.persona_queries,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    return summary


COMMANDS = (
    Command("record", add_record_arguments, run_record),
    Command("probe", add_probe_arguments, run_probe),
)
