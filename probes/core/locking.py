"""One prism process at a time in an output directory: an advisory lock held while a command writes there.

A command that writes into a directory takes ``directory_lock(directory)``: an exclusive, non-blocking
``flock`` on ``.prism.lock`` inside it, which holds this process's id. A second process on the
same directory is refused at once with one line naming the holder, instead of computing
everything a second time beside it. The operating system releases the lock when its file
closes, also when the holder is killed (SIGKILL included), so a stale lock file never blocks a
later run. On a clean exit the lock file is removed, and so are the folders the lock created
when nothing else was written into them (a refused command leaves nothing behind).

Under ``torchrun`` the ranks of one run write one directory on purpose: only rank 0 takes the
lock (the shell decides); when it is refused, torchrun stops the other ranks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from probes.core.errors import ToolkitError

try:
    import fcntl
except ImportError:  # no flock (Windows): directories are not locked
    fcntl = None

__all__ = ["LOCK_NAME", "directory_lock"]

LOCK_NAME = ".prism.lock"


@contextmanager
def directory_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory`` (created if missing) for this process while the block runs.

    Args:
        directory: the output directory a command writes into.

    Yields:
        the directory, as a ``Path``.

    Raises:
        ToolkitError: another process holds the directory, or the lock file cannot be created there.
    """
    directory = Path(directory)
    created = _make_directories(directory)
    try:
        handle = _acquire(directory)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield directory
    finally:
        _release(handle, directory / LOCK_NAME)
        _remove_empty(created)


def _acquire(directory: Path) -> int | None:
    """The open, locked lock file of ``directory`` (None where the platform has no flock)."""
    if fcntl is None:
        return None
    path = directory / LOCK_NAME
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise ToolkitError(f"cannot create the lock file {path} ({error.strerror}): choose another --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise ToolkitError(
                f"{directory} is in use by another prism process{holder}; wait for it or use another --out"
            ) from None
        if _same_file(handle, path):
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            return handle
        os.close(handle)  # the holder removed this file as it finished: lock the one at the path now


def _release(handle: int | None, path: Path) -> None:
    """Remove the lock file while it is still held (a process waiting on it then sees it gone), then let go."""
    if handle is None:
        return
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.fstat(handle).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(handle: int) -> str:
    """`` (pid N)`` as the holder wrote it in the lock file, or nothing when it has not yet."""
    text = os.pread(handle, 32, 0).decode("ascii", "replace").strip()
    return f" (pid {text})" if text.isdigit() else ""


def _make_directories(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; the folders created, deepest first."""
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty(missing)
        raise ToolkitError(f"cannot create {directory} ({error.strerror}): choose another --out") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) this process created and nothing was written into."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
