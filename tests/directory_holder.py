"""Another process holding an output directory's lock, for the tests of two processes on one directory."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HOLD = (
    "import sys, time\nfrom probes.core.locking import directory_lock\n"
    "with directory_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


@contextmanager
def held_elsewhere(directory: Path) -> Iterator[subprocess.Popen]:
    """A separate process that holds ``directory``'s lock for the block (killed after it, unless already dead)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }
