"""What a ``prism`` subcommand is: a name, its help, its options and the function that runs it.

Each command-group module (``study``, ``probes``, ``interventions``, ``router``, ``demo``)
declares its ``Command`` values in ``COMMANDS``; ``prism.cli.shell`` collects them into the
registry, builds the parser from it and dispatches through it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from probes.core.summary import Summary


@dataclass(frozen=True)
class Command:
    """One ``prism`` subcommand.

    Attributes:
        name: the subcommand, e.g. ``"evaluate"``.
        help: its one line in ``prism --help``, as plain text (a ``%`` needs no escaping).
        add_arguments: declares the command's options on its own parser.
        run: does the work from the parsed options. It returns the run's typed ``Summary`` (the shell
            prints it and where its report is) or None when it printed its own output. Persona
            options have been checked by then (``args.condition``, ``args.library``), before any
            model loads.
        description: the longer text of ``prism NAME --help`` (default: ``help``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Summary | None]
    description: str = ""
