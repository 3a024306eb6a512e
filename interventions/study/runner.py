"""The persona-effect study: every task under every persona condition of a grid, resumable.

The tasks (capitals, MMLU letter and cloze, HarmBench refusal, IFEval-style instructions,
MT-Bench judged by a judge model, once per judge seed to measure the judge's consistency) are
the registry's (``interventions.measure.tasks``); budgets and condition grids are in
``interventions.study.plan``. Every scored or generated prompt goes to a ledger as soon as its
batch ends; identical prompts met in different cells are computed once, and a rerun skips all
work on record. The knowledge tasks run every condition under each prompt format of the study
(``plan.prompt_formats``); a format's prompts are new text, so adding one to a study only adds work.
Generation tasks and the self-judge run on an engine (``interventions.measure.engines``: the hooked model or vLLM);
a non-``hf`` engine's ledger keys name it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from tqdm.auto import tqdm

from interventions.measure.engines import Engine, HFEngine, engine_key
from interventions.measure.judge import EndpointJudge, Judge, make_judge, parse_rating
from interventions.measure.tasks import TASKS, Task, judge_request
from interventions.study.ledger import Ledger, work_key
from interventions.study.plan import BUDGETS, GRIDS, Budget, applies, conditions, prompt_formats, resolve_plan
from interventions.study.report import StudySummary, summarise_study
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import write_json, write_record
from probes.core.formats import DEFAULT_FORMAT
from probes.core.items import Item
from probes.core.parallel import World, world
from probes.core.personas import Persona, user_personas
from probes.core.prompts import Condition, RenderedPrompt, encode, render_conversation

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
__all__ = ["BUDGETS", "GRIDS", "TASKS", "Budget", "applies", "conditions", "run_study"]


def run_study(
    out: str | Path,
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    *,
    budget: str | Budget = "default",
    tasks: Sequence[str] | None = None,
    items: int | None = None,
    grid: str | None = None,
    formats: Sequence[str] | None = None,
    personas: Mapping[str, Persona] | None = None,
    judge: Judge | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    engine: Engine | None = None,
) -> StudySummary:
    """Run (or resume) the study into ``out``, then write its tables, figures and report (``summarise_study``).

    Args:
        out: the study directory (``study.json``, ``ledger/``, ``items.json``).
        model, tokenizer: the bridged model and its tokenizer (``load_model``).
        budget: ``smoke``, ``default``, ``full`` or a ``Budget``.
        tasks: registered task names to run (default: the budget's).
        items: items per cell for every task (overrides the budget).
        grid: the condition grid (default: the budget's).
        formats: prompt formats of the knowledge tasks (default: ``plain`` and ``qa`` for a model without a chat
            template, ``plain`` for a chat model; see ``plan.prompt_formats``).
        personas: the library of the grid's named, matched-expert and random personas (default: the built-in ones);
            those a user added (``persona_library``) run on every task (``plan.conditions``).
        judge: the MT-Bench judge, e.g. an OpenAI-compatible endpoint (``make_judge``; a judgement the endpoint never
            gives counts as unparseable and a rerun asks again); default: the model judges itself on ``engine``.
        seed: the sampling, generation and random-persona seed.
        batch_size: prompts per forward pass.
        progress: show progress bars.
        engine: an open engine that generates the generation tasks' answers and the self-judge's ratings (default:
            the hooked model; ``open_engine`` gives ``vllm``'s). Multiple-choice scoring runs on the hooked model.

    Returns:
        the ``StudySummary`` (on every rank under ``torchrun``; rank 0 writes): the tables, the report's findings and
        ``items``, the tidy per-item rows of ``items.json``: one per (task, format, condition, item) that applies and
        fits the context, with the condition, the prompt format, the persona and placement used, the item's metrics
        (and any response and judge ratings).

    Raises:
        ToolkitError: an unknown budget, task, grid or format, ``items`` below 1, or an ``out`` directory holding a
            study of another model.
    """
    plan = resolve_plan(budget, tasks, items, grid)
    out = Path(out)
    knowledge_formats = prompt_formats(formats, chat_template=bool(getattr(tokenizer, "chat_template", None)))
    settings = {
        "model": model.cfg.model_name,
        **precision(model),
        "seed": seed,
        "grid": plan.grid,
        "formats": list(knowledge_formats),
        "items": dict(plan.items),
        "max_new_tokens": dict(plan.max_new_tokens),
        "turns": plan.turns,
        "judge_seeds": list(plan.judge_seeds),
        "judge": f"endpoint:{judge.model}@{judge.url}" if isinstance(judge, EndpointJudge) else "self",
        "user_personas": {name: persona.source for name, persona in user_personas(personas or {}).items()},
    }
    _check_same_model(out, settings["model"])
    generator = engine or HFEngine(model, tokenizer)
    judge = judge or make_judge(model=model, tokenizer=tokenizer, batch_size=batch_size, engine=generator)
    group = world()
    if group.is_main:
        write_record(out / "study.json", settings)
    runner = _Runner(model, tokenizer, out / "ledger", seed, batch_size, progress, group, personas, generator)
    rows: list[dict] = []
    for name, n in plan.items.items():
        task = TASKS[name]
        task_items = task.load_items(n, seed)
        task_formats = knowledge_formats if task.is_choice else (DEFAULT_FORMAT,)
        grid = conditions(task, plan.grid, personas)
        log.info(
            f"{name}: {len(task_items)} items x {len(grid)} conditions"
            + (f" x {len(task_formats)} formats ({', '.join(task_formats)})" if len(task_formats) > 1 else "")
        )
        rows += runner.run(task, task_items, grid, plan, judge, task_formats)

    def summarise() -> StudySummary:
        write_json(out / "items.json", rows)
        return summarise_study(out, seed=seed)

    return group.on_main(summarise)


def _judge_requests(rows: list[dict], items: list[Item], judge, plan: Budget, turn_ledger: Ledger) -> dict:
    """Ledger key -> (judge request, judge seed) of every turn of every row, once per judge seed; each row keeps its
    keys in ``_requests`` as (turn, judge seed, key)."""
    by_id = {item.id: item for item in items}
    requests = {}
    for row in rows:
        item = by_id[row["item_id"]]
        turns = [judge_request(item, (row["response"],))]
        if plan.turns == 2 and "turn2_key" in row and row["turn2_key"] in turn_ledger:
            second = turn_ledger[row["turn2_key"]]["response"]
            turns.append(judge_request(item, (row["response"], second)))
        row["_requests"] = []
        for turn, request in enumerate(turns, start=1):
            for judge_seed in plan.judge_seeds:
                key = work_key(judge=judge.name, questions=request.questions, answers=request.answers, seed=judge_seed)
                row["_requests"].append((turn, judge_seed, key))
                requests[key] = (request, judge_seed)
    return requests


def _rate(row: dict, ledger: Ledger) -> None:
    """A judged row's ratings per turn and judge seed (None: unparseable or unanswered) and its mean scores."""
    ratings = {}
    for turn, judge_seed, key in row.pop("_requests"):
        ratings[f"turn{turn}_seed{judge_seed}"] = parse_rating(ledger[key]["judgement"]) if key in ledger else None
    row["ratings"] = ratings
    parsed = [value for name, value in ratings.items() if name.startswith("turn1") and value is not None]
    row["judge_score"] = sum(parsed) / len(parsed) if parsed else math.nan
    second = [value for name, value in ratings.items() if name.startswith("turn2") and value is not None]
    if second:
        row["judge_score_turn2"] = sum(second) / len(second)


def _check_same_model(out: Path, model: str) -> None:
    previous = out / "study.json"
    if previous.is_file():
        try:
            recorded = json.loads(previous.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            recorded = None  # a damaged record: this run rewrites it
        recorded = recorded.get("model") if isinstance(recorded, dict) else None
        if isinstance(recorded, str) and recorded and recorded != model:
            raise ToolkitError(f"{out} holds a study of {recorded}, not {model}: choose another --out directory")


class _Runner:
    """Computes what the ledger lacks, then reads every cell's rows from the ledger.

    Work is cut into chunks in one fixed order; under ``torchrun`` rank r computes chunks ``i % N == r`` into its own
    ledger file, and after each step rank 0 merges the files and every rank reads the merged ledger.
    """

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer,
        ledger_dir: Path,
        seed: int,
        batch_size: int,
        progress: bool,
        group: World = World(),
        personas: Mapping[str, Persona] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.ledger_dir, self.seed, self.batch_size, self.progress = ledger_dir, seed, batch_size, progress
        self.group, self.personas = group, personas

    def _ledger(self, name: str, fields: Sequence[str]) -> Ledger:
        return Ledger(self.ledger_dir / name, world=self.group, fields=fields)

    def run(
        self,
        task: Task,
        items: list[Item],
        grid: list[Condition],
        plan: Budget,
        judge,
        formats: Sequence[str] = (DEFAULT_FORMAT,),
    ) -> list[dict]:
        ledger = self._ledger(f"{task.name}.jsonl", task.record_fields)
        cells = []  # (condition, item, prompt, key)
        too_long = 0
        for prompt_format, condition in [(f, c) for f in formats for c in grid]:
            chosen = [item for item in items if applies(condition, item, self.personas)]
            if not chosen:
                continue
            prompts = task.render(
                self.tokenizer, chosen, condition, personas=self.personas, seed=self.seed, prompt_format=prompt_format
            )
            for item, prompt in zip(chosen, prompts):
                if self._fits(task, item, prompt, plan):
                    cells.append((condition, item, prompt, self._key(task, item, prompt, plan)))
                else:
                    too_long += 1
        if too_long:
            log.warning(
                f"{task.name}: left out {too_long} prompts longer than the model's context "
                f"({self.model.cfg.n_ctx} tokens, with room for the answer)"
            )
        self._compute(task, {key: (item, prompt) for _, item, prompt, key in cells}, ledger, plan)
        if task.kind == "judged" and plan.turns == 2:
            self._second_turns(task, cells, ledger, plan)
        rows = [self._row(task, condition, item, prompt, ledger[key]) for condition, item, prompt, key in cells]
        if task.kind == "judged":
            self._judge(rows, items, judge, plan, ledger)
        return rows

    def _fits(self, task: Task, item: Item, prompt: RenderedPrompt, plan: Budget) -> bool:
        room = task.answer_room(
            self.tokenizer, item, None if task.is_choice else plan.max_new_tokens[task.name] * plan.turns
        )
        return len(encode(self.tokenizer, prompt)) + room <= self.model.cfg.n_ctx

    def _key(self, task: Task, item: Item, prompt: RenderedPrompt, plan: Budget) -> str:
        if task.is_choice:
            return work_key(text=prompt.text, options=task.options(item), normalise=task.normalise)
        return work_key(
            text=prompt.text,
            max_new_tokens=plan.max_new_tokens[task.name],
            decoding="greedy",
            **engine_key(self.engine),
        )

    def _compute(self, task: Task, work: dict, ledger: Ledger, plan: Budget) -> None:
        """Measure what ``ledger`` lacks of ``work`` (key -> (item, prompt)), a chunk with anything missing measured
        whole (``Ledger.unfinished``): a prompt lost to an interruption gets the batches it had at first, so the same
        bytes."""

        def order(key: str) -> tuple:
            prompt = work[key][1]
            # scoring: a cell's prompts together, so each batch shares its persona prefix;
            # both: similar lengths together, so little is spent on padding
            cell = (prompt.prompt_format, prompt.condition.label, prompt.persona or "") if task.is_choice else ()
            return (*cell, -len(prompt.text))

        chunks = ledger.unfinished_keys(sorted(work, key=order), self.batch_size * 4)
        if not chunks:
            return
        mine = self.group.share(chunks)
        verb = "scoring" if task.is_choice else "generating"
        with tqdm(
            total=sum(map(len, mine)), desc=f"{task.name}: {verb}", unit="prompt", disable=not self.progress
        ) as bar:

            def measure(batch: list[str]) -> list[dict]:
                records = task.measure(
                    self.model,
                    self.tokenizer,
                    [work[key][0] for key in batch],
                    [work[key][1] for key in batch],
                    max_new_tokens=None if task.is_choice else plan.max_new_tokens[task.name],
                    batch_size=self.batch_size,
                    seed=self.seed,
                    engine=self.engine,
                )
                bar.update(len(batch))
                return [{"key": key, **record} for key, record in zip(batch, records) if key not in ledger]

            ledger.fill(chunks, measure)

    def _second_turns(self, task: Task, cells: list, ledger: Ledger, plan: Budget) -> None:
        follow_ups, second = {}, {}
        for condition, item, prompt, key in cells:
            if len(item.turns) < 2:
                continue
            follow_up = render_conversation(self.tokenizer, prompt, ledger[key]["response"], item.turns[1])
            if len(encode(self.tokenizer, follow_up)) + plan.max_new_tokens[task.name] > self.model.cfg.n_ctx:
                continue  # the conversation outgrew the context: this item keeps its first turn only
            turn_key = work_key(
                text=follow_up.text,
                max_new_tokens=plan.max_new_tokens[task.name],
                decoding="greedy",
                **engine_key(self.engine),
            )
            second[key] = turn_key
            follow_ups[turn_key] = (item, follow_up)
        self._compute(task, follow_ups, ledger, plan)
        for key, turn_key in second.items():  # after computing: the merged ledger is read afresh
            ledger[key]["turn2_key"] = turn_key

    def _row(self, task: Task, condition: Condition, item: Item, prompt: RenderedPrompt, record: dict) -> dict:
        row = {
            "task": task.name,
            "format": prompt.prompt_format,
            "condition": condition.label,
            "persona_spec": condition.persona,
            "length": condition.length if condition.persona != "none" else None,
            "placement": condition.placement if condition.persona != "none" else None,
            "base_system": condition.base_system,
            "item_id": item.id,
            "category": item.category,
            "persona": prompt.persona,
            "placement_used": prompt.placement,
        }
        if not task.is_choice:
            row["response"] = record["response"]
        row.update(task.item_metrics(item, record))
        if task.kind == "judged" and "turn2_key" in record:
            row["turn2_key"] = record["turn2_key"]
        return row

    def _judge(self, rows: list[dict], items: list[Item], judge, plan: Budget, turn_ledger: Ledger) -> None:
        """Judge every answer once per judge seed; ``turn_ledger`` holds the answers themselves."""
        ledger = self._ledger("judge.jsonl", ("judgement",))
        requests = _judge_requests(rows, items, judge, plan, turn_ledger)
        self._ask_judge(ledger, requests, judge, plan.judge_seeds)
        unanswered = sum(key not in ledger for key in requests)
        if unanswered and self.group.is_main:
            reasons = ", ".join(f"{n} {reason}" for reason, n in getattr(judge, "failures", {}).items())
            log.warning(
                f"mtbench: the judge gave no answer to {unanswered} of {len(requests)} requests"
                + (f" ({reasons})" if reasons else "")
                + "; counted unparseable, a rerun asks again"
            )
        for row in rows:
            _rate(row, ledger)

    def _ask_judge(self, ledger: Ledger, requests: dict, judge, judge_seeds: Sequence[int]) -> None:
        """Ask ``judge`` every request the ledger lacks, in chunks shared among the ranks."""
        # a model judging in batches judges a chunk whole, as the first time; an endpoint is asked only what it lacks
        whole = not isinstance(judge, EndpointJudge)
        chunks = ledger.unfinished_keys(list(requests), 32)
        mine = self.group.share(chunks)
        total = sum(map(len, mine))
        with tqdm(total=total, desc="mtbench: judging", unit="judgement", disable=not self.progress or not mine) as bar:

            def judge_chunk(chunk: list[str]) -> list[dict]:
                records = []
                for judge_seed in judge_seeds:
                    batch = [key for key in chunk if requests[key][1] == judge_seed and (whole or key not in ledger)]
                    if batch:
                        texts = judge.judge([requests[key][0] for key in batch], seed=judge_seed)
                        # an unanswered request is not recorded: it counts as unparseable now, a rerun asks again
                        records += [
                            {"key": key, "judgement": text}
                            for key, text in zip(batch, texts)
                            if text is not None and key not in ledger
                        ]
                        bar.update(len(batch))
                return records

            ledger.fill(chunks, judge_chunk)
