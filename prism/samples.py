"""Bootstrapped samples: one query with both answers and the self-verdict, their file in a PRISM
working directory (``bootstrap/samples.jsonl``, with ``summary.json`` and ``win_rates.csv``) and
their win rates."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.files import write_record, write_table, write_text
from probes.core.stats import bootstrap_mean

__all__ = ["VERDICT_RULES", "Sample", "load_samples", "summarise", "write_samples"]

VERDICT_RULES = ("both", "debiased")


@dataclass(frozen=True)
class Sample:
    """One bootstrapped query with both answers and the self-verdict.

    Args:
        id: ``"{persona}-{index:04d}"``, index counting every kept query.
        persona, query: the persona the query was written under, and the cleaned query.
        answer_plain, answer_persona: the answers without a persona and with it.
        persona_first_wins, persona_second_wins: whether the persona's answer won when shown as A, and as B.
        margins: log p(persona's letter) - log p(other letter), in each order.
    """

    id: str
    persona: str
    query: str
    answer_plain: str
    answer_persona: str
    persona_first_wins: bool  # the persona's answer shown as A
    persona_second_wins: bool  # the persona's answer shown as B
    margins: tuple[float, float]  # log p(persona's letter) - log p(other letter), in each order

    @property
    def label(self) -> int:
        """The paper's rule: 1 only if the persona wins in both orders."""
        return int(self.persona_first_wins and self.persona_second_wins)

    @property
    def debiased_label(self) -> int:
        """1 if the persona's preference summed over both orders is positive: a judge's fixed
        preference for one position cancels out."""
        return int(sum(self.margins) > 0)

    def verdict(self, rule: str) -> int:
        if rule not in VERDICT_RULES:
            raise ToolkitError(f"unknown verdict rule {rule!r}: use one of {', '.join(VERDICT_RULES)}")
        return self.label if rule == "both" else self.debiased_label


def write_samples(work: PrismDirectory, samples: Sequence[Sample], facts: Mapping, seed: int = 0) -> dict:
    """Write the samples, their summary (win rates with CIs of bootstrap ``seed``, with ``facts`` such as the
    bootstrap's settings) and the per-persona win-rate table into ``work``'s bootstrap folder; returns the summary."""
    write_text(
        work.samples, "".join(json.dumps({**asdict(s), "label": s.label}, ensure_ascii=False) + "\n" for s in samples)
    )
    summary = {**facts, **summarise(samples, seed)}
    write_record(work.bootstrap_summary, summary)
    write_table(work.win_rates, summary["by_persona"])
    return summary


def load_samples(source: str | Path | PrismDirectory) -> list[Sample]:
    """The bootstrapped samples.

    Args:
        source: a PRISM working directory, or a ``samples.jsonl`` file.

    Returns:
        the samples in file order.

    Raises:
        ToolkitError: no samples file, a line that is not a sample, or no samples at all.
    """
    path = Path(source)
    path = PrismDirectory(path).samples if path.is_dir() else path
    if not path.is_file():
        raise ToolkitError(f"no bootstrap samples at {path}: run `prism bootstrap` first")
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record.pop("label", None)
            record["margins"] = tuple(record["margins"])
            samples.append(Sample(**record))
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ToolkitError(
                f"{path} line {number} is not a bootstrap sample ({error}): rerun `prism bootstrap`"
            ) from error
    if not samples:
        raise ToolkitError(f"{path} holds no samples: rerun `prism bootstrap`")
    return samples


def summarise(samples: Sequence[Sample], seed: int = 0) -> dict:
    """Persona win rates with 95% CIs, overall and per persona, and how often the two orders
    agree (a judge that only follows position never agrees with itself: the persona then wins
    as A and loses as B, or the reverse, every time)."""

    def rates(group: Sequence[Sample]) -> dict:
        win = bootstrap_mean([s.label for s in group], seed=seed)
        first = np.array([s.persona_first_wins for s in group])
        second = np.array([s.persona_second_wins for s in group])
        return {
            "n": win.n,
            **win.columns("win_rate", prefix=""),
            "debiased_win_rate": float(np.mean([s.debiased_label for s in group])),
            "order_agreement": float((first == second).mean()),
            "wins_as_A": float(first.mean()),
            "wins_as_B": float(second.mean()),
        }

    by_persona = [
        {"persona": name, **rates([s for s in samples if s.persona == name])}
        for name in dict.fromkeys(s.persona for s in samples)
    ]
    return {"overall": rates(samples), "by_persona": by_persona}
