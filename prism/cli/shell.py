"""The ``prism`` command line: the registry of commands, the parsers built from it, and ``main``.

The registry names every command with its one-line help and the command-group module that
defines it (a ``Command``: options and the function that runs it). ``main`` reads the command's
name, imports only that group (and the toolkit behind it: torch, TransformerLens), builds the
command's parser, runs the checks its options registered (the persona's) and dispatches; ``prism --help`` imports
nothing heavy. While a command runs, the toolkit's log lines go to stderr at the level ``--quiet``/``--verbose``
choose (``prism.cli.logs``); once it succeeds, ``--wandb`` logs it (``prism.cli.tracking``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

from prism.cli.command import Command
from prism.cli.logs import add_verbosity, download_progress, log_level, toolkit_logging
from prism.cli.tracking import track_run  # it imports wandb itself, only when a run is logged
from probes.core.commandline import current_command, running_command
from probes.core.errors import ToolkitError
from probes.core.locking import directory_lock

DESCRIPTION = "Expert personas, opened up: probes, interventions and PRISM routing."
DISTRIBUTION = "prism-toolkit"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
EXTRAS = {"fastapi": "serve", "uvicorn": "serve"}  # optional packages -> the extra that installs them

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    """A command in the registry: the group module that defines it, its line in ``prism --help``, and whether it
    shares its work among the processes of a ``torchrun`` launch (``probes.core.parallel``)."""

    group: str
    help: str
    parallel: bool = False


COMMANDS: dict[str, Registered] = {
    "demo": Registered(
        "prism.cli.demo", "run the toolkit's story end to end on the embedded model and print a summary"
    ),
    "evaluate": Registered(
        "prism.cli.study", "score one persona condition on a data set; write per-item JSON with a 95% CI"
    ),
    "personas": Registered("prism.cli.study", "list the persona library (built-in and from a file)"),
    "study": Registered(
        "prism.cli.study",
        "the persona-effect study: every task under a grid of persona conditions, with "
        "tables, figures and a report (resumable)",
        parallel=True,
    ),
    "report": Registered(
        "prism.cli.study", "rewrite the tables, figures and report of finished study directories (and compare models)"
    ),
    "record": Registered(
        "prism.cli.probes", "record activations under a persona condition into a resumable on-disk store", parallel=True
    ),
    "probe": Registered(
        "prism.cli.probes",
        "probes and directions: where intent and persona live, layer by layer, with "
        "controls; saves directions and probes",
        parallel=True,
    ),
    "intervene": Registered(
        "prism.cli.interventions",
        "causal tests on knowledge items: activation patching, steering, directional ablation, logit lens",
    ),
    "bootstrap": Registered(
        "prism.cli.router",
        "PRISM stages 1-3: the model writes queries per persona, answers with and without it, and judges both orders",
        parallel=True,
    ),
    "train": Registered(
        "prism.cli.router",
        "PRISM: fit the probe gate (read-out chosen by how it routes sources it "
        "never saw), distil the gated and ungated LoRA adapters, fit the baseline "
        "routers",
    ),
    "route": Registered(
        "prism.cli.router", "answer prompts with PRISM routing, showing the gate's probability and decision for each"
    ),
    "compare": Registered(
        "prism.cli.router",
        "PRISM's Table-1 evaluation: base, expert prompt, ungated LoRA, PRISM, "
        "probe-routed prompt and steering, baseline routers",
        parallel=True,
    ),
    "serve": Registered(
        "prism.cli.serve",
        "serve PRISM over HTTP: an OpenAI-compatible endpoint that routes each "
        "request inside the model and batches requests that arrive together",
    ),
}


def load_command(name: str) -> Command:
    """The ``Command`` registered as ``name``, importing its command-group module.

    Args:
        name: a key of ``COMMANDS``.

    Returns:
        the command's definition (options and the function that runs it).
    """
    group = import_module(COMMANDS[name].group)
    return next(command for command in group.COMMANDS if command.name == name)


def version() -> str:
    """The toolkit's version: the installed distribution's, else (run from a source tree) ``pyproject.toml``'s.

    Returns:
        e.g. ``"0.1.0"``; ``"unknown"`` when neither says.
    """
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        project = PYPROJECT.read_text(encoding="utf-8").split("[project]", 1)[1].split("\n[", 1)[0]
    except (OSError, IndexError):
        return "unknown"
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return found.group(1) if found else "unknown"


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``prism COMMAND: error: MESSAGE (see prism COMMAND
    --help)``, with exit status 2, instead of the usage block before the message; its subcommands' parsers are too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``prism`` parser with the full options of ``names`` (default: every command).

    Args:
        names: the commands whose options to declare; the others get their help line only (no
            group module is imported for them).

    Returns:
        the parser; ``args.command`` names the chosen command.
    """
    names = list(COMMANDS) if names is None else names
    parser = OneLineParser(prog="prism", description=DESCRIPTION)
    parser.add_argument(
        "--version",
        action="version",
        version=f"{DISTRIBUTION} {version()}",
        help="print the toolkit's version and exit",
    )
    add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, registered in COMMANDS.items():
        # argparse %-formats a subcommand's help (for %(prog)s and the like), but a description
        # only when it contains "%(prog)": escape the one, pass the other as written.
        command = load_command(name) if name in names else None
        description = registered.help + (f". {command.description}" if command and command.description else "")
        subparser = sub.add_parser(name, help=registered.help.replace("%", "%%"), description=description)
        if command is not None:
            command.add_arguments(subparser)
        add_verbosity(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``prism`` command.

    Args:
        argv: the arguments after ``prism`` (default: ``sys.argv[1:]``).

    Returns:
        the exit status: 0 on success, 2 on a usage or input error or an output directory another process holds
        (one line on stderr, ``prism COMMAND: error: ...``), 130 when interrupted. The directories a command writes
        into (``args.locked``) are held while it runs (``probes.core.locking``; under torchrun by rank 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _command_named(argv)
    _quiet_transformers()  # before the command's group imports transformers
    try:
        parser = build_parser(chosen)
        args = parser.parse_args(argv)
    except ModuleNotFoundError as error:  # a command group's optional dependency, e.g. the server's web stack
        extra = EXTRAS.get((error.name or "").split(".")[0])
        hint = f"pip install 'prism-toolkit[{extra}]'" if extra else f"pip install {error.name}"
        print(
            f"prism {chosen[0] if chosen else ''}: error: the package {error.name!r} is not installed: {hint}",
            file=sys.stderr,
        )
        return 2
    rank = os.environ.get("RANK", "0")  # under torchrun rank 0 speaks for the run; the others only report errors
    name = f"prism {args.command}" if rank == "0" else f"prism {args.command} (rank {rank})"
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") and not COMMANDS[args.command].parallel:
        shared = ", ".join(command for command, registered in COMMANDS.items() if registered.parallel)
        print(
            f"{name}: error: {args.command} does not share its work among processes; run it without torchrun "
            f"(data-parallel commands: {shared})",
            file=sys.stderr,
        )
        return 2
    if args.quiet and args.verbose:  # one before the command's name, the other after it
        parser.error("--quiet and --verbose cannot be used together")
    args.progress = not args.quiet and rank == "0"  # what commands pass on as ``progress``: bars off with --quiet
    try:
        with (
            _speaking(rank == "0"),
            running_command(["prism", *argv]),
            toolkit_logging(log_level(args.quiet, args.verbose)),
            download_progress(show=not args.quiet),
        ):
            _run(args, rank == "0")
        return 0
    except ToolkitError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, main_rank: bool) -> None:
    """Check the options, run the command, print its summary; then (rank 0, with ``--wandb``) log the run."""
    log.debug("running %s", " ".join(current_command()))
    command = load_command(args.command)
    for check in getattr(args, "checks", ()):  # e.g. the persona options' one check, before any model loads
        check(args)
    started, start = time.time(), time.perf_counter()
    with ExitStack() as held:
        if main_rank:  # the ranks of one torchrun launch share its directories; rank 0 holds them
            for directory in dict.fromkeys(getattr(args, "locked", lambda args: [])(args)):
                held.enter_context(directory_lock(directory))
        summary = command.run(args)
    if summary is not None:
        print(summary.format())
        if getattr(summary, "report", None) is not None:
            print(f"report: {summary.report}")
    elapsed = time.perf_counter() - start
    if elapsed >= 1:
        log.info(f"prism {args.command} finished in {elapsed:.0f}s")
    if getattr(args, "wandb", None) and main_rank:
        log.info(f"logged to Weights & Biases: {track_run(args, since=started)}")


def _command_named(argv: Sequence[str]) -> list[str]:
    """The command ``argv`` names, as a list of none or one: its first argument that is not an option (the options
    before a command's name, ``prism --quiet study``, take no value)."""
    first = next((argument for argument in argv if not argument.startswith("-")), None)
    return [first] if first in COMMANDS else []


@contextmanager
def _speaking(speaks: bool) -> Iterator[None]:
    """Everything as usual, or (a data-parallel run's other ranks, whose commands get ``progress`` off) no output."""
    if speaks:
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        yield


def _quiet_transformers() -> None:
    """transformers' warnings off, as the library reads them when it loads (its progress bars:
    ``download_progress``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
