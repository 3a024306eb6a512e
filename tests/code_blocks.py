"""The code blocks of the README and the docs pages that tests check, selected by one explicit marker.

A fenced block is tested when the line right before its opening fence is ``<!-- test -->`` (an HTML
comment: invisible on GitHub and on the docs site). What a test does with it depends on the
language: Python blocks compile (the README's run, in ``tests/test_readme.py``), shell blocks have
their ``prism`` commands parsed against the command registry (``tests/test_docs.py``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = "<!-- test -->"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its language (the info string's first word) and its text."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marked: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, marked or not, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[index + 1 : end]]
        language = (opening["info"].split() or [""])[0]
        marked = index > 0 and lines[index - 1].strip() == MARKER
        blocks.append(Block(path, index + 1, language, "\n".join(body) + "\n", marked))
        index = end + 1
    return blocks


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence``: the same character, at least as many, nothing else."""
    stripped = line.strip()
    return stripped.startswith(fence) and not stripped.strip(fence[0])


def marked_blocks(path: Path, *languages: str) -> list[Block]:
    """The blocks of ``path`` that carry the marker, of the given languages (all languages when none given)."""
    return [block for block in code_blocks(path) if block.marked and (not languages or block.language in languages)]


def docs_pages() -> list[Path]:
    """Every Markdown page of the docs site."""
    return sorted(DOCS.rglob("*.md"))


def prism_commands(block: Block) -> list[list[str]]:
    """The arguments after ``prism`` of every ``prism`` command a shell block runs.

    Recognised: ``prism ...``, ``.venv/bin/prism ...``, ``python -m prism.cli ...`` and ``torchrun ... -m
    prism.cli ...``, after any ``NAME=value`` assignments, in commands joined by ``&&``, ``||``, ``;`` or
    ``|``; comments and line continuations are understood. Other commands (``pip``, ``bash``, ``python
    bench/...``) are left alone.
    """
    text = block.code.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words, current = [], []
        for token in lexer:
            if set(token) <= set(";&|"):
                words.append(current)
                current = []
            else:
                current.append(token)
        words.append(current)
        for command in words:
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                command = command[1:]
            if not command:
                continue
            if Path(command[0]).name == "prism":
                commands.append(command[1:])
            elif "prism.cli" in command and command[command.index("prism.cli") - 1] == "-m":
                commands.append(command[command.index("prism.cli") + 1 :])
    return commands
