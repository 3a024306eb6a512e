"""``prism serve``: an OpenAI-compatible HTTP server over a trained PRISM working directory (``prism.server``).

The model is the one recorded in the working directory (``--out``); ``--gate``, ``--adapter``,
``--ungated-adapter`` and ``--steering`` replace the directory's files (with ``--model`` when
``--out`` is no PRISM directory). The API key, when one is required, is read from the
environment variable ``--api-key-env`` names, so it never appears on a command line or in logs.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from prism.cli.command import Command
from prism.cli.options import add_engine, add_precision, add_prism_dir, engine_spec, load_timed, positive_int
from prism.server.launch import build_app, serve, served_files
from prism.server.limits import Limits
from prism.server.modes import MODES
from prism.server.vllm_launch import build_vllm_app
from probes.core.errors import ToolkitError
from probes.core.summary import Summary


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``prism serve``'s options."""
    add_prism_dir(parser, lock=False)  # serving only reads it
    parser.add_argument(
        "--model",
        default=None,
        help="the model (default: the one recorded in --out by `prism bootstrap`; give it with --gate "
        "when --out is no PRISM directory)",
    )
    add_precision(parser)
    files = parser.add_argument_group("trained files (default: those of --out)")
    files.add_argument("--gate", help="the gate file (gate.safetensors)")
    files.add_argument("--adapter", help="the gated adapter's folder (mode prism)")
    files.add_argument("--ungated-adapter", help="the ungated adapter's folder (mode always)")
    files.add_argument("--steering", help="the steering vector file (mode steering)")
    parser.add_argument(
        "--mode",
        default="prism",
        choices=tuple(MODES),
        help="the mode of requests whose model names no mode: "
        + "; ".join(f"{name}: {what}" for name, what in MODES.items())
        + " (default: prism)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="the most requests decoded together in one batch (default: 16)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for others to join its batch (default: 10)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=256, help="the most requests waiting for a batch; more get 503 (default: 256)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="tokens per answer when a request gives no max_tokens (default: 256)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the model's arithmetic (default: torch's choice, one per core; on cores "
        "shared with other work, 1 avoids threads waiting on each other)",
    )
    limits = parser.add_argument_group("limits on what one request or connection may cost")
    limits.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=Limits.max_body_bytes,
        metavar="BYTES",
        help=f"the largest request body; larger ones get 413 while they arrive (default: {Limits.max_body_bytes})",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=Limits.body_timeout,
        metavar="SECONDS",
        help="seconds a request's body may take to arrive; slower ones get 408 and the connection is "
        f"closed (default: {Limits.body_timeout:g})",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=Limits.keep_alive_timeout,
        metavar="SECONDS",
        help="seconds a connection may stay idle, or take to send a request's head, before it is "
        f"closed (default: {Limits.keep_alive_timeout:g})",
    )
    limits.add_argument(
        "--max-connections",
        type=positive_int,
        default=Limits.max_connections,
        metavar="N",
        help="open connections (and requests in progress) at most; beyond it requests get 503 "
        f"(default: {Limits.max_connections})",
    )
    limits.add_argument(
        "--max-messages",
        type=positive_int,
        default=Limits.max_messages,
        metavar="N",
        help=f"messages in one chat request at most (default: {Limits.max_messages})",
    )
    limits.add_argument(
        "--max-message-chars",
        type=positive_int,
        default=Limits.max_message_chars,
        metavar="N",
        help="characters in one message, or one completion prompt, at most; prompts longer than the "
        "model's context could hold are refused before they are tokenised whatever this is "
        f"(default: {Limits.max_message_chars})",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require the API key held in environment variable NAME (Authorization: Bearer KEY)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="the server's log level (default: info)",
    )
    add_engine(parser, "mode steering and the gate pass (blocks 0..k, in this process)")


def run_serve(args: argparse.Namespace) -> Summary | None:
    """Load the model and its trained files, then serve until interrupted."""
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key.strip():
            raise ToolkitError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if not 0 <= args.port <= 65535:
        raise ToolkitError(f"--port must be in 0..65535, got {args.port}")
    for name in ("body_timeout", "keep_alive_timeout"):
        if not getattr(args, name) > 0:
            raise ToolkitError(f"--{name.replace('_', '-')} must be above 0 seconds, got {getattr(args, name)}")
    if args.threads is not None:
        if args.threads < 1:
            raise ToolkitError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.model, files = served_files(
        args.out,
        model_name=args.model,
        gate=args.gate,
        adapter=args.adapter,
        ungated=args.ungated_adapter,
        steering=args.steering,
    )
    spec = engine_spec(args)
    if spec.kind == "vllm" and args.mode == "steering":
        raise ToolkitError("mode steering adds a vector inside the model's forward, which vLLM cannot: use --engine hf")
    model, tokenizer = load_timed(args)
    limits = Limits(
        args.max_body_bytes,
        args.body_timeout,
        args.keep_alive_timeout,
        args.max_connections,
        args.max_messages,
        args.max_message_chars,
    )
    if spec.kind == "vllm":  # vLLM decodes; --max-batch-size bounds the requests answered at once
        app = build_vllm_app(
            model,
            tokenizer,
            files,
            model_name=args.model,
            spec=spec,
            mode=args.mode,
            max_concurrency=args.max_batch_size,
            max_queue=args.max_queue,
            max_tokens=args.max_tokens,
            api_key=api_key,
            device=args.device,
            dtype=args.dtype,
            limits=limits,
        )
    else:
        app = build_app(
            model,
            tokenizer,
            files,
            model_name=args.model,
            mode=args.mode,
            max_batch_size=args.max_batch_size,
            batch_wait_ms=args.batch_wait_ms,
            max_queue=args.max_queue,
            max_tokens=args.max_tokens,
            api_key=api_key,
            limits=limits,
        )
    key = f"; API key required (from ${args.api_key_env})" if api_key else ""
    print(
        f"prism serve: {args.model}, default mode {args.mode}, on http://{args.host}:{args.port}/v1 "
        f"(batches of up to {args.max_batch_size}){key}",
        file=sys.stderr,
    )
    serve(app, args.host, args.port, log_level=args.log_level)
    return None


COMMANDS = (
    Command(
        "serve",
        add_serve_arguments,
        run_serve,
        "Each request's route is read inside the model in its answering prefill and returned with the answer "
        "(the 'prism' field and the X-Prism-Route header). Needs the serve extra: pip install 'prism-toolkit[serve]'.",
    ),
)
