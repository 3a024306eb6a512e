"""The PRISM working directory as one object that knows where every file lives.

``prism bootstrap``, ``train``, ``route`` and ``compare`` share one directory::

    prism.json                  the model the directory was bootstrapped with, and the user's personas it used
    bootstrap/                  ledger.jsonl, samples.jsonl, summary.json, win_rates.csv
    gate/                       gate.safetensors, sweep.csv, sweep.png, features/, sample_features/
    adapters/prism, adapters/sft   the gated and the ungated LoRA adapter (peft format)
    steering.safetensors        the persona's mean shift, for probe-routed steering
    baselines/                  embedding.safetensors, self_classify.json (the baseline routers)
    train.json                  what training found
    compare/                    cells/*.json, table.csv, route_rates.csv, category_routing.csv,
                                knowledge.csv, router_rates.csv, summary.json, report.md, figures/*.png

Every module of ``prism`` names these paths through ``PrismDirectory``; none spells them.
The personas a user added to the bootstrap (``--personas-file``) are copied into ``prism.json``
(as a persona file's ``personas`` list), so training, routing and comparing render the same
persona texts without the file (``PrismDirectory.persona_library``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from probes.core.errors import ToolkitError
from probes.core.files import write_record
from probes.core.personas import Persona, builtin_personas, parse_personas, user_personas

__all__ = ["PrismDirectory"]


class _Under:
    """A path of the working directory's layout: ``directory.name`` is ``directory.root / relative``."""

    def __init__(self, relative: str, doc: str = "") -> None:
        self.relative, self.__doc__ = relative, doc or relative

    def __get__(self, directory: PrismDirectory | None, owner: type) -> Path:
        return self if directory is None else directory.root / self.relative


@dataclass(frozen=True)
class PrismDirectory:
    """The files of one PRISM working directory (see the module docstring).

    Args:
        root: the directory (a path, or another ``PrismDirectory``); it need not exist yet.

    A ``PrismDirectory`` is path-like (``Path(directory)`` is its root).
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __str__(self) -> str:
        return str(self.root)

    # --- the model ---------------------------------------------------------------------------

    @property
    def manifest(self) -> Path:
        return self.root / "prism.json"

    def model_name(self, requested: str | None = None, *, create: bool = False) -> str:
        """The model the directory was bootstrapped with.

        Args:
            requested: the model the caller asks for (None: whichever is recorded).
            create: a directory with no model yet gives ``requested`` (or ``default``); ``record_model`` writes it
                down once the model has loaded, so a model that fails to load never claims the directory.

        Returns:
            the recorded model name; a different ``requested`` one is refused.
        """
        recorded = self._recorded_model() if self.manifest.is_file() else None
        if recorded is None:
            if not create:
                raise ToolkitError(
                    f"{self.root} is not a PRISM directory (no {self.manifest.name}): "
                    f"run `prism bootstrap --out {self.root}` first"
                )
            return requested or "default"
        if requested is not None and requested != recorded:
            raise ToolkitError(
                f"{self.root} was bootstrapped with model {recorded!r}, not {requested!r}: use another --out"
            )
        return recorded

    def _recorded_model(self) -> str:
        """The model ``prism.json`` names; a damaged file in one line."""
        try:
            recorded = json.loads(self.manifest.read_text(encoding="utf-8")).get("model")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            recorded = None
        if not isinstance(recorded, str) or not recorded:
            raise ToolkitError(
                f'{self.manifest} is damaged (no model name in it): write {{"model": "<the model\'s name>"}} '
                "into it, or use another --out"
            )
        return recorded

    def persona_library(self, requested: Mapping[str, Persona] | None = None) -> dict[str, Persona]:
        """The personas the directory was bootstrapped with: the built-in ones and the user's recorded in
        ``prism.json``.

        Args:
            requested: the library the caller asks for (None: whichever is recorded). Once the directory has a model,
                one whose user personas (``user_personas``) differ from the recorded ones is refused.

        Returns:
            persona name -> ``Persona``: the recorded library, or ``requested`` (default: the built-in personas) in
            a directory with no model yet.
        """
        if not self.manifest.is_file():
            return builtin_personas() if requested is None else dict(requested)
        self._recorded_model()  # a damaged prism.json in one line
        payload = json.loads(self.manifest.read_text(encoding="utf-8"))
        recorded = {
            **builtin_personas(),
            **(parse_personas(payload, str(self.manifest)) if "personas" in payload else {}),
        }
        if requested is not None and user_personas(requested) != user_personas(recorded):
            differ = (
                " (their texts differ)" if user_personas(requested).keys() == user_personas(recorded).keys() else ""
            )
            raise ToolkitError(
                f"{self.root} was bootstrapped with {_described(recorded)}, not {_described(requested)}"
                f"{differ}: use another --out"
            )
        return recorded

    def trained_fingerprint(self) -> str:
        """A hash of the trained artefacts: comparison cells computed with other ones are not reused."""
        digest = hashlib.sha256()
        for path in self.trained_files():
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
        return digest.hexdigest()[:16]

    def train_record(self) -> dict:
        """``train.json`` as ``prism train`` wrote it (empty before training, or when it cannot be read)."""
        try:
            record = json.loads(self.train_summary.read_text(encoding="utf-8"))
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return record if isinstance(record, dict) else {}

    def teacher_length(self) -> str:
        """The persona length of the gated adapter's teacher (``prism train --teacher-length``; else ``min``)."""
        return ((self.train_record().get("adapters") or {}).get("prism") or {}).get("teacher_length") or "min"

    def self_classify_threshold(self) -> float:
        """The self-classification router's calibrated threshold (``prism train``), or one line naming the fix."""
        try:
            return float(json.loads(self.self_classify.read_text(encoding="utf-8"))["threshold"])
        except FileNotFoundError:
            raise ToolkitError(
                f"no {self.self_classify.name} in {self.self_classify.parent}: run `prism train` in {self.root} first"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ToolkitError(f"{self.self_classify} is damaged: run `prism train` again to rewrite it") from None

    def record_model(self, name: str, personas: Mapping[str, Persona] | None = None) -> None:
        """Write ``name`` down as the directory's model (``prism.json``), with the personas of ``personas`` a user
        added (``user_personas``), unless a model is recorded already."""
        if not self.manifest.is_file():
            mine = [persona.to_dict() for persona in user_personas(personas or {}).values()]
            write_record(self.manifest, {"model": name, **({"personas": mine} if mine else {})})

    # --- the layout: every file and folder, relative to the root -------------------------------
    # prism bootstrap
    bootstrap = _Under("bootstrap")
    bootstrap_ledger = _Under("bootstrap/ledger.jsonl", "every text and verdict, appended as its batch ends")
    samples = _Under("bootstrap/samples.jsonl", "one labelled sample per query")
    bootstrap_summary = _Under("bootstrap/summary.json")
    win_rates = _Under("bootstrap/win_rates.csv")
    # prism train: the gate, its sweep over blocks and read positions, and the features it read
    gate_directory = _Under("gate")
    gate = _Under("gate/gate.safetensors", "the trained gate: weights and metadata")
    gate_sweep, gate_sweep_figure = _Under("gate/sweep.csv"), _Under("gate/sweep.png")
    gate_features = _Under("gate/features", "activation stores of the gate's training queries")
    sample_features = _Under(
        "gate/sample_features", "activation stores of the bootstrapped queries (intent-labelled gates)"
    )
    # prism train: the persona path (adapters, steering vector), the baseline routers, what training found
    adapters = _Under("adapters")
    steering = _Under("steering.safetensors", "the persona's mean shift, for probe-routed steering")
    baselines = _Under("baselines")
    embedding_router, self_classify = _Under("baselines/embedding.safetensors"), _Under("baselines/self_classify.json")
    train_summary = _Under("train.json")
    # prism compare: finished cells, tables, summary, report and figures
    compare, cells = _Under("compare"), _Under("compare/cells")
    compare_table, compare_summary = _Under("compare/table.csv"), _Under("compare/summary.json")
    route_rates, category_routing = _Under("compare/route_rates.csv"), _Under("compare/category_routing.csv")
    knowledge_table = _Under(
        "compare/knowledge.csv", "per knowledge source and system: accuracy, margin, change vs base"
    )
    router_rates = _Under("compare/router_rates.csv", "per router and data set: the share routed to the persona path")
    report, figures = _Under("compare/report.md"), _Under("compare/figures")

    def adapter(self, name: str) -> Path:
        """The folder of adapter ``name`` (``prism``: gated; ``sft``: ungated)."""
        return self.adapters / name

    def require_gate(self) -> Path:
        """The trained gate's file; one line naming ``prism train`` if there is none."""
        if not self.gate.is_file():
            raise ToolkitError(f"{self.root} has no trained gate: run `prism train --out {self.root}` first")
        return self.gate

    def trained_files(self) -> list[Path]:
        """Every trained artefact the comparison depends on (gate, steering, adapters, baselines), sorted."""
        return sorted(
            [self.gate, self.steering, *self.adapters.glob("*/adapter_model.safetensors"), *self.baselines.glob("*")]
        )

    def cell(self, system: str, dataset: str) -> Path:
        """The saved rows of one (system, data set) cell of the comparison."""
        slug = "".join(c if c.isalnum() else "-" for c in system.lower()).strip("-")
        return self.cells / f"{slug}__{dataset}.json"

    def figure(self, name: str) -> Path:
        """A figure of the comparison, by name (PNG)."""
        return self.figures / f"{name}.png"


def _described(library: Mapping[str, Persona]) -> str:
    """The user personas of a library and the files they came from, in words."""
    mine = user_personas(library)
    if not mine:
        return "the built-in personas only"
    return f"user personas {', '.join(mine)} (from {', '.join(sorted({p.source for p in mine.values()}))})"
