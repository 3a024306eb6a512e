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
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from probes.core.parallel import World

T = TypeVar("T")


def work_key(**parts) -> str:
    """A stable hash of the JSON-serialisable ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class Ledger:
    """The records of one ledger file, by key; appending flushes each batch to disk.

    Args:
        path: the ledger's JSONL file (need not exist yet).
        world: the processes sharing the work (default: this one alone). In a data-parallel run each rank appends to
            its own file beside ``path`` (``<stem>.rank<r>.jsonl``) and ``fill`` folds them into ``path``. Reading
            always includes rank files, so the work of an interrupted parallel run is kept. In a data-parallel run
            opening a ledger is collective: every rank opens it.
    """

    def __init__(self, path: str | Path, *, world: World = World()) -> None:
        self.path = Path(path)
        self.world = world
        self.write_path = self._rank_path(world.rank) if world.is_parallel else self.path
        self._records: dict[str, dict] = {}
        self.reload()
        world.barrier()  # every rank has read the ledger before any rank adds to it

    def fill(self, chunks: Sequence[T], compute: Callable[[T], Iterable[Mapping]]) -> None:
        """Add the records ``compute(chunk)`` gives for this process's share of ``chunks`` (chunk ``i`` is rank
        ``i % N``'s), each chunk flushed as it ends; in a data-parallel run, then wait for every rank, fold their
        files into the ledger (rank 0) and read it back, so every rank sees all the work. Every rank must call it
        with the same chunks.

        Raises:
            the error of ``compute`` on its own rank; on the others, a ``ToolkitError`` naming the failed rank.
        """
        with self.world.together():
            for chunk in self.world.share(chunks):
                self.add(compute(chunk))
        if self.world.is_parallel:
            if self.world.is_main:
                self.merge()
            self.world.barrier()
            self.reload()
            self.world.barrier()  # every rank has read the merged ledger before any rank adds to it again

    def reload(self) -> None:
        """Read the ledger and every rank file again (after other processes added to them)."""
        self._records = {}
        for path in [self.path, *self._rank_files()]:
            self._records.update(_read_records(path))

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: str) -> dict:
        return self._records[key]

    def add(self, records: Iterable[Mapping]) -> None:
        """Append records (each with a ``key``) and flush them to disk."""
        records = [dict(record) for record in records]
        for record in records:
            self._records[record["key"]] = record
        _append(self.write_path, records)

    def merge(self) -> None:
        """Fold the rank files' records into the ledger file (in rank order), then remove the rank files; the records
        held in memory, read from both, stay as they are."""
        rank_files = self._rank_files()
        if not rank_files:
            return
        kept = _read_records(self.path)
        for path in rank_files:
            records = _read_records(path)
            _append(self.path, [record for key, record in records.items() if key not in kept])
            kept.update(records)
        for path in rank_files:
            path.unlink(missing_ok=True)

    def _rank_path(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}")

    def _rank_files(self) -> list[Path]:
        prefix = f"{self.path.stem}.rank"
        found = [path for path in self.path.parent.glob(f"{prefix}*{self.path.suffix}")
                 if path.name[len(prefix):-len(self.path.suffix)].isdigit()]
        return sorted(found, key=lambda path: int(path.name[len(prefix):-len(self.path.suffix)]))


def _read_records(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by an interruption: its work is simply redone
            if isinstance(record, dict) and "key" in record:
                records[record["key"]] = record
    return records


def _append(path: Path, records: list[dict]) -> None:
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if handle.tell() > 0 and not _ends_with_newline(path):
            handle.write("\n")  # never glue a record onto a line cut off earlier
        handle.write("\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
