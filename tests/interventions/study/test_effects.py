"""Effect tables: paired on items, unparseable judgements skipped, judge consistency."""

from __future__ import annotations

import pytest

from interventions.study.effects import cell_table, effect_table, judge_consistency


def _row(task, condition, spec, item, category, **metrics):
    length, placement = (None, None) if spec == "none" else condition.split("/")[1:3]
    if placement:
        placement = placement.split("[")[0]
    return {
        "task": task,
        "condition": condition,
        "persona_spec": spec,
        "length": length,
        "placement": placement,
        "base_system": "empty",
        "item_id": item,
        "category": category,
        **metrics,
    }


def test_effects_are_paired_on_items_and_skip_unparseable_judgements():
    rows = []
    for i in range(10):
        rows.append(_row("t", "none[empty]", "none", f"i{i}", "a", margin=float(i), judge_score=5.0))
        rows.append(
            _row(
                "t",
                "expert/long/system[empty]",
                "expert",
                f"i{i}",
                "a",
                margin=i - 1.0,
                judge_score=float("nan") if i < 3 else 6.0,
            )
        )
        rows.append(_row("t", "random/long/system[empty]", "random", f"i{i}", "a", margin=i - 0.5, judge_score=5.5))
    effects = effect_table(rows)
    margin = next(
        e
        for e in effects
        if e["condition"].startswith("expert") and e["metric"] == "margin" and e["reference"] == "none[empty]"
    )
    assert margin["delta"] == pytest.approx(-1.0) and margin["n"] == 10 and margin["significant"]
    versus_random = next(
        e
        for e in effects
        if e["condition"].startswith("expert") and e["metric"] == "margin" and e["reference"].startswith("random")
    )
    assert versus_random["delta"] == pytest.approx(-0.5)
    judged = next(
        e
        for e in effects
        if e["condition"].startswith("expert") and e["metric"] == "judge_score" and e["reference"] == "none[empty]"
    )
    assert judged["n"] == 7 and judged["delta"] == pytest.approx(1.0)
    cells = cell_table(rows)
    expert_judge = next(c for c in cells if c["condition"].startswith("expert") and c["metric"] == "judge_score")
    assert expert_judge["unparseable"] == 3 and expert_judge["n"] == 7


def test_judge_consistency_counts_parses_and_agreement():
    rows = [
        {"ratings": {"turn1_seed0": 5.0, "turn1_seed1": 5.0}},
        {"ratings": {"turn1_seed0": 7.0, "turn1_seed1": 4.0}},
        {"ratings": {"turn1_seed0": None, "turn1_seed1": 6.0}},
    ]
    result = judge_consistency(rows)
    assert result["judgements"] == 6 and result["parsed"] == 5 and result["pairs"] == 2
    assert result["exact_agreement"] == 0.5 and result["mean_abs_difference"] == 1.5
