"""The PRISM working directory as one object that knows where every file lives.

``prism bootstrap``, ``train``, ``route`` and ``compare`` share one directory::

    prism.json                  the model the directory was bootstrapped with
    bootstrap/                  ledger.jsonl, samples.jsonl, summary.json, win_rates.csv
    gate/                       gate.safetensors, sweep.csv, sweep.png, features/, sample_features/
    adapters/prism, adapters/sft   the gated and the ungated LoRA adapter (peft format)
    steering.safetensors        the persona's mean shift, for probe-routed steering
    baselines/                  embedding.safetensors, self_classify.json (the baseline routers)
    train.json                  what training found
    compare/                    cells/*.json, table.csv, route_rates.csv, category_routing.csv,
                                summary.json, report.md, figures/*.png

Every module of ``prism`` names these paths through ``PrismDirectory``; none spells them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from probes.core.errors import ToolkitError
from probes.core.files import write_json

__all__ = ["PrismDirectory"]


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
            create: record ``requested`` (or ``default``) if the directory has no model yet.

        Returns:
            the recorded model name; a different ``requested`` one is refused.
        """
        recorded = json.loads(self.manifest.read_text(encoding="utf-8"))["model"] if self.manifest.is_file() else None
        if recorded is None:
            if not create:
                raise ToolkitError(f"{self.root} is not a PRISM directory (no {self.manifest.name}): "
                                   f"run `prism bootstrap --out {self.root}` first")
            write_json(self.manifest, {"model": requested or "default"})
            return requested or "default"
        if requested is not None and requested != recorded:
            raise ToolkitError(f"{self.root} was bootstrapped with model {recorded!r}, not {requested!r}: use another --out")
        return recorded

    # --- prism bootstrap -----------------------------------------------------------------------

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap"

    @property
    def bootstrap_ledger(self) -> Path:
        return self.bootstrap / "ledger.jsonl"

    @property
    def samples(self) -> Path:
        return self.bootstrap / "samples.jsonl"

    @property
    def bootstrap_summary(self) -> Path:
        return self.bootstrap / "summary.json"

    @property
    def win_rates(self) -> Path:
        return self.bootstrap / "win_rates.csv"

    # --- prism train ---------------------------------------------------------------------------

    @property
    def gate_directory(self) -> Path:
        return self.root / "gate"

    @property
    def gate(self) -> Path:
        return self.gate_directory / "gate.safetensors"

    @property
    def gate_sweep(self) -> Path:
        return self.gate_directory / "sweep.csv"

    @property
    def gate_sweep_figure(self) -> Path:
        return self.gate_directory / "sweep.png"

    @property
    def gate_features(self) -> Path:
        """Activation stores of the gate's training queries."""
        return self.gate_directory / "features"

    @property
    def sample_features(self) -> Path:
        """Activation stores of the bootstrapped queries (intent-labelled gates)."""
        return self.gate_directory / "sample_features"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter(self, name: str) -> Path:
        """The folder of adapter ``name`` (``prism``: gated; ``sft``: ungated)."""
        return self.adapters / name

    @property
    def steering(self) -> Path:
        return self.root / "steering.safetensors"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    @property
    def embedding_router(self) -> Path:
        return self.baselines / "embedding.safetensors"

    @property
    def self_classify(self) -> Path:
        return self.baselines / "self_classify.json"

    @property
    def train_summary(self) -> Path:
        return self.root / "train.json"

    def require_gate(self) -> Path:
        """The trained gate's file; one line naming ``prism train`` if there is none."""
        if not self.gate.is_file():
            raise ToolkitError(f"{self.root} has no trained gate: run `prism train --out {self.root}` first")
        return self.gate

    def trained_files(self) -> list[Path]:
        """Every trained artefact the comparison depends on (gate, steering, adapters, baselines), sorted."""
        return sorted([self.gate, self.steering, *self.adapters.glob("*/adapter_model.safetensors"), *self.baselines.glob("*")])

    # --- prism compare -------------------------------------------------------------------------

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def cells(self) -> Path:
        return self.compare / "cells"

    def cell(self, system: str, dataset: str) -> Path:
        """The saved rows of one (system, data set) cell of the comparison."""
        slug = "".join(c if c.isalnum() else "-" for c in system.lower()).strip("-")
        return self.cells / f"{slug}__{dataset}.json"

    @property
    def compare_table(self) -> Path:
        return self.compare / "table.csv"

    @property
    def route_rates(self) -> Path:
        return self.compare / "route_rates.csv"

    @property
    def category_routing(self) -> Path:
        return self.compare / "category_routing.csv"

    @property
    def compare_summary(self) -> Path:
        return self.compare / "summary.json"

    @property
    def report(self) -> Path:
        return self.compare / "report.md"

    @property
    def figures(self) -> Path:
        return self.compare / "figures"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"
