"""A command line as records give it: every secret on it masked.

``running_command`` says what the command line is while a command runs (the ``prism`` shell
wraps every command in it: ``prism`` and the arguments after it, the same whichever way the
command was launched); ``current_command`` reads it, or ``sys.argv`` outside any command, and
``command_scope`` tells one command's run from the next (the models a record names are those
loaded by its own command).
This module imports nothing heavy, so that ``prism --help`` stays quick.

Masked (``***``): the value of an option whose name has a word such as key, token, password or
secret (``--judge-api-key-env X``, ``--hf-token=X``; words are split at ``-`` and ``_``, and a word
ending in one counts: ``--apikey``), anything shaped like a well-known API key (``sk-...``,
``hf_...``, ``ghp_...``) wherever it stands, and a URL query's ``token=``, ``key=``, ``password=``
values; a URL's ``user:password@`` is dropped. ``--max-new-tokens 48`` stays as it is: ``tokens``
names a count, not a token.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

__all__ = ["MASK", "command_line", "command_scope", "current_command", "mask_text", "names_secret", "running_command"]

MASK = "***"
SECRET_WORDS = (
    "key",
    "keys",
    "token",
    "password",
    "passwords",
    "passwd",
    "secret",
    "secrets",
    "credential",
    "credentials",
)
_SECRET_VALUE = re.compile(r"\b(?:sk-|hf_|gh[pousr]_|github_pat_|xox[abpr]-|AKIA)[A-Za-z0-9_\-]{16,}")
_URL_USER = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")
_QUERY_SECRET = re.compile(
    r"([?&][^=&#\s]*(?:key|token|secret|password|passwd|signature|sig)[^=&#\s]*=)[^&#\s]*", re.IGNORECASE
)
_running: list[str] | None = None
_scope, _scopes = 0, 0  # the running command's number (0: none), and how many have started


@contextmanager
def running_command(argv: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, ``current_command`` is ``argv``, masked; the previous command line comes back after.

    Args:
        argv: the program and its arguments, e.g. ``["prism", "study", "--model", "default"]``.

    Yields:
        the command line as records give it.
    """
    global _running, _scope, _scopes
    previous = _running, _scope
    _scopes += 1
    _running, _scope = command_line(argv), _scopes
    try:
        yield list(_running)
    finally:
        _running, _scope = previous


def command_scope() -> int:
    """The number of the command running now (``running_command``; each run has its own), 0 outside any."""
    return _scope


def current_command() -> list[str]:
    """The command line of the command running now (``running_command``), else ``sys.argv``; masked."""
    return list(_running) if _running is not None else command_line(sys.argv)


def command_line(argv: Sequence[str]) -> list[str]:
    """``argv`` with its secrets masked (see the module docstring).

    Args:
        argv: the arguments, program first.

    Returns:
        the masked arguments, as strings; the value after a secret option is masked unless it starts with ``-``.
    """
    masked: list[str] = []
    secret_next = False
    for argument in map(str, argv):
        if secret_next and not argument.startswith("-"):
            masked.append(MASK)
            secret_next = False
            continue
        secret_next = False
        option, equals, _ = argument.partition("=")
        if argument.startswith("-") and names_secret(option):
            masked.append(f"{option}={MASK}" if equals else argument)
            secret_next = not equals
            continue
        masked.append(mask_text(argument))
    return masked


def names_secret(option: str) -> bool:
    """Whether option ``option`` (``--hf-token``) takes a secret: a word of its name ends with one of
    ``SECRET_WORDS``."""
    words = re.split(r"[-_.]+", option.lstrip("-").lower())
    return any(word.endswith(secret) for word in words for secret in SECRET_WORDS)


def mask_text(text: str) -> str:
    """``text`` with a URL's ``user:password@`` dropped, a URL query's secret values and API-key-shaped words masked."""
    text = _URL_USER.sub(r"\1", text)
    text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
    return _SECRET_VALUE.sub(MASK, text)
