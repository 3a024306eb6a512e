"""Tidy tables on disk: CSV for spreadsheets, the same rows as JSON for programs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

from probes.atomic import atomic_path, write_json


def write_table(path: Path, table: Sequence[Mapping]) -> None:
    """Write ``table`` as CSV (and the same rows as JSON beside it), atomically."""
    path = Path(path)
    columns: list[str] = []
    for row in table:
        columns += [column for column in row if column not in columns]
    with atomic_path(path) as partial:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in table:
                writer.writerow({column: _csv(row.get(column)) for column in columns})
    write_json(path.with_suffix(".json"), list(table))


def _csv(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
