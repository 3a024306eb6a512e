"""An append-only JSONL record of finished work, keyed by what was computed.

A study writes one line per scored or generated prompt as soon as its batch finishes, so an
interrupted run loses at most the batch in flight and a rerun skips everything on record. The
key hashes everything the outcome depends on (prompt text, options, decoding settings), so
identical prompts met in different cells of a grid are computed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping


def work_key(**parts) -> str:
    """A stable hash of the JSON-serialisable ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by an interruption: its work is simply redone
                if isinstance(record, dict) and "key" in record:
                    self._records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: str) -> dict:
        return self._records[key]

    def add(self, records: Iterable[Mapping]) -> None:
        """Append records (each with a ``key``) and flush them to disk."""
        lines = []
        for record in records:
            self._records[record["key"]] = dict(record)
            lines.append(json.dumps(record, ensure_ascii=False))
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write("\n")  # never glue a record onto a line cut off earlier
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
