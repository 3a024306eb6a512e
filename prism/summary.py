"""PRISM's runs as typed values: what ``prism.pipeline`` returns and ``prism bootstrap``, ``train``,
``compare`` and ``prism demo`` print. The full records are the JSON files each step writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from prism.compare_findings import trade_off
from prism.compare_report import format_table
from prism.compare_sources import format_sources
from prism.samples import Sample
from probes.core.stats import Estimate
from probes.core.summary import Summary

__all__ = ["BootstrapSummary", "CompareSummary", "TrainSummary", "WinRate"]


@dataclass(frozen=True)
class WinRate:
    """How often the persona's answer won both orders of the model's own judgement, and how often the orders agreed.

    Args:
        win_rate: the share of samples the persona won in both orders (with its 95% CI and n).
        order_agreement: the share of samples whose two orders gave the same verdict.
    """

    win_rate: Estimate
    order_agreement: float

    @classmethod
    def from_record(cls, row: Mapping) -> WinRate:
        return cls(Estimate.from_columns(row, "win_rate", prefix=""), row["order_agreement"])


@dataclass(frozen=True)
class BootstrapSummary(Summary):
    """Stages 1-3: win rates overall and per persona; ``record`` as in ``bootstrap/summary.json``.

    ``headline()`` and ``lines()`` are what ``prism bootstrap`` prints.

    Args:
        overall: the ``WinRate`` over every sample.
        by_persona: persona name -> its ``WinRate``.
        record: the full summary record (``bootstrap/summary.json``).
        samples: the samples it summarises, one per kept query (``bootstrap/samples.jsonl``).
    """

    overall: WinRate
    by_persona: Mapping[str, WinRate]
    record: Mapping = field(default_factory=dict, repr=False, compare=False)
    samples: tuple[Sample, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Mapping, samples: Sequence[Sample] = ()) -> BootstrapSummary:
        by_persona = {row["persona"]: WinRate.from_record(row) for row in record["by_persona"]}
        return cls(WinRate.from_record(record["overall"]), by_persona, record, tuple(samples))

    def headline(self) -> str:
        win = self.overall.win_rate
        return (
            f"{win.n} queries; the persona won both orders on {win.mean:.0%} [{win.low:.0%}, {win.high:.0%}]; "
            f"the two orders agreed on {self.overall.order_agreement:.0%}"
        )

    def lines(self) -> list[str]:
        return [self.headline()] + [
            f"  {name:15s} n={rate.win_rate.n:3d}  win rate {rate.win_rate.mean:.0%} "
            f"[{rate.win_rate.low:.0%}, {rate.win_rate.high:.0%}]"
            for name, rate in self.by_persona.items()
        ]


@dataclass(frozen=True)
class TrainSummary(Summary):
    """The trained gate and, per unseen source (each held out whole), how it and the baseline routers route it;
    ``record`` as in ``train.json``.

    Args:
        layer, position, kind: the gate's block, read position and kind.
        threshold: the gate's threshold, calibrated on out-of-source scores.
        route_rate: the share of all queries, each scored by a gate that never saw its source, routed to the persona
            path.
        auc: the gate's out-of-source AUC over every query (with its 95% CI and n).
        routers: ``embedding`` and ``self_classify`` -> that baseline router's out-of-source AUC on the same queries.
        sources: the leave-one-source-out table: one row per source (``source``, ``route``, ``n`` and, per router,
            ``{router}_route_rate`` with ``_low``/``_high``, ``{router}_auc`` with ``_low``/``_high``,
            ``{router}_passes``).
        record: the full training record.
    """

    layer: int
    position: str
    kind: str
    threshold: float
    route_rate: float
    auc: Estimate
    routers: Mapping[str, Estimate]
    sources: tuple[Mapping, ...] = ()
    record: Mapping = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Mapping) -> TrainSummary:
        gate, quality = record["gate"], record["routing_quality"]
        routers = {
            name: Estimate.from_columns(quality[name], "auc", prefix="") for name in ("embedding", "self_classify")
        }
        table = tuple(record.get("leave_one_source_out", {}).get("table", ()))
        return cls(
            gate["layer"],
            gate["position"],
            gate["kind"],
            gate["threshold"],
            gate["route_rate"],
            Estimate.from_columns(quality["gate"], "auc", prefix=""),
            routers,
            table,
            record,
        )

    def route_rate_of(self, source: str, router: str = "gate") -> Estimate:
        """The share of unseen ``source`` that ``router`` (``gate``, ``embedding``, ``self_classify``, ...) routes."""
        row = next(row for row in self.sources if row["source"] == source)
        return Estimate(
            row[f"{router}_route_rate"],
            row[f"{router}_route_rate_low"],
            row[f"{router}_route_rate_high"],
            row.get(f"{router}_n", row["n"]),
        )

    def lines(self) -> list[str]:
        lines = [
            f"gate: block {self.layer}, {self.position} token(s), {self.kind}; AUC on unseen sources "
            f"{self.auc.format(2, n=True)}; threshold {self.threshold:.3f} routes {self.route_rate:.0%}"
        ] + [
            f"{name.replace('_', '-')} router on the same sources: AUC {auc.format(2)}"
            for name, auc in self.routers.items()
        ]
        if self.sources:
            passing = {
                name: sum(bool(row.get(f"{name}_passes")) for row in self.sources)
                for name in ("gate", "embedding", "self_classify")
            }
            lines.append(
                f"unseen sources within target: gate {passing['gate']}, MiniLM {passing['embedding']}, "
                f"self-classify {passing['self_classify']} of {len(self.sources)}"
            )
            lines.append(
                "share routed to the persona path per unseen source [95% CI] (target: base <= 10%, persona >= 90%; "
                "x: missed)"
            )
            lines.append(f"  {'source':22s} {'route':7s} {'n':>4s}  {'gate':19s} {'MiniLM':19s} {'self-classify':19s}")
            for row in self.sources:
                cells = [
                    f"{self.route_rate_of(row['source'], name).format(2)}"
                    f"{'' if row.get(f'{name}_passes') is not False else ' x'}"
                    for name in ("gate", "embedding", "self_classify")
                ]
                lines.append(
                    f"  {row['source']:22s} {row['route']:7s} {row['n']:4d}  " + " ".join(f"{c:19s}" for c in cells)
                )
        exam = self.record.get("exam_check")
        if exam:
            unseen = Estimate.from_columns(exam, "unseen_route_rate")
            deployed = Estimate.from_columns(exam, "deployed_route_rate")
            lines.append(
                f"exam check: {exam['n']} {exam['source']} stems outside the gate's data routed {unseen.format(2)} by "
                f"the gate fitted without {exam['source']}, {deployed.format(2)} by the deployed gate "
                f"(target <= {exam['limit']:.0%})"
            )
        for name, adapter in self.record.get("adapters", {}).items():
            fidelity = adapter.get("fidelity")
            if fidelity:
                control = self.other_persona_fidelity(name)
                teacher = f"{adapter['teacher_length']} " if adapter.get("teacher_length") else ""
                lines.append(
                    f"adapter {name!r}: fidelity to the {teacher}persona {self.fidelity(name).format(2, n=True)} "
                    f"on held-out persona-path samples (persona effect {fidelity['kl_teacher_base']:.3f} nats/token, "
                    f"{fidelity['kl_teacher_student']:.3f} left"
                    + (f"; another persona's prompt: {control.format(2)}" if control else "")
                    + ")"
                )
        return lines

    def fidelity(self, adapter: str = "prism") -> Estimate:
        """The share of the persona's effect ``adapter`` reproduces on held-out persona-path samples
        (``prism.fidelity``)."""
        return Estimate.from_columns(self.record["adapters"][adapter]["fidelity"], "fidelity")

    def other_persona_fidelity(self, adapter: str = "prism") -> Estimate | None:
        """The control beside ``fidelity``: the share another persona's prompt reproduces (None if not measured)."""
        fidelity = self.record["adapters"][adapter]["fidelity"]
        return (
            Estimate.from_columns(fidelity, "other_persona_fidelity") if "other_persona_fidelity" in fidelity else None
        )


@dataclass(frozen=True)
class CompareSummary(Summary):
    """The Table-1 comparison: one row per system; ``record`` as in ``compare/summary.json``.

    ``lines()`` (what ``prism compare`` prints) is the table, then per knowledge source base's and PRISM's accuracy and
    margin and their margin difference, then each router's route rate per data set (when the record holds them).

    Args:
        directory: the comparison's folder (``compare/``, with ``report.md`` inside).
        table: one row per system: 0-100 scores with their 95% CIs, as in ``compare/table.csv`` (``score`` reads
            one as an ``Estimate``).
        record: the full comparison summary (``knowledge`` and ``router_rates``: the per-source tables).
    """

    directory: Path
    table: tuple[Mapping, ...]
    record: Mapping = field(default_factory=dict, repr=False, compare=False)

    @property
    def report(self) -> Path:
        return self.directory / "report.md"

    def score(self, system: str, column: str) -> Estimate:
        """``column`` of ``system``: a data set (capitals, continents, currencies, city-countries, harmbench, mtbench),
        knowledge, overall, ``{set}_margin``, knowledge_margin or margin (capitals), each also as ``..._vs_base``."""
        return Estimate.from_columns(next(row for row in self.table if row["system"] == system), column)

    def knowledge(self, source: str, system: str = "PRISM", column: str = "margin_vs_base") -> Estimate:
        """``column`` (accuracy, margin, route_rate, accuracy_vs_base, margin_vs_base) of ``system`` on one knowledge
        source."""
        return Estimate.from_columns(
            next(r for r in self.record["knowledge"] if r["source"] == source and r["system"] == system), column
        )

    def trade_off(self) -> list[str]:
        """What the table shows, in words with CIs (``compare_report.trade_off``): the demo's closing lines."""
        return trade_off(self.table, self.record.get("route_rates", ()))

    def lines(self) -> list[str]:
        """The comparison as Markdown tables: the systems, knowledge per source, route rates per data set."""
        lines = format_table(self.table).splitlines()
        if self.record.get("knowledge") or self.record.get("router_rates"):
            lines += [""] + format_sources(
                self.record.get("knowledge", ()), self.record.get("router_rates", ())
            ).splitlines()
        return lines
