"""The causal run's result as a typed value: what ``run_interventions`` returns and what
``prism intervene`` and ``prism demo`` print.

``summary.json`` keeps the full record on disk (steering, ablation, attention, refusal); this is
the headline: the persona's effect on the answer margin and the decisive patch, each an
estimate (mean, 95% CI, n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from probes.core.stats import Estimate
from probes.core.summary import Summary


@dataclass(frozen=True)
class Patch:
    """One activation patch: after block ``layer``, the ``group`` token positions (query,
    after_query or final) restored from the no-persona run; ``fraction`` of the effect recovered."""

    layer: int
    group: str
    fraction: Estimate


@dataclass(frozen=True)
class InterventionSummary(Summary):
    """What the causal run found and where it wrote it.

    Attributes:
        directory: the run's output directory (``report.md`` and ``summary.json`` inside).
        model: the model's name.
        persona: the persona condition's label.
        effect: the persona's paired effect on the correct answer's margin (nats).
        best_patch: the earliest patch that recovers a majority of the effect (see
            ``interventions.intervene.decisive_patch``).
        record: the full ``summary.json`` record.
    """

    directory: Path
    model: str
    persona: str
    effect: Estimate
    best_patch: Patch
    record: Mapping = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, directory: str | Path, record: Mapping) -> InterventionSummary:
        effect, best = record["effect"], record["best_patch"]
        patch = Patch(best["layer"], best["group"], Estimate.from_columns(best, "fraction", prefix=""))
        return cls(Path(directory), record["model"], record["persona"], Estimate(**effect), patch, record)

    @property
    def n(self) -> int:
        """Capital-city items the persona was paired on."""
        return self.effect.n

    @property
    def report(self) -> Path:
        return self.directory / "report.md"

    def lines(self) -> list[str]:
        effect, best = self.effect, self.best_patch
        return [
            f"persona effect on the capitals answer margin: {effect.format(2, signed=True, n=True)}",
            f"decisive patch: block {best.layer}, {best.group} tokens: {best.fraction.format(2, signed=True)} "
            "of the effect recovered",
        ]
