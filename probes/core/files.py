"""Everything the toolkit writes, written atomically: a crash never leaves a half-written file.

JSON, tidy tables (CSV with a JSON twin), tensors with their metadata (safetensors) and figures
(PNG with a PDF twin, or the PDF or SVG a path names) all go through ``atomic_path``: a temporary
file beside the target, moved into place only on success.

A run's record (``write_record``: a summary, a study's settings, a store's manifest) and every
tensor file's metadata carry a ``provenance`` block saying what made them (``probes.core.provenance``);
plain data files (``write_json``, a table's CSV and JSON twin) do not: the record in their folder does.

Tensor metadata is stored as a single JSON string under the key ``prism`` so that files are
byte-identical across runs (safetensors writes several metadata keys in arbitrary order).
Reloading gives back the same tensors bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from probes.core.errors import ToolkitError
from probes.core.provenance import provenance

__all__ = [
    "atomic_path",
    "write_text",
    "write_json",
    "write_record",
    "write_table",
    "save_tensors",
    "load_tensors",
    "figure_format",
    "save_figure",
]

METADATA_KEY = "prism"
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}  # a figure path's suffix -> the format written
VECTOR_TWIN = ".pdf"  # what a .png figure also gets, beside it
PNG_DPI = 200
# no creation date, so that rewriting a figure from the same results gives the same bytes
FIGURE_METADATA = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
# text in a PDF as TrueType (Type 42), which journals and vector editors take; SVG ids from a fixed salt
WRITING_PARAMS = {"pdf.fonttype": 42, "svg.hashsalt": METADATA_KEY}


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only on success, with the permissions a new file
    gets under the process's umask (the temporary file is private until then)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask, read without changing it where the system says (Linux), else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(path: str | os.PathLike, kind: str = "directory") -> None:
    """One line, before any work, when ``path`` cannot be written as a ``directory`` (created if missing) or a ``file``.

    Raises:
        ToolkitError: the path is the wrong kind of thing (a file where a folder goes, or the reverse), or its
            nearest existing folder is not writable.
    """
    path = Path(path)
    if kind == "directory" and path.exists() and not path.is_dir():
        raise ToolkitError(f"{path} is a file, not a folder: give --out a folder to write into")
    if kind == "file" and path.is_dir():
        raise ToolkitError(f"{path} is a folder: give --out the path of a file to write")
    existing = path if kind == "directory" else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ToolkitError(f"{existing} is a file, so nothing can be written under it: choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ToolkitError(f"{existing} is not writable: choose another --out, or make it writable")


def write_json(target: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (numpy numbers and arrays as plain JSON numbers and lists)."""
    write_text(target, json.dumps(payload, indent=2, ensure_ascii=False, default=_plain) + "\n")


def write_record(target: str | os.PathLike, payload: Mapping[str, Any], *, model: str | None = None) -> None:
    """Write a run's record: ``payload`` with a ``provenance`` block added (``probes.core.provenance``), as
    ``write_json`` writes it.

    Args:
        target: the JSON file.
        payload: the record's fields; a ``provenance`` field is replaced by this process's.
        model: the model the record is about when ``payload`` has no ``model`` field naming it (default: the one
            this process loaded last).
    """
    named = payload.get("model", model)
    write_json(target, {**payload, "provenance": provenance(named if isinstance(named, str) else None)})


def write_table(path: Path, table: Sequence[Mapping]) -> None:
    """Write ``table`` as CSV (and the same rows as JSON beside it), atomically. Both hold the rows alone: what made
    a table is in its folder's record (``summary.json``, ``study.json``, ``train.json``, ...)."""
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


def _plain(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself: numpy scalars and arrays, paths, 0-d tensors (as floats)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return float(value)


def _csv(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor | np.ndarray], metadata: Mapping) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` atomically.

    Args:
        path: the ``.safetensors`` file to write (its folder is created).
        tensors: name -> tensor or array (arrays become tensors of the same dtype).
        metadata: anything ``json.dumps`` accepts; stored sorted, so files are reproducible, with a ``provenance``
            block added (``probes.core.provenance``; for the model ``metadata["model"]`` names, else the one loaded
            last).

    Returns:
        ``path``, as a ``Path``.
    """
    path = Path(path)
    as_torch = {
        name: torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).contiguous()
        for name, value in tensors.items()
    }
    named = metadata.get("model")
    metadata = {**metadata, "provenance": provenance(named if isinstance(named, str) else None)}
    with atomic_path(path) as partial:
        save_file(as_torch, str(partial), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True, default=_plain)})
    return path


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read back a file written by ``save_tensors``.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        ``(tensors, metadata)``: name -> tensor (on the CPU), and the metadata dict.

    Raises:
        ToolkitError: no file at ``path``, a file safetensors cannot read, or one without the toolkit's metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"no saved directions or probe at {path}: check the path")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as error:
        raise ToolkitError(f"{path} is not a readable safetensors file ({error})") from error
    if raw is None:
        raise ToolkitError(f"{path} carries no toolkit metadata: save it with probes.core.files.save_tensors")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict):
        raise ToolkitError(f"{path} has damaged toolkit metadata (not a JSON object): save it again with the toolkit")
    return tensors, metadata


def figure_format(path: str | Path) -> str:
    """The format a figure at ``path`` is written in, named by its suffix (any case).

    Args:
        path: the figure's file.

    Returns:
        ``"png"``, ``"pdf"`` or ``"svg"``.

    Raises:
        ToolkitError: any other suffix (or none).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        *others, last = FIGURE_FORMATS
        raise ToolkitError(
            f"cannot write a figure as {Path(path).name!r}: give a path ending in {', '.join(others)} or {last}"
        )
    return FIGURE_FORMATS[suffix]


def save_figure(figure, path: str | Path) -> Path:
    """Write a matplotlib ``figure`` in the format its path names, atomically (creating the folder), and close it.

    A ``.png`` path is written with its vector twin beside it, the same name ending in ``.pdf``
    (reports link the PNG; a paper takes the PDF); a ``.pdf`` or ``.svg`` path is written alone.
    Every file is drawn before any is moved into place, so a failure replaces none. PNGs are
    200 dpi; every format is cropped to the drawing (tight bounding box); PDF text is embedded
    as TrueType; the files carry no date, so the same figure gives the same bytes.

    Args:
        figure: the matplotlib ``Figure`` (closed afterwards, also when writing fails).
        path: a ``.png``, ``.pdf`` or ``.svg`` file.

    Returns:
        ``path``, as a ``Path``.

    Raises:
        ToolkitError: ``path`` ends in another suffix (nothing is written).
    """
    import matplotlib.pyplot as plt  # matplotlib loads only when a report draws

    path = Path(path)
    try:
        targets = [path] + ([path.with_suffix(VECTOR_TWIN)] if figure_format(path) == "png" else [])
        with ExitStack() as stack, plt.rc_context(WRITING_PARAMS):
            for target in targets:
                partial, kind = stack.enter_context(atomic_path(target)), figure_format(target)
                figure.savefig(partial, format=kind, dpi=PNG_DPI, bbox_inches="tight", metadata=FIGURE_METADATA[kind])
    finally:
        plt.close(figure)
    return path
