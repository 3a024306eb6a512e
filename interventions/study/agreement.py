"""The prompt-format control: whether a persona effect keeps its sign across prompt formats.

An effect measured under several formats (``probes.core.formats``) is called a finding only if it
has the same sign and is significant in every one of them. If it is significant in one format
and goes the other way in another, it depends on the format: a property of how the prompt was
laid out, not of the model. An effect measured under one format only is marked as such: its
sign was never checked against another layout.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from interventions.study.effects import FIELD_DEFAULTS
from probes.core.stats import Estimate

__all__ = ["DEPENDS", "EFFECT_FIELDS", "HOLDS", "ONE_FORMAT", "format_agreement", "format_verdict", "per_format"]

EFFECT_FIELDS = ("task", "condition", "persona_spec", "length", "placement", "base_system", "metric", "reference")
HOLDS = "holds across formats"
DEPENDS = "depends on the format"
ONE_FORMAT = "one format only"


def format_verdict(rows: Sequence[Mapping]) -> str:
    """What one effect's rows (one per format, each with ``delta`` and ``significant``) say together.

    Returns:
        ``HOLDS`` (same sign, significant in every format, two formats or more), ``DEPENDS`` (significant in one
        format, zero or the other sign in another), ``ONE_FORMAT`` (a single format: significant or not), or
        "same sign, significant in k of m formats" / "not significant in any format".
    """
    if len(rows) < 2:
        return ONE_FORMAT
    signs = {(row["delta"] > 0) - (row["delta"] < 0) for row in rows}
    significant = sum(bool(row["significant"]) for row in rows)
    if significant and len(signs) > 1:
        return DEPENDS
    if not significant:
        return "not significant in any format"
    if significant == len(rows):
        return HOLDS
    return f"same sign, significant in {significant} of {len(rows)} formats"


def format_agreement(effects: Sequence[Mapping], formats: Sequence[str] | None = None) -> list[dict]:
    """One row per effect (task, condition, metric, reference) across the formats it was measured in.

    Args:
        effects: ``effect_table`` rows (one per format).
        formats: the order of the per-format columns (default: as met).

    Returns:
        rows with the effect's fields, ``formats`` (names, comma-separated), per format ``delta_<f>``, ``low_<f>``,
        ``high_<f>``, ``n_<f>`` and ``significant_<f>``, the ``verdict`` (``format_verdict``) and ``finding`` (True
        only when the effect holds across formats).
    """
    groups: dict[tuple, dict[str, Mapping]] = defaultdict(dict)
    for effect in effects:
        groups[tuple(effect.get(key) for key in EFFECT_FIELDS)][effect.get("format", FIELD_DEFAULTS["format"])] = effect
    table = []
    for key, by_format in groups.items():
        order = [f for f in formats or by_format if f in by_format]
        row = dict(zip(EFFECT_FIELDS, key))
        row["formats"] = ",".join(order)
        for name in order:
            found = by_format[name]
            row.update(
                {
                    f"delta_{name}": found["delta"],
                    f"low_{name}": found["low"],
                    f"high_{name}": found["high"],
                    f"n_{name}": found["n"],
                    f"significant_{name}": found["significant"],
                }
            )
        row["verdict"] = format_verdict([by_format[name] for name in order])
        row["finding"] = row["verdict"] == HOLDS
        table.append(row)
    return table


def per_format(row: Mapping, name: str) -> Estimate:
    """The effect under format ``name`` of a ``format_agreement`` row, as an ``Estimate``."""
    return Estimate(row[f"delta_{name}"], row[f"low_{name}"], row[f"high_{name}"], row[f"n_{name}"])
