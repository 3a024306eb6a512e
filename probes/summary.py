"""The probe study's result as a typed value: what ``run_probe_study`` returns and what
``prism probe`` and ``prism demo`` print.

``summary.json`` keeps the full record on disk; this is the part a reader looks at first: for
each target and read position, the earliest layer at which a held-out probe beats both controls,
with its AUC as an estimate (mean, 95% CI, n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from probes.core.stats import Estimate
from probes.core.summary import Summary


@dataclass(frozen=True)
class EarliestLayer:
    """The first layer whose held-out AUC interval lies above both controls' intervals."""

    layer: int
    auc: Estimate

    @classmethod
    def from_record(cls, found: Mapping) -> EarliestLayer:
        """From an ``earliest`` entry of ``summary.json`` (``layer``, ``auc``, ``auc_low``, ``auc_high``, ``n``)."""
        return cls(found["layer"], Estimate.from_columns(found, "auc"))


@dataclass(frozen=True)
class ProbeSummary(Summary):
    """What the probe study found and where it wrote it.

    Attributes:
        directory: the study's output directory (``report.md`` and ``summary.json`` inside).
        model: the model's name.
        n_queries: intent queries recorded.
        data: hash of the queries (ids, intents, groups), as saved with every direction and probe.
        earliest: ``"<target>/<position>"`` -> the earliest decodable layer, or None where no
            layer beats the controls.
        record: the full ``summary.json`` record (saved files, persona conditions, controls).
    """

    directory: Path
    model: str
    n_queries: int
    data: str
    earliest: Mapping[str, EarliestLayer | None]
    record: Mapping = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, directory: str | Path, record: Mapping) -> ProbeSummary:
        earliest = {
            name: EarliestLayer.from_record(found) if found else None for name, found in record["earliest"].items()
        }
        return cls(Path(directory), record["model"], record["n_queries"], record["data"], earliest, record)

    @property
    def report(self) -> Path:
        return self.directory / "report.md"

    def lines(self, targets: Sequence[str] | None = None) -> list[str]:
        """One line per ``"<target>/<position>"`` (default: every one, in the study's order)."""
        lines = []
        for name in self.earliest if targets is None else targets:
            found = self.earliest.get(name)
            text = (
                f"layer {found.layer}, AUC {found.auc.format(2, n=True)}"
                if found
                else "not above the controls at any layer"
            )
            lines.append(f"held-out {name}: {text}")
        return lines
