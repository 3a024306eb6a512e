"""The ``prism`` command line (the shell: the toolkit's top layer).

One module per command group, each declaring its ``Command`` values:

- ``study``: ``evaluate``, ``personas``, ``study``, ``report``
- ``probes``: ``record``, ``probe``
- ``interventions``: ``intervene``
- ``router``: ``bootstrap``, ``train``, ``route``, ``compare``
- ``serve``: ``serve`` (the HTTP server, ``prism.server``)
- ``demo``: ``demo`` (and ``run_demo``, the story end to end)

``options`` declares the shared options once (``--model``, ``--seed``, ``--out``,
``--batch-size``, ``--wandb`` and the persona options, with their one check); ``logs`` sets how a
command speaks (``--quiet``, ``--verbose``), ``tracking`` logs a finished run to Weights & Biases;
``shell`` holds the registry,
builds the parsers from it and dispatches (``main``, the ``prism`` entry point), importing a
command group only when one of its commands runs.
"""

from typing import TYPE_CHECKING

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "prism.cli.command": ("Command",),
        "prism.cli.demo": ("run_demo",),
        "prism.cli.shell": ("COMMANDS", "build_parser", "load_command", "main"),
    },
)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_layering.py keeps it equal to the lazy map
    from prism.cli.command import Command
    from prism.cli.demo import run_demo
    from prism.cli.shell import COMMANDS, build_parser, load_command, main
