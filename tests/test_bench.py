"""Every benchmark in ``bench/`` runs in its smoke mode (a few items, one repeat), so none rots unseen.

The numbers a smoke run prints mean nothing; the test checks that the script ends cleanly and prints the
line that carries its result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# script -> a piece of the line that carries its result
RESULT_LINES = {
    "devices.py": "peak memory:",
    "gate_pass.py": "faster",
    "recording_throughput.py": "recording throughput / bare HF forward:",
    "routing_overhead.py": "answering one query",
    "scoring_reuse.py": "ms/item",
    "serve_load.py": "batched / one at a time:",
}


def test_every_benchmark_has_a_smoke_run_here():
    assert sorted(path.name for path in BENCH.glob("*.py")) == sorted(RESULT_LINES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RESULT_LINES))
def test_the_benchmark_runs_in_smoke_mode(script):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        cwd=BENCH.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{script} --smoke failed:\n{done.stderr[-3000:]}"
    assert RESULT_LINES[script] in done.stdout, done.stdout[-2000:]
    assert "failed" not in done.stdout.lower(), done.stdout[-2000:]  # devices.py prints a failing section and goes on
