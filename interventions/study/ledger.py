"""An append-only JSONL record of finished work, keyed by what was computed.

A study writes one line per scored or generated prompt as soon as its batch finishes, so an
interrupted run loses at most the batch in flight and a rerun skips everything on record. The
key hashes everything the outcome depends on (prompt text, options, decoding settings), so
identical prompts met in different cells of a grid are computed once.

A kill can only cut a line short, and a cut line is never valid JSON: it is skipped and its work
redone. A later run starts a new line after it, so cut lines may sit anywhere in the file. A
complete JSON line that is not a record with the fields its ledger needs was not written by the
toolkit (an edit, another tool): reading refuses it in one line naming the file and line, rather
than guessing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from probes.core.errors import ToolkitError
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
        fields: what every record holds besides its ``key`` (e.g. ``response``).

    Raises:
        ToolkitError: a line of the file (or a rank file) that is complete JSON but not a record with a string
            ``key`` and ``fields``.
    """

    def __init__(self, path: str | Path, *, world: World = World(), fields: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.world = world
        self.fields = tuple(fields)
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

    def unfinished(self, keys: Sequence[str], size: int) -> list[range]:
        """The chunks of ``keys`` to compute: ``keys`` cut into runs of ``size`` positions in their order, those holding
        a key not on record.

        The cut does not depend on what is on record, so a resumed run computes an unfinished chunk whole, with the
        same prompts (hence the same batches) as an uninterrupted run: a prompt lost to an interruption gives the
        same bytes. The caller records only the keys missing.
        """
        spans = [range(start, min(start + size, len(keys))) for start in range(0, len(keys), size)]
        return [span for span in spans if any(keys[index] not in self for index in span)]

    def unfinished_keys(self, keys: Sequence[str], size: int) -> list[list[str]]:
        """The keys of each chunk ``unfinished`` gives."""
        return [[keys[index] for index in span] for span in self.unfinished(keys, size)]

    def reload(self) -> None:
        """Read the ledger and every rank file again (after other processes added to them)."""
        self._records = {}
        for path in [self.path, *self._rank_files()]:
            self._records.update(_read_records(path, self.fields))

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
        kept = _read_records(self.path, self.fields)
        for path in rank_files:
            records = _read_records(path, self.fields)
            _append(self.path, [record for key, record in records.items() if key not in kept])
            kept.update(records)
        for path in rank_files:
            path.unlink(missing_ok=True)

    def _rank_path(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}")

    def _rank_files(self) -> list[Path]:
        prefix = f"{self.path.stem}.rank"
        found = [
            path
            for path in self.path.parent.glob(f"{prefix}*{self.path.suffix}")
            if path.name[len(prefix) : -len(self.path.suffix)].isdigit()
        ]
        return sorted(found, key=lambda path: int(path.name[len(prefix) : -len(self.path.suffix)]))


def _read_records(path: Path, fields: Sequence[str] = ()) -> dict[str, dict]:
    """The records of one ledger file by key: cut lines skipped, any other line not a record refused."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # a line cut off by an interruption (perhaps inside a character): its work is simply redone
        missing = (
            ["key"]
            if not isinstance(record, dict) or not isinstance(record.get("key"), str)
            else [field for field in fields if field not in record]
        )
        if missing:
            raise ToolkitError(
                f"{path} line {number}: a ledger record without {', '.join(map(repr, missing))}, "
                "not written by prism: delete that line (its work is done again) and rerun"
            )
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
