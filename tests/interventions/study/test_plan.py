"""The study's grids and plans: which conditions and tasks a budget runs."""

from __future__ import annotations

import json

import pytest

from interventions.study.plan import BUDGETS, GRIDS, applies, resolve_plan
from interventions.study.runner import TASKS, conditions
from probes.core.errors import ToolkitError
from probes.core.personas import persona_library
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
    assert dict(resolve_plan("smoke", tasks=["mmlu-cloze"]).items) == {
        "mmlu-cloze": BUDGETS["default"].items["mmlu-cloze"]
    }
    assert dict(resolve_plan("default", tasks=["currencies", "capitals"]).items) == {"currencies": 32, "capitals": 32}
    with pytest.raises(ToolkitError, match="unknown budget"):
        resolve_plan("huge")
    with pytest.raises(ToolkitError, match="at least 1"):
        resolve_plan("smoke", items=0)


@pytest.fixture()
def user_library(tmp_path):
    """The built-in personas plus a user's: a pirate at two lengths, an Africa expert, and a safety monitor of their own
    at one length."""
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "personas": [
                    {
                        "name": "pirate",
                        "min": "You are a pirate.",
                        "long": "You are a pirate who has sailed every sea.",
                    },
                    {"name": "africanist", "short": "You are a historian of Africa.", "category": "Africa"},
                    {"name": "safety-monitor", "long": "You watch for harm."},
                ]
            }
        )
    )
    return persona_library(path)


@pytest.mark.parametrize("grid", GRIDS)
def test_a_users_personas_enter_every_tasks_grid_at_the_lengths_they_have(grid, user_library):
    for task in (TASKS["capitals"], TASKS["mtbench"], TASKS["harmbench"]):
        mine = conditions(task, grid, user_library)
        assert {Condition("pirate", "min"), Condition("pirate", "long"), Condition("africanist", "short")} <= set(mine)
        assert Condition("pirate", "short") not in mine and len(mine) == len(set(mine))
        assert all(c.length == "long" for c in mine if c.persona == "safety-monitor")  # the user's has no other
        assert not {c.persona for c in conditions(task, grid)} & {"pirate", "africanist"}
    if grid == "full":
        assert Condition("pirate", "long", "user") in conditions(TASKS["capitals"], grid, user_library)


def test_the_matched_expert_comes_from_the_users_library_too(user_library):
    africa, asia = [item for item in TASKS["capitals"].load_items(4) if item.category in ("Africa", "Asia")]
    assert not applies(Condition("expert"), africa)
    assert applies(Condition("expert"), africa, user_library) and not applies(Condition("expert"), asia, user_library)
