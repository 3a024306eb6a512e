"""The command-line reference as Markdown, built from the registry: never copied by hand.

``reference_markdown`` gives ``prism --help``, a table of every registered command with its line in
the registry, and each command's full ``prism COMMAND --help``, as argparse prints it. The docs site
renders it on its CLI page (``docs/hooks.py``), so the page changes whenever an option does.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from typing import Iterator

from prism.cli.shell import COMMANDS, build_parser

WIDTH = 100  # columns of the help text, whatever the terminal that builds the docs


def command_help(name: str, width: int = WIDTH) -> str:
    """``prism NAME --help`` as argparse prints it, at ``width`` columns.

    Args:
        name: a registered command, e.g. ``"evaluate"``.
        width: the help text's width in columns.

    Returns:
        the help text, usage line first.
    """
    with _columns(width):
        return _subparser(build_parser([name]), name).format_help()


def top_help(width: int = WIDTH) -> str:
    """``prism --help`` at ``width`` columns (imports no command group)."""
    with _columns(width):
        return build_parser([]).format_help()


def reference_markdown(width: int = WIDTH) -> str:
    """The whole reference: ``prism --help``, a table of the commands, then one section per command.

    Args:
        width: the help texts' width in columns.

    Returns:
        Markdown, each command under a ``## prism NAME`` heading with its help in a ``text`` block.
    """
    lines = [
        "```text",
        top_help(width).rstrip(),
        "```",
        "",
        "| command | what it does | data-parallel under torchrun |",
        "|---|---|---|",
    ]
    for name, registered in COMMANDS.items():
        help_line = registered.help.replace("|", "\\|")
        lines.append(f"| [`prism {name}`](#prism-{name}) | {help_line} | {'yes' if registered.parallel else ''} |")
    for name in COMMANDS:
        lines += ["", f"## prism {name}", "", "```text", command_help(name, width).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name`` inside the ``prism`` parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help at ``$COLUMNS``: set it for the block, then put back what was there."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
