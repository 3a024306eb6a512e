"""How the ``prism`` shell speaks while a command runs: the toolkit's log lines and its progress bars.

The toolkit's modules log through ``logging.getLogger(__name__)`` and configure no handler (the standard
library's practice), so imported without the shell they say nothing below WARNING: Python's last-resort
handler prints warnings and errors. For the length of a command the shell adds one stderr handler to the
toolkit's logger trees (``TOOLKIT_LOGGERS``) at the level ``--quiet`` or ``--verbose`` chooses: the plain
message by default, so the lines read as they always have; level and logger name with ``--verbose``.

Progress bars: the toolkit's own follow the ``progress`` value a command passes (off with ``--quiet``).
transformers' weight-loading bar stays off, but Hugging Face download bars stay on unless ``--quiet`` (or
``HF_HUB_DISABLE_PROGRESS_BARS``) says otherwise, so a first download of a large model shows its progress.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from typing import Iterator

TOOLKIT_LOGGERS = ("probes", "interventions", "prism", "figures")
PLAIN = "%(message)s"
DETAILED = "%(levelname)s %(name)s: %(message)s"


def add_verbosity(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--quiet`` and ``--verbose``, one or neither: on the ``prism`` parser (``top``, default off) and on every
    command's, where they default to what was given before the command's name."""
    group = parser.add_mutually_exclusive_group()
    default = False if top else argparse.SUPPRESS
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="warnings and errors only, no progress bars (results are still printed)",
    )
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="also print debugging lines")


def log_level(quiet: bool = False, verbose: bool = False) -> int:
    """The toolkit's log level: WARNING with ``quiet``, DEBUG with ``verbose``, else INFO."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes (a redirect, a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it once; sys.stderr is read at each record instead
        pass


@contextmanager
def toolkit_logging(level: int) -> Iterator[logging.Handler]:
    """Within the block the toolkit's loggers write to stderr at ``level``; their levels and handlers come back after.

    Args:
        level: a ``logging`` level (``log_level``).

    Yields:
        the stderr handler.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(DETAILED if level <= logging.DEBUG else PLAIN))
    loggers = [logging.getLogger(name) for name in TOOLKIT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, previous in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(previous)


@contextmanager
def download_progress(show: bool) -> Iterator[None]:
    """Within the block transformers draws no weight-loading bar and Hugging Face downloads show theirs if ``show``
    (and ``HF_HUB_DISABLE_PROGRESS_BARS`` is not set); both settings come back after.

    Args:
        show: whether download progress bars are shown.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    loading_bars, download_bars = transformers_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # turns the hub's bars off too
    if show and download_bars:
        enable_progress_bars()
    try:
        yield
    finally:
        if loading_bars:
            transformers_logging.enable_progress_bar()
        (enable_progress_bars if download_bars else disable_progress_bars)()
