"""``--wandb PROJECT``: a finished command's options, tables and figures, logged to Weights & Biases.

The shell calls ``track_run`` once a command has succeeded (rank 0 of a ``torchrun`` launch only); ``wandb`` is
imported only then, and ``options.add_wandb`` checks that it is installed before the command starts. One run per
command, its job type the command's name, holding:

- config: the parsed options that are plain values (paths as text), each option named like a key, token, password
  or secret masked and every other text masked as records mask it (``probes.core.commandline``), and the masked
  command line;
- tables: each CSV file under the output directory (``--out``) that the command wrote (changed since it started),
  as a ``wandb.Table`` keyed by its path inside the directory;
- figures: each PNG file there, likewise, as a ``wandb.Image``.

``WANDB_MODE=offline`` keeps the run on disk (``wandb sync`` sends it later), under ``WANDB_DIR`` when set.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from probes.core.commandline import MASK, current_command, mask_text, names_secret
from probes.core.errors import ToolkitError

PLAIN = (str, int, float, bool, type(None))
CLOCK_SLACK_S = 2.0  # a file's modification time may be this much coarser than the clock read at the start


def track_run(args: argparse.Namespace, *, since: float | None = None) -> str:
    """Log a finished command to the Weights & Biases project ``args.wandb``.

    Args:
        args: the command's parsed options: ``command``, ``wandb`` and ``out`` (the output directory or file).
        since: a ``time.time()`` from before the command ran: only files changed after it are logged (default: all).

    Returns:
        the run's address, or (offline) its folder.

    Raises:
        ToolkitError: the run could not be logged (one line; the command's results stay where it wrote them).
    """
    import wandb

    out = Path(args.out)
    tables, figures = written_files(out, since)
    try:
        settings = wandb.Settings(console="off", silent=bool(getattr(args, "quiet", False)))
        with wandb.init(
            project=args.wandb,
            job_type=args.command,
            name=f"{args.command} {out}",
            config=run_config(args),
            settings=settings,
        ) as run:
            logged: dict[str, Any] = {
                key: wandb.Table(*read_csv(path), allow_mixed_types=True) for key, path in tables.items()
            }
            logged.update({key: wandb.Image(str(path)) for key, path in figures.items()})
            if logged:
                run.log(logged)
            where = run.url or str(Path(run.dir).parent)
    except Exception as error:  # wandb's own errors (no key, no network, a refused project) take many types
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ToolkitError(
            f"could not log to Weights & Biases ({type(error).__name__}: {first}); the results are in {out}"
        ) from error
    return where


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options as a run's config: plain values only (paths and lists of them as text), secrets masked.

    Args:
        args: the parsed options.

    Returns:
        option name -> value, plus ``command_line`` (masked, as records give it).
    """
    config: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        value = _plain(value)
        if value is _SKIP:
            continue
        config[name] = MASK if names_secret(name) and value is not None else _masked(value)
    config["command_line"] = current_command()
    return config


def written_files(out: Path, since: float | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """The CSV tables and PNG figures under ``out`` (or ``out`` itself, a file) changed since ``since``.

    Returns:
        (tables, figures): each a key (the path inside ``out``, posix) -> the file.
    """
    files = (
        [out] if out.is_file() else sorted(path for path in out.rglob("*") if path.is_file()) if out.is_dir() else []
    )
    fresh = [path for path in files if since is None or path.stat().st_mtime >= since - CLOCK_SLACK_S]
    keyed = {(path.name if path == out else path.relative_to(out).as_posix()): path for path in fresh}
    return (
        {key: path for key, path in keyed.items() if path.suffix == ".csv"},
        {key: path for key, path in keyed.items() if path.suffix == ".png"},
    )


def read_csv(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A CSV file's columns and rows, numbers read as numbers and empty cells as None."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return [], []
    return rows[0], [[_number(cell) for cell in row] for row in rows[1:]]


_SKIP = object()


def _plain(value: Any) -> Any:
    """``value`` as a config value: a plain value, a path as text, a list of them; ``_SKIP`` for anything else."""
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(item, (*PLAIN, Path)) for item in value):
        return [_plain(item) for item in value]
    return _SKIP


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def _number(cell: str) -> Any:
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell
