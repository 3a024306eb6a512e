"""The ``prism`` command line: the registry of commands, the parser built from it, and ``main``.

Every command lives in a command-group module as a ``Command`` (name, help, ``add_arguments``,
``run``); this module only collects them, builds one subparser per command, checks the persona
options once and dispatches to the command's ``run``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Mapping, Sequence

import transformers

from prism.cli import demo, interventions, probes, router, study
from prism.cli.command import Command
from prism.cli.options import resolve_persona
from probes.core.errors import ToolkitError

DESCRIPTION = "Expert personas, opened up: probes, interventions and PRISM routing."
GROUPS = (demo, study, probes, interventions, router)
COMMANDS: dict[str, Command] = {command.name: command for group in GROUPS for command in group.COMMANDS}


def build_parser(commands: Mapping[str, Command] = COMMANDS) -> argparse.ArgumentParser:
    """The ``prism`` parser: one subparser per registered command.

    Args:
        commands: the registry, name -> ``Command`` (default: every command).

    Returns:
        the parser; ``args.command`` names the chosen command.
    """
    parser = argparse.ArgumentParser(prog="prism", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands.values():
        # argparse %-formats a subcommand's help (for %(prog)s and the like), but a description
        # only when it contains "%(prog)": escape the one, pass the other as written.
        command.add_arguments(sub.add_parser(command.name, help=command.help.replace("%", "%%"),
                                             description=command.description or command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``prism`` command.

    Args:
        argv: the arguments after ``prism`` (default: ``sys.argv[1:]``).

    Returns:
        the exit status: 0 on success, 2 on a usage or input error (one line on stderr,
        ``prism COMMAND: error: ...``), 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        resolve_persona(args)  # before any command runs, so before any model loads
        _quiet_transformers()
        start = time.perf_counter()
        summary = COMMANDS[args.command].run(args)
        if summary is not None:
            print(summary.format())
            if getattr(summary, "report", None) is not None:
                print(f"report: {summary.report}")
        elapsed = time.perf_counter() - start
        if elapsed >= 1:
            print(f"prism {args.command} finished in {elapsed:.0f}s", file=sys.stderr)
        return 0
    except ToolkitError as error:
        print(f"prism {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prism {args.command}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr)
        return 130


def _quiet_transformers() -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
