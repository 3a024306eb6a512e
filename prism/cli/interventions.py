"""``prism intervene``: causal tests of the persona's effect on knowledge items."""

from __future__ import annotations

import argparse
from pathlib import Path

from interventions.intervene import check_persona, run_interventions
from prism.cli.command import Command
from prism.cli.options import (
    PersonaOptions,
    add_batch_size,
    add_model,
    add_out,
    add_persona_options,
    add_seed,
    add_wandb,
    layer_list,
    load_timed,
)
from probes.core.errors import ToolkitError
from probes.core.prompts import RANDOM_PERSONA
from probes.core.summary import Summary

PERSONA = PersonaOptions(default=RANDOM_PERSONA, specials=(RANDOM_PERSONA,), length="long", base_system=False)


def add_intervene_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism intervene``'s options."""
    add_model(parser)
    add_persona_options(parser, PERSONA)
    parser.add_argument("-n", type=int, default=48, help="capital-city items (default: 48)")
    parser.add_argument("--layers", help="comma-separated blocks to patch (default: eight spread over the model)")
    parser.add_argument(
        "--refusal-items",
        type=int,
        default=12,
        help="HarmBench requests for refusal under steering; 0 skips it (default: 12)",
    )
    parser.add_argument(
        "--steer-layer",
        type=int,
        help="block after which to steer and ablate (default: the earliest "
        "block where patching recovers a majority of the effect)",
    )
    add_seed(parser)
    add_batch_size(parser)
    add_out(parser, "output directory (default: runs/intervene)", Path("runs/intervene"))
    add_wandb(parser)


def run_intervene(args: argparse.Namespace) -> Summary | None:
    """Patching, steering, ablation, attention and the logit lens; print the headline numbers."""
    if args.n < 2:
        raise ToolkitError(f"-n must be at least 2, got {args.n}")
    layers = layer_list(args.layers)
    if args.refusal_items < 0:
        raise ToolkitError(f"--refusal-items must be 0 or more, got {args.refusal_items}")
    check_persona(args.condition, args.library)  # before the model loads
    model, tokenizer = load_timed(args)
    summary = run_interventions(
        args.out,
        model,
        tokenizer,
        persona=args.condition,
        personas=args.library,
        n_items=args.n,
        layers=layers,
        steer_layer=args.steer_layer,
        refusal_items=args.refusal_items,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    return summary


COMMANDS = (Command("intervene", add_intervene_arguments, run_intervene),)
