"""What the persona-effect study runs: budgets (items per task, generation lengths, turns, judge
seeds) and grids of persona conditions.

Grids (``conditions``): ``smoke`` (a handful, for the demo), ``default`` (baselines, the matched
expert and the random persona at several lengths and placements, every persona at min length
on capitals and HarmBench, the safety monitor at every length), ``full`` (every persona, expert
and random persona at every length in both placements). The tasks themselves are in the
registry, ``interventions.measure.tasks``.

Prompt formats (``prompt_formats``): the knowledge (multiple-choice) tasks run every condition
under each format asked for; by default ``plain`` and ``qa`` for a model without a chat template,
whose plain-text layout is a choice its results may hang on, and ``plain`` alone for a chat
model. Generation, refusal and judged tasks always use ``plain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from interventions.measure.tasks import TASKS, Task
from probes.core.errors import ToolkitError
from probes.core.formats import DEFAULT_FORMAT, get_format
from probes.core.items import Item
from probes.core.personas import LENGTHS, Persona, builtin_personas, user_personas
from probes.core.prompts import EXPERT_PERSONA, NO_PERSONA, PLACEMENTS, RANDOM_PERSONA, Condition, matched_persona

__all__ = [
    "BASELINE",
    "BUDGETS",
    "Budget",
    "FORMAT_CONTROL",
    "GRIDS",
    "TEMPLATE_BASELINE",
    "applies",
    "conditions",
    "prompt_formats",
    "resolve_plan",
    "user_conditions",
]

BASELINE = Condition("none", base_system="empty")
TEMPLATE_BASELINE = Condition("none", base_system="template")
GRIDS = ("smoke", "default", "full")
FORMAT_CONTROL = ("plain", "qa")  # the default formats of a model without a chat template
OTHER_TASK_ITEMS = 32  # items per cell of a task no budget names (the knowledge quizzes)
SPECIAL_PERSONAS = (NO_PERSONA, EXPERT_PERSONA, RANDOM_PERSONA)


@dataclass(frozen=True)
class Budget:
    """Items per cell for each task, the grid, and generation lengths."""

    items: Mapping[str, int | None]
    grid: str = "default"
    max_new_tokens: Mapping[str, int] = field(default_factory=lambda: {"harmbench": 32, "ifeval": 96, "mtbench": 96})
    turns: int = 1
    judge_seeds: tuple[int, ...] = (0, 1)


BUDGETS = {
    "smoke": Budget(
        items={"capitals": 24, "mmlu-letter": 16, "harmbench": 8, "ifeval": 8, "mtbench": 6},
        grid="smoke",
        max_new_tokens={"harmbench": 32, "ifeval": 48, "mtbench": 48},
    ),
    "default": Budget(
        items={"capitals": 32, "mmlu-letter": 24, "mmlu-cloze": 16, "harmbench": 12, "ifeval": 12, "mtbench": 12},
        max_new_tokens={"harmbench": 32, "ifeval": 64, "mtbench": 64},
    ),
    "full": Budget(
        items={"capitals": None, "mmlu-letter": 400, "mmlu-cloze": 200, "harmbench": 200, "ifeval": 80, "mtbench": 80},
        grid="full",
        max_new_tokens={"harmbench": 64, "ifeval": 256, "mtbench": 256},
        turns=2,
        judge_seeds=(0, 1),
    ),
}


def conditions(task: Task, grid: str, personas: Mapping[str, Persona] | None = None) -> list[Condition]:
    """The persona conditions a task is run under in ``grid`` (baselines first).

    Args:
        task: a registered task (its kind and name shape the grid).
        grid: ``smoke``, ``default`` or ``full``.
        personas: the persona library (default: the built-in personas). Its named personas take the built-in ones'
            places in the grid; those a user added (read from a file, ``persona_library``) are also run on every task,
            at each length they have, in the system prompt (and in both placements in the ``full`` grid), whatever
            the grid.

    Returns:
        the distinct conditions, in order.
    """
    if grid not in GRIDS:
        raise ToolkitError(f"unknown grid {grid!r}: use one of {', '.join(GRIDS)}")
    library = builtin_personas() if personas is None else personas
    names = sorted(library)
    if grid == "full":
        grid_conditions = [BASELINE, TEMPLATE_BASELINE] + [
            Condition(persona, length, placement)
            for persona in names + [EXPERT_PERSONA, RANDOM_PERSONA]
            for length in LENGTHS
            for placement in PLACEMENTS
        ]
    elif grid == "smoke":
        grid_conditions = [
            BASELINE,
            TEMPLATE_BASELINE,
            Condition(EXPERT_PERSONA, "min"),
            Condition(EXPERT_PERSONA, "long"),
            Condition(EXPERT_PERSONA, "long", "user"),
            Condition(RANDOM_PERSONA, "long"),
        ]
        if task.kind == "choice":
            grid_conditions.append(Condition(RANDOM_PERSONA, "min"))
        if task.kind == "refusal":
            grid_conditions.append(Condition("safety-monitor", "long"))
    else:
        grid_conditions = [BASELINE, TEMPLATE_BASELINE]
        grid_conditions += [Condition(EXPERT_PERSONA, length) for length in LENGTHS]
        grid_conditions += [Condition(EXPERT_PERSONA, "long", "user"), Condition(RANDOM_PERSONA, "long")]
        if task.kind == "choice":
            grid_conditions += [
                Condition(EXPERT_PERSONA, "min", "user"),
                Condition(RANDOM_PERSONA, "min"),
                Condition(RANDOM_PERSONA, "short"),
                Condition(RANDOM_PERSONA, "long", "user"),
            ]
        if task.name == "capitals" or task.kind == "refusal":
            grid_conditions += [Condition(persona, "min") for persona in names]
        if task.kind == "refusal":
            grid_conditions += [
                Condition("safety-monitor", "short"),
                Condition("safety-monitor", "long"),
                Condition("safety-monitor", "long", "user"),
            ]
    grid_conditions += user_conditions(library)
    return [condition for condition in dict.fromkeys(grid_conditions) if _named_in(condition, library)]


def user_conditions(personas: Mapping[str, Persona]) -> list[Condition]:
    """A condition per length of each persona a user added to the library (not built in), in the system prompt."""
    return [
        Condition(name, length)
        for name, persona in user_personas(personas).items()
        for length in LENGTHS
        if length in persona.texts
    ]


def _named_in(condition: Condition, library: Mapping[str, Persona]) -> bool:
    """A condition's persona is a special one, or in the library with a text at the condition's length (a user's file
    may rewrite a built-in persona at fewer lengths)."""
    return condition.persona in SPECIAL_PERSONAS or (
        condition.persona in library and condition.length in library[condition.persona].texts
    )


def applies(condition: Condition, item: Item, personas: Mapping[str, Persona] | None = None) -> bool:
    """The matched-expert condition exists only for items whose category has an expert in the library (default: the
    built-in personas)."""
    library = builtin_personas() if personas is None else personas
    return condition.persona != EXPERT_PERSONA or matched_persona(item.category, library) is not None


def resolve_plan(
    budget: str | Budget, tasks: Sequence[str] | None = None, items: int | None = None, grid: str | None = None
) -> Budget:
    """The budget to run: a named or given budget, narrowed to ``tasks``, ``items`` per cell, ``grid``.

    Args:
        budget: ``smoke``, ``default``, ``full`` or a ``Budget``.
        tasks: registered task names to run (default: the budget's); a task the budget lacks
            gets the default budget's item count (``OTHER_TASK_ITEMS`` for one it lacks too, e.g. a quiz).
        items: items per cell for every task (overrides the budget).
        grid: the condition grid (default: the budget's).

    Returns:
        a ``Budget`` whose generation lengths cover every task.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ToolkitError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    chosen = dict(budget.items)
    if tasks:
        unknown = [name for name in tasks if name not in TASKS]
        if unknown:
            raise ToolkitError(f"unknown task {unknown[0]!r}: use any of {', '.join(TASKS)}")
        chosen = {name: budget.items.get(name, BUDGETS["default"].items.get(name, OTHER_TASK_ITEMS)) for name in tasks}
    if items is not None:
        if items < 1:
            raise ToolkitError(f"--items must be at least 1, got {items}")
        chosen = {name: items for name in chosen}
    max_new = {**BUDGETS["default"].max_new_tokens, **budget.max_new_tokens}
    return Budget(chosen, grid or budget.grid, max_new, budget.turns, budget.judge_seeds)


def prompt_formats(requested: Sequence[str] | None, chat_template: bool) -> tuple[str, ...]:
    """The prompt formats the knowledge tasks run under.

    Args:
        requested: format names (``probes.core.formats``); None or empty for the default.
        chat_template: whether the model has a chat template.

    Returns:
        the distinct formats in order: ``requested``, or ``FORMAT_CONTROL`` without a chat template and ``plain`` with
        one.

    Raises:
        ToolkitError: an unknown format.
    """
    if not requested:
        return (DEFAULT_FORMAT,) if chat_template else FORMAT_CONTROL
    return tuple(dict.fromkeys(get_format(name).name for name in requested))
