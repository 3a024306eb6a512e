"""What a ``prism`` subcommand is: a name, its help, its options and the function that runs it.

Each command-group module (``study``, ``probes``, ``interventions``, ``router``, ``demo``)
declares its ``Command`` values in ``COMMANDS``; ``prism.cli.shell`` names every command, its
one-line help and its group module in the registry, and imports a group (and the toolkit behind
it) only when one of its commands runs, so ``prism --help`` answers at once.
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
        add_arguments: declares the command's options on its own parser.
        run: does the work from the parsed options. It returns the run's typed ``Summary`` (the shell
            prints it and where its report is) or None when it printed its own output. Persona
            options have been checked by then (``args.condition``, ``args.library``), before any
            model loads.
        description: what ``prism NAME --help`` adds after the command's line in the registry.
    """

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Summary | None]
    description: str = ""
