"""The persona-effect study: every task under every persona condition of a grid, resumable.

Tasks (``TASKS``):
- ``capitals``: capital-city questions (GeoNames data), cloze scoring after an answer stem,
  summed log-probabilities: a knowledge set small models can do.
- ``mmlu-letter`` / ``mmlu-cloze``: MMLU by super-category, letter or cloze scoring.
- ``harmbench``: refusal rate on HarmBench standard behaviours (greedy, keyword rule).
- ``ifeval``: MT-Bench first turns with one verifiable instruction each; strict and loose.
- ``mtbench``: MT-Bench answers (first turns; second turns with ``turns=2``) scored 1-10 by a
  judge, each answer judged once per judge seed to measure the judge's consistency.

Grids (``conditions``): ``smoke`` (a handful, for the demo), ``default`` (baselines, the matched
expert and the random persona at several lengths and placements, every persona at min length
on capitals and HarmBench, the safety monitor at every length), ``full`` (every persona, expert and random persona at every
length in both placements). Every scored or generated prompt goes to a ledger as soon as its
batch ends; identical prompts met in different cells are computed once, and a rerun skips all
work on record.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from interventions.measure.evaluate import DEFAULT_ANSWER_PREFIX
from interventions.measure.generation import generate
from interventions.measure.instructions import attach_instructions, check_response
from interventions.measure.judge import EndpointJudge, JudgeRequest, SelfJudge, parse_rating
from interventions.measure.refusal import is_refusal
from interventions.measure.scoring import score_choices
from interventions.study.ledger import Ledger, work_key
from probes.core.datasets import Item, load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.files import write_json
from probes.core.models import load_model
from probes.core.personas import LENGTHS, builtin_personas
from probes.core.prompts import (
    EXPERT_PERSONA,
    PLACEMENTS,
    RANDOM_PERSONA,
    Condition,
    RenderedPrompt,
    encode,
    matched_persona,
    render_conversation,
)
from probes.core.rendering import continuations, render_items

BASELINE = Condition("none", base_system="empty")
TEMPLATE_BASELINE = Condition("none", base_system="template")
GRIDS = ("smoke", "default", "full")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # choice | refusal | instructions | judged
    dataset: str
    metrics: tuple[str, ...]
    scoring: str | None = None
    normalise: str | None = None
    answer_prefix: str = DEFAULT_ANSWER_PREFIX

    def load_items(self, n: int | None, seed: int) -> list[Item]:
        items = load_dataset(self.dataset)
        if self.kind == "refusal":
            items = [item for item in items if item.subcategory == "standard"]
        items = stratified_sample(items, n, seed=seed)
        return attach_instructions(items, seed=seed) if self.kind == "instructions" else items


TASKS = {
    task.name: task
    for task in (
        Task("capitals", "choice", "capitals", ("accuracy", "margin"), scoring="cloze", normalise="none"),
        Task("mmlu-letter", "choice", "mmlu", ("accuracy", "margin"), scoring="letter", normalise="none"),
        Task("mmlu-cloze", "choice", "mmlu", ("accuracy", "margin"), scoring="cloze", normalise="tokens"),
        Task("harmbench", "refusal", "harmbench", ("refusal_rate",)),
        Task("ifeval", "instructions", "mtbench", ("strict", "loose")),
        Task("mtbench", "judged", "mtbench", ("judge_score",)),
    )
}


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
        grid="smoke", max_new_tokens={"harmbench": 32, "ifeval": 48, "mtbench": 48},
    ),
    "default": Budget(
        items={"capitals": 32, "mmlu-letter": 24, "mmlu-cloze": 16, "harmbench": 12, "ifeval": 12, "mtbench": 12},
        max_new_tokens={"harmbench": 32, "ifeval": 64, "mtbench": 64},
    ),
    "full": Budget(
        items={"capitals": None, "mmlu-letter": 400, "mmlu-cloze": 200, "harmbench": 200, "ifeval": 80, "mtbench": 80},
        grid="full", max_new_tokens={"harmbench": 64, "ifeval": 256, "mtbench": 256}, turns=2, judge_seeds=(0, 1),
    ),
}


def conditions(task: Task, grid: str) -> list[Condition]:
    """The persona conditions a task is run under in ``grid`` (baselines first)."""
    if grid not in GRIDS:
        raise ToolkitError(f"unknown grid {grid!r}: use one of {', '.join(GRIDS)}")
    personas = sorted(builtin_personas())
    if grid == "full":
        grid_conditions = [BASELINE, TEMPLATE_BASELINE] + [
            Condition(persona, length, placement)
            for persona in personas + [EXPERT_PERSONA, RANDOM_PERSONA]
            for length in LENGTHS
            for placement in PLACEMENTS
        ]
    elif grid == "smoke":
        grid_conditions = [
            BASELINE, TEMPLATE_BASELINE, Condition(EXPERT_PERSONA, "min"), Condition(EXPERT_PERSONA, "long"),
            Condition(EXPERT_PERSONA, "long", "user"), Condition(RANDOM_PERSONA, "long"),
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
            grid_conditions += [Condition(EXPERT_PERSONA, "min", "user"), Condition(RANDOM_PERSONA, "min"),
                                Condition(RANDOM_PERSONA, "short"), Condition(RANDOM_PERSONA, "long", "user")]
        if task.name == "capitals" or task.kind == "refusal":
            grid_conditions += [Condition(persona, "min") for persona in personas]
        if task.kind == "refusal":
            grid_conditions += [Condition("safety-monitor", "short"), Condition("safety-monitor", "long"),
                                Condition("safety-monitor", "long", "user")]
    return list(dict.fromkeys(grid_conditions))


def applies(condition: Condition, item: Item) -> bool:
    """The matched-expert condition exists only for items whose category has an expert."""
    return condition.persona != EXPERT_PERSONA or matched_persona(item.category, builtin_personas()) is not None


def run_study(
    out: str | Path,
    *,
    model_name: str = "default",
    budget: str | Budget = "default",
    tasks: Sequence[str] | None = None,
    items: int | None = None,
    grid: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict]:
    """Run (or resume) the study into ``out``; returns the tidy per-item rows."""

    plan = _plan(budget, tasks, items, grid)
    if judge_url and not judge_model:
        raise ToolkitError("--judge-url needs --judge-model: the endpoint's model name")
    out = Path(out)
    model, tokenizer = load_model(model_name)
    settings = {
        "model": model.cfg.model_name, "model_name": model_name, "seed": seed,
        "grid": plan.grid, "items": dict(plan.items), "max_new_tokens": dict(plan.max_new_tokens),
        "turns": plan.turns, "judge_seeds": list(plan.judge_seeds),
        "judge": f"endpoint:{judge_model}@{judge_url}" if judge_url else "self",
    }
    judge = EndpointJudge(judge_url, judge_model) if judge_url else SelfJudge(model, tokenizer)
    _check_same_model(out, settings["model"])
    write_json(out / "study.json", settings)
    runner = _Runner(model, tokenizer, out / "ledger", seed, batch_size, progress)
    rows: list[dict] = []
    for name, n in plan.items.items():
        task = TASKS[name]
        task_items = task.load_items(n, seed)
        _say(f"{name}: {len(task_items)} items x {len(conditions(task, plan.grid))} conditions")
        rows += runner.run(task, task_items, conditions(task, plan.grid), plan, judge)
    write_json(out / "items.json", rows)
    return rows


def _plan(budget: str | Budget, tasks: Sequence[str] | None, items: int | None, grid: str | None) -> Budget:
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ToolkitError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
        budget = BUDGETS[budget]
    chosen = dict(budget.items)
    if tasks:
        unknown = [name for name in tasks if name not in TASKS]
        if unknown:
            raise ToolkitError(f"unknown task {unknown[0]!r}: use any of {', '.join(TASKS)}")
        chosen = {name: budget.items.get(name, BUDGETS["default"].items[name]) for name in tasks}
    if items is not None:
        if items < 1:
            raise ToolkitError(f"--items must be at least 1, got {items}")
        chosen = {name: items for name in chosen}
    max_new = {**BUDGETS["default"].max_new_tokens, **budget.max_new_tokens}
    return Budget(chosen, grid or budget.grid, max_new, budget.turns, budget.judge_seeds)


def _check_same_model(out: Path, model: str) -> None:
    previous = out / "study.json"
    if previous.is_file():
        try:
            recorded = json.loads(previous.read_text(encoding="utf-8")).get("model")
        except json.JSONDecodeError:
            recorded = None
        if recorded and recorded != model:
            raise ToolkitError(f"{out} holds a study of {recorded}, not {model}: choose another --out directory")


class _Runner:
    """Computes what the ledger lacks, then reads every cell's rows from the ledger."""

    def __init__(self, model, tokenizer, ledger_dir: Path, seed: int, batch_size: int, progress: bool) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.ledger_dir, self.seed, self.batch_size, self.progress = ledger_dir, seed, batch_size, progress

    def run(self, task: Task, items: list[Item], grid: list[Condition], plan: Budget, judge) -> list[dict]:
        ledger = Ledger(self.ledger_dir / f"{task.name}.jsonl")
        cells = []  # (condition, item, prompt, key)
        too_long = 0
        for condition in grid:
            chosen = [item for item in items if applies(condition, item)]
            if not chosen:
                continue
            prompts = render_items(
                self.tokenizer, chosen, condition, scoring=task.scoring, answer_prefix=task.answer_prefix
                if task.kind == "choice" else "", seed=self.seed,
            )
            for item, prompt in zip(chosen, prompts):
                if self._fits(task, item, prompt, plan):
                    cells.append((condition, item, prompt, self._key(task, item, prompt, plan)))
                else:
                    too_long += 1
        if too_long:
            _say(f"{task.name}: left out {too_long} prompts longer than the model's context "
                 f"({self.model.cfg.n_ctx} tokens, with room for the answer)")
        todo = {key: (item, prompt) for _, item, prompt, key in cells if key not in ledger}
        if todo:
            self._compute(task, todo, ledger, plan)
        if task.kind == "judged" and plan.turns == 2:
            self._second_turns(task, cells, ledger, plan)
        rows = [self._row(task, condition, item, prompt, ledger[key]) for condition, item, prompt, key in cells]
        if task.kind == "judged":
            self._judge(rows, items, judge, plan, ledger)
        return rows

    def _fits(self, task: Task, item: Item, prompt: RenderedPrompt, plan: Budget) -> bool:
        if task.kind == "choice":
            room = max(len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                       for text in continuations(item, task.scoring))
        else:
            room = plan.max_new_tokens[task.name] * plan.turns
        return len(encode(self.tokenizer, prompt)) + room <= self.model.cfg.n_ctx

    def _key(self, task: Task, item: Item, prompt: RenderedPrompt, plan: Budget) -> str:
        if task.kind == "choice":
            return work_key(text=prompt.text, options=continuations(item, task.scoring), normalise=task.normalise)
        return work_key(text=prompt.text, max_new_tokens=plan.max_new_tokens[task.name], decoding="greedy")

    def _compute(self, task: Task, todo: dict, ledger: Ledger, plan: Budget) -> None:
        def order(key: str) -> tuple:
            prompt = todo[key][1]
            # scoring: a cell's prompts together, so each batch shares its persona prefix;
            # both: similar lengths together, so little is spent on padding
            cell = (prompt.condition.label, prompt.persona or "") if task.kind == "choice" else ()
            return (*cell, -len(prompt.text))

        keys = sorted(todo, key=order)
        chunk = self.batch_size * 4
        verb = "scoring" if task.kind == "choice" else "generating"
        with tqdm(total=len(keys), desc=f"{task.name}: {verb}", unit="prompt", disable=not self.progress) as bar:
            for start in range(0, len(keys), chunk):
                batch = keys[start : start + chunk]
                items = [todo[key][0] for key in batch]
                prompts = [todo[key][1] for key in batch]
                if task.kind == "choice":
                    results = score_choices(
                        self.model, self.tokenizer, prompts, [continuations(item, task.scoring) for item in items],
                        [item.answer for item in items], normalise=task.normalise, batch_size=self.batch_size,
                        progress=False,
                    )
                    records = [
                        {"key": key, "logprobs": list(r.logprobs), "scores": list(r.scores), "predicted": r.predicted}
                        for key, r in zip(batch, results)
                    ]
                else:
                    responses = generate(
                        self.model, self.tokenizer, prompts, max_new_tokens=plan.max_new_tokens[task.name],
                        batch_size=self.batch_size, seed=self.seed, progress=False,
                    )
                    records = [{"key": key, "response": response} for key, response in zip(batch, responses)]
                ledger.add(records)
                bar.update(len(batch))

    def _second_turns(self, task: Task, cells: list, ledger: Ledger, plan: Budget) -> None:
        todo = {}
        for condition, item, prompt, key in cells:
            if len(item.turns) < 2:
                continue
            follow_up = render_conversation(
                self.tokenizer, prompt, ledger[key]["response"], item.turns[1]
            )
            if len(encode(self.tokenizer, follow_up)) + plan.max_new_tokens[task.name] > self.model.cfg.n_ctx:
                continue  # the conversation outgrew the context: this item keeps its first turn only
            turn_key = work_key(text=follow_up.text, max_new_tokens=plan.max_new_tokens[task.name], decoding="greedy")
            ledger[key]["turn2_key"] = turn_key
            if turn_key not in ledger:
                todo[turn_key] = (item, follow_up)
        if todo:
            self._compute(task, todo, ledger, plan)

    def _row(self, task: Task, condition: Condition, item: Item, prompt: RenderedPrompt, record: dict) -> dict:
        row = {
            "task": task.name, "condition": condition.label, "persona_spec": condition.persona,
            "length": condition.length if condition.persona != "none" else None,
            "placement": condition.placement if condition.persona != "none" else None,
            "base_system": condition.base_system, "item_id": item.id, "category": item.category,
            "persona": prompt.persona, "placement_used": prompt.placement,
        }
        if task.kind == "choice":
            scores = record["scores"]
            wrong = [s for i, s in enumerate(scores) if i != item.answer]
            row.update(accuracy=float(record["predicted"] == item.answer), margin=scores[item.answer] - max(wrong),
                       chance=1 / len(item.choices))
        else:
            row["response"] = record["response"]
            if task.kind == "refusal":
                row["refusal_rate"] = float(is_refusal(record["response"]))
            elif task.kind == "instructions":
                strict, loose = check_response(item, record["response"])
                row.update(strict=float(strict), loose=float(loose), instruction=item.meta["instruction_id"])
            elif "turn2_key" in record:
                row["turn2_key"] = record["turn2_key"]
        return row

    def _judge(self, rows: list[dict], items: list[Item], judge, plan: Budget, turn_ledger: Ledger) -> None:
        """Judge every answer once per judge seed; ``turn_ledger`` holds the answers themselves."""
        ledger = Ledger(self.ledger_dir / "judge.jsonl")
        by_id = {item.id: item for item in items}
        requests = {}
        for row in rows:
            item = by_id[row["item_id"]]
            turns = [JudgeRequest((item.turns[0],), (row["response"],))]
            if plan.turns == 2 and "turn2_key" in row and row["turn2_key"] in turn_ledger:
                second = turn_ledger[row["turn2_key"]]["response"]
                turns.append(JudgeRequest(tuple(item.turns[:2]), (row["response"], second)))
            row["_requests"] = []
            for turn, request in enumerate(turns, start=1):
                for judge_seed in plan.judge_seeds:
                    key = work_key(judge=judge.name, questions=request.questions, answers=request.answers, seed=judge_seed)
                    row["_requests"].append((turn, judge_seed, key))
                    requests[key] = (request, judge_seed)
        todo = [key for key in requests if key not in ledger]
        chunk = 32
        with tqdm(total=len(todo), desc="mtbench: judging", unit="judgement", disable=not self.progress or not todo) as bar:
            for start in range(0, len(todo), chunk):
                for judge_seed in plan.judge_seeds:
                    batch = [key for key in todo[start : start + chunk] if requests[key][1] == judge_seed]
                    if not batch:
                        continue
                    texts = judge.judge([requests[key][0] for key in batch], seed=judge_seed)
                    ledger.add({"key": key, "judgement": text} for key, text in zip(batch, texts))
                    bar.update(len(batch))
        for row in rows:
            ratings = {}
            for turn, judge_seed, key in row.pop("_requests"):
                ratings[f"turn{turn}_seed{judge_seed}"] = parse_rating(ledger[key]["judgement"])
            row["ratings"] = ratings
            parsed = [value for name, value in ratings.items() if name.startswith("turn1") and value is not None]
            row["judge_score"] = sum(parsed) / len(parsed) if parsed else math.nan
            second = [value for name, value in ratings.items() if name.startswith("turn2") and value is not None]
            if second:
                row["judge_score_turn2"] = sum(second) / len(second)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
