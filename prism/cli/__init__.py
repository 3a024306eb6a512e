"""The ``prism`` command line (the shell: the toolkit's top layer).

One module per command group, each declaring its ``Command`` values:

- ``study``: ``evaluate``, ``personas``, ``study``, ``report``
- ``probes``: ``record``, ``probe``
- ``interventions``: ``intervene``
- ``router``: ``bootstrap``, ``train``, ``route``, ``compare``
- ``demo``: ``demo`` (and ``run_demo``, the story end to end)

``options`` declares the shared options once (``--model``, ``--seed``, ``--out``,
``--batch-size`` and the persona options, with their one check); ``shell`` holds the registry,
builds the parser from it and dispatches (``main``, the ``prism`` entry point).
"""

from prism.cli.command import Command
from prism.cli.demo import run_demo
from prism.cli.shell import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "Command", "build_parser", "main", "run_demo"]
