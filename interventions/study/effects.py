"""Tidy tables of a study's per-item rows: cell means, paired persona effects, per category.

Every mean carries n and a bootstrap 95% CI. Effects are paired on the same items: a persona
condition minus the no-persona baseline (explicit empty system message), and the matched expert
minus the random persona at the same length and placement, always within one prompt format (the
baseline of the same format). Items without a value for a metric (an unparseable judgement) drop
out of that metric's pair only. Rows written before formats existed count as ``plain``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from probes.core.formats import DEFAULT_FORMAT
from probes.core.stats import bootstrap_mean, paired_difference

BASELINE_LABEL = "none[empty]"
METRICS = ("accuracy", "margin", "refusal_rate", "strict", "loose", "judge_score", "judge_score_turn2")
CONDITION_FIELDS = ("task", "format", "condition", "persona_spec", "length", "placement", "base_system")
FIELD_DEFAULTS = {"format": DEFAULT_FORMAT}  # what a row without the field means


def _value(row: Mapping, metric: str) -> float | None:
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _groups(rows: Iterable[Mapping], keys: Sequence[str]) -> dict[tuple, list[Mapping]]:
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(key, FIELD_DEFAULTS.get(key)) for key in keys)].append(row)
    return groups


def _metrics(rows: Sequence[Mapping]) -> list[str]:
    return [metric for metric in METRICS if any(_value(row, metric) is not None for row in rows)]


def cell_table(rows: Sequence[Mapping], seed: int = 0) -> list[dict]:
    """One line per (task, condition, metric): n, mean, 95% CI, and the chance level."""
    table = []
    for key, group in _groups(rows, CONDITION_FIELDS).items():
        for metric in [metric for metric in METRICS if any(metric in row for row in group)]:
            values = [v for v in (_value(row, metric) for row in group) if v is not None]
            estimate = bootstrap_mean(values, seed=seed) if values else None  # e.g. no judgement parsed
            chance = [row["chance"] for row in group if "chance" in row]
            table.append(
                {
                    **dict(zip(CONDITION_FIELDS, key)),
                    "metric": metric,
                    "n": len(values),
                    **(estimate.columns("mean", prefix="") if estimate else dict.fromkeys(("mean", "low", "high"))),
                    "chance": sum(chance) / len(chance) if chance and metric == "accuracy" else None,
                    "unparseable": len(group) - len(values) if metric.startswith("judge") else None,
                }
            )
    return table


def _paired(treated: Sequence[Mapping], reference: Sequence[Mapping], metric: str, seed: int) -> dict | None:
    baseline = {row["item_id"]: _value(row, metric) for row in reference}
    pairs = [(_value(row, metric), baseline.get(row["item_id"])) for row in treated]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    estimate = paired_difference([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
    return {"n": estimate.n, **estimate.columns("delta", prefix=""), "significant": estimate.significant}


def effect_table(rows: Sequence[Mapping], seed: int = 0, by_category: bool = False) -> list[dict]:
    """Paired differences: each condition minus the baseline, and expert minus random persona.

    With ``by_category`` the pairs are formed within each item category."""
    table = []
    group_keys = ("task", "format", "category") if by_category else ("task", "format")
    for key, task_rows in _groups(rows, group_keys).items():
        scope = dict(zip(group_keys, key))
        cells = _groups(task_rows, CONDITION_FIELDS)
        labels = {fields[CONDITION_FIELDS.index("condition")]: cell for fields, cell in cells.items()}
        baseline = labels.get(BASELINE_LABEL)
        for fields, cell in cells.items():
            condition = dict(zip(CONDITION_FIELDS, fields))
            references = []
            if baseline is not None and condition["condition"] != BASELINE_LABEL:
                references.append((BASELINE_LABEL, baseline))
            if condition["persona_spec"] == "expert":
                random_label = condition["condition"].replace("expert/", "random/", 1)
                if random_label in labels:
                    references.append((random_label, labels[random_label]))
            for reference_label, reference in references:
                for metric in _metrics(cell):
                    paired = _paired(cell, reference, metric, seed)
                    if paired is not None:
                        table.append({**condition, **scope, "metric": metric, "reference": reference_label, **paired})
    return table


def judge_consistency(rows: Sequence[Mapping]) -> dict:
    """How much the judge agrees with itself: the same answer judged under two sampling seeds."""
    pairs, parsed, total, values = [], 0, 0, []
    for row in rows:
        ratings = row.get("ratings") or {}
        first_turn = [value for name, value in sorted(ratings.items()) if name.startswith("turn1")]
        total += len(first_turn)
        parsed += sum(value is not None for value in first_turn)
        values += [value for value in first_turn if value is not None]
        if len(first_turn) >= 2 and first_turn[0] is not None and first_turn[1] is not None:
            pairs.append((first_turn[0], first_turn[1]))
    result = {
        "judgements": total,
        "parsed": parsed,
        "parse_rate": parsed / total if total else None,
        "pairs": len(pairs),
    }
    if values:
        mode = max(set(values), key=values.count)
        result.update(most_common_rating=mode, share_most_common=values.count(mode) / len(values))
    if pairs:
        import numpy as np
        from scipy.stats import spearmanr

        a, b = np.array(pairs).T
        result.update(
            exact_agreement=float(np.mean(a == b)),
            within_one=float(np.mean(abs(a - b) <= 1)),
            mean_abs_difference=float(np.mean(abs(a - b))),
            spearman=float(spearmanr(a, b).statistic) if a.std() > 0 and b.std() > 0 else None,
        )
    return result
