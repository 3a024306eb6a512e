"""The study's grids and plans: which conditions and tasks a budget runs."""

from __future__ import annotations

import pytest

from interventions.study.plan import BUDGETS, resolve_plan
from interventions.study.runner import TASKS, conditions
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition


def test_grids_hold_baselines_and_the_full_grid_is_complete():
    for task in TASKS.values():
        default = conditions(task, "default")
        assert default[:2] == [Condition("none"), Condition("none", base_system="template")]
        assert len(conditions(task, "full")) == 2 + 14 * 3 * 2
    assert any(c.persona == "safety-monitor" and c.length == "long" for c in conditions(TASKS["harmbench"], "default"))
    with pytest.raises(ToolkitError, match="unknown grid"):
        conditions(TASKS["capitals"], "huge")


def test_plans_narrow_a_budget_to_tasks_items_and_grid():
    plan = resolve_plan("smoke", tasks=["capitals", "mmlu-cloze"], items=3, grid="default")
    assert dict(plan.items) == {"capitals": 3, "mmlu-cloze": 3} and plan.grid == "default"
    assert plan.max_new_tokens == {**BUDGETS["default"].max_new_tokens, **BUDGETS["smoke"].max_new_tokens}
    assert dict(resolve_plan("smoke", tasks=["mmlu-cloze"]).items) == {"mmlu-cloze": BUDGETS["default"].items["mmlu-cloze"]}
    assert dict(resolve_plan("default", tasks=["currencies", "capitals"]).items) == {"currencies": 32, "capitals": 32}
    with pytest.raises(ToolkitError, match="unknown budget"):
        resolve_plan("huge")
    with pytest.raises(ToolkitError, match="at least 1"):
        resolve_plan("smoke", items=0)
