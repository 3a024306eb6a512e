"""A user's own items: a JSONL file (one object per line) or a CSV file with a header row.

- ``prompt`` (required): the query text (``question`` is accepted as a synonym).
- ``id``: unique item id (default: the line number).
- ``category``: used for stratified sampling and per-category reports (default ``"all"``).
- ``choices``: for multiple choice, a list of at least two option texts (in CSV: columns
  ``choice_1``, ``choice_2``, ... in order).
- ``answer``: the correct choice as a 0-based index, a letter (``"B"``) or the option text.
- ``turns``: optional list of follow-up user turns after ``prompt`` (JSONL only).

Every other field is kept in the item's ``meta``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from probes.core.errors import ToolkitError
from probes.core.items import LETTERS, Item

__all__ = ["load_user_file"]


def load_user_file(path: str | Path) -> list[Item]:
    """Read items from a user's JSONL or CSV file (schema in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"no dataset file at {path}: check the path")
    try:
        rows = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_csv(path)
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
            line = 0
        except UnicodeDecodeError as whole:  # the offset in the whole file (a reader's is within its chunk)
            line = data[: whole.start].count(b"\n") + 1
        raise ToolkitError(f"{path}: line {line} is not UTF-8 text: save the file as UTF-8") from None
    items = [_user_item(row, line, path) for line, row in rows]
    if not items:
        raise ToolkitError(f"{path}: no items found; the file is empty")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ToolkitError(f"{path}: item id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return items


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ToolkitError(f"{path} line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise ToolkitError(f"{path} line {number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    """The rows of a CSV file with the line each starts on (a quoted field may span lines; blank lines are skipped)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if not header or not any(name.strip() for name in header):
                raise ToolkitError(f"{path}: no header row; the first line must name the columns")
            choice_columns = sorted(
                (name for name in header if name.startswith("choice_")),
                key=lambda name: int(name.split("_", 1)[1]) if name.split("_", 1)[1].isdigit() else 10**6,
            )
            rows = []
            while True:
                line = reader.line_num + 1  # where the next row starts
                values = next(reader, None)
                if values is None:
                    break
                if not values:
                    continue
                if len(values) > len(header):
                    raise ToolkitError(f"{path} line {line}: more fields than header columns")
                row = dict(zip(header, values))
                record = {key: value for key, value in row.items() if not key.startswith("choice_") and value != ""}
                choices = [row[name] for name in choice_columns if row.get(name)]
                if choices:
                    record["choices"] = choices
                rows.append((line, record))
        except csv.Error as error:
            raise ToolkitError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None
    return rows


def _user_item(row: dict, line: int, path: Path) -> Item:
    where = f"{path} line {line}"
    prompt = row.get("prompt", row.get("question"))
    if prompt is None:
        raise ToolkitError(f"{where}: missing required field 'prompt'")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolkitError(f"{where}: empty prompt; every item needs query text")
    choices = row.get("choices")
    answer = row.get("answer")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ToolkitError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if len(choices) > len(LETTERS):
            raise ToolkitError(f"{where}: {len(choices)} choices; at most {len(LETTERS)} (letters A-{LETTERS[-1]})")
        answer = _answer_index(answer, choices, where)
    elif answer is not None:
        raise ToolkitError(f"{where}: 'answer' given without 'choices'")
    turns = row.get("turns") or []
    if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ToolkitError(f"{where}: 'turns' must be a list of non-empty strings")
    return Item(
        id=str(row.get("id", f"{path.stem}/{line}")),
        source=path.stem,
        prompt=prompt,
        category=str(row.get("category", "all")),
        choices=tuple(choices) if choices else None,
        answer=answer,
        turns=(prompt, *turns),
        meta={
            key: value
            for key, value in row.items()
            if key not in {"id", "prompt", "question", "category", "choices", "answer", "turns"}
        },
    )


def _answer_index(answer: object, choices: Sequence[str], where: str) -> int:
    # An option's exact text wins, then a letter, then an index (CSV gives indices as text).
    if isinstance(answer, str):
        text = answer.strip()
        if text in choices:
            return list(choices).index(text)
        if len(text) == 1 and text.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(text.upper())
        if text.isdigit():
            answer = int(text)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    raise ToolkitError(
        f"{where}: 'answer' must be a 0-based index, a letter A-{LETTERS[len(choices) - 1]} or one of the choices"
    )
