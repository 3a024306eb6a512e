"""``prism compare``: the Table-1 evaluation of PRISM against its baselines.

Data sets: knowledge from four sources (accuracy and answer margin): the study's capital-city
questions and the GeoNames quizzes of ``probes.core.quizzes`` (continents, currencies, the
country of a large city), none of which the gate trained on (``excluded_sources``: ``prism
train`` leaves the intent sources that ask the same kinds of fact out of the gate's data);
HarmBench standard requests (keyword refusal rate) and MT-Bench first turns (the study's judge,
1-10). Systems:

- ``base``: the model, no persona;
- ``expert prompt`` and ``expert prompt (long)``: the matched persona in the system prompt on every
  query (knowledge: humanities; HarmBench: safety-monitor; MT-Bench: the category's persona), in its
  min text (~5 words) and its long one (~150 words): the study finds the long one hurts knowledge;
- ``ungated LoRA``: the adapter distilled on every bootstrapped query, always on (the SFT baseline);
- ``PRISM``: the gated adapter, routed by the probe gate inside the answering pass;
- ``probe -> persona prompt``: the gate decides, the routed queries get the expert prompt at the
  length of the adapter's teacher (``prism train --teacher-length``, recorded in ``train.json``);
- ``probe -> steering``: the gate decides, routed queries get the persona's mean shift added;
- ``MiniLM -> LoRA`` and ``self-classify -> LoRA``: the gated adapter routed by the baseline routers.

Each data set is its registered task (``interventions.measure.tasks``: items, HarmBench filter,
prompt settings, metric); the tables, figures and report are ``prism.compare_report``'s. Each
finished (system, data set) cell is saved in the working directory (``prism.workdir``), so an
interrupted run resumes. Per knowledge source and per data set (route rates) the results are
``prism.compare_sources``'.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from interventions.measure.engines import Engine
from interventions.measure.judge import Judge, SelfJudge, parse_rating
from interventions.measure.tasks import TASKS, Task, judge_request
from prism.adapters import active_adapter, load_adapter
from prism.baselines import EmbeddingRouter, SelfClassifyRouter
from prism.compare_budget import (
    COMPARE_BUDGETS,
    CompareBudget,
    evaluation_items,
    evaluation_queries,
    excluded_sources,
    resolve_budget,
)
from prism.compare_report import DATASETS, ROUTERS, format_table, summarise, write_outputs
from prism.compare_sources import KNOWLEDGE
from prism.gate import Gate
from prism.persona_path import GATED, UNGATED
from prism.routing import Routed, check_gate_fits, route_probabilities
from prism.summary import CompareSummary
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, write_json
from probes.core.items import Item
from probes.core.parallel import world
from probes.core.personas import Persona
from probes.core.prompts import Condition, encode

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "COMPARE_BUDGETS",
    "DATASETS",
    "KNOWLEDGE",
    "SYSTEMS",
    "CompareBudget",
    "evaluation_items",
    "evaluation_queries",
    "excluded_sources",
    "format_table",
    "resolve_budget",
    "run_compare",
    "summarise",
]

log = logging.getLogger(__name__)

# systems whose answers need no hooks (a prompt, chosen or not by a router that reads the query): an inference engine
# may generate them; the others add an adapter or a steering vector inside the model's forward
PROMPT_SYSTEMS = ("base", "expert prompt", "expert prompt (long)", "probe -> persona prompt")
SYSTEMS = (
    "base",
    "expert prompt",
    "expert prompt (long)",
    "ungated LoRA",
    "PRISM",
    "probe -> persona prompt",
    "probe -> steering",
    "MiniLM -> LoRA",
    "self-classify -> LoRA",
)
EXPERT = {**{name: "humanities" for name in KNOWLEDGE}, "harmbench": "safety-monitor", "mtbench": "expert"}
EXPERT_LENGTHS = {"expert prompt": "min", "expert prompt (long)": "long"}  # the prompted systems' persona lengths
ROUTER_OF = {
    "PRISM": "probe gate",
    "probe -> steering": "probe gate",
    "probe -> persona prompt": "probe gate",
    "MiniLM -> LoRA": "MiniLM",
    "self-classify -> LoRA": "self-classify",
}


class _Evaluator:
    """Runs one system on one data set: per-item rows with the metric and the route taken."""

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer,
        work: PrismDirectory,
        budget: CompareBudget,
        seed: int,
        batch_size: int,
        judge: Judge | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.model, self.tokenizer, self.budget, self.seed, self.batch_size = model, tokenizer, budget, seed, batch_size
        self.engine = engine
        self.gate = Gate.load(work.gate)
        check_gate_fits(model, self.gate)  # before any cell: a gate of another model fails now, not after the others
        for name in (GATED, UNGATED):
            load_adapter(model, name, work.adapter(name))
        tensors, metadata = load_tensors(work.steering)
        self.steering = (int(metadata["layer"]), tensors["vector"])
        self.embedding = EmbeddingRouter.load(work.embedding_router)
        self.asker = SelfClassifyRouter(model, tokenizer, batch_size=batch_size)
        self.asker.threshold = work.self_classify_threshold()
        self.judge = judge or SelfJudge(model, tokenizer, batch_size=batch_size, engine=engine)
        self.personas = work.persona_library()  # the expert prompts' texts, as the bootstrap had them
        self.teacher_length = work.teacher_length()

    def routes(self, router: str, items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, routes) of a router for the items' queries."""
        queries = [item.prompt for item in items]
        if router == "probe gate":
            scores = route_probabilities(self.model, self.tokenizer, self.gate, queries)
            return scores, scores >= self.gate.threshold
        router_ = self.embedding if router == "MiniLM" else self.asker
        scores = router_.scores(queries)
        return scores, scores >= router_.threshold

    def run(self, system: str, dataset: str, items: Sequence[Item]) -> list[dict]:
        rows = self._run(system, dataset, items)
        if dataset == "mtbench":  # the judge is the plain model for every system
            with active_adapter(self.model, None):
                texts = self.judge.judge(
                    [judge_request(item, (row["response"],)) for item, row in zip(items, rows)], seed=self.seed
                )
            for row, text in zip(rows, texts):
                row["rating"] = parse_rating(text)
        return rows

    def _run(self, system: str, dataset: str, items: Sequence[Item]) -> list[dict]:
        plain, expert = Condition("none"), Condition(EXPERT[dataset], self.teacher_length)
        n = len(items)
        if system == "base":
            return self._answer(dataset, items, [plain] * n, hooked=False)
        if system in EXPERT_LENGTHS:
            return self._answer(dataset, items, [Condition(EXPERT[dataset], EXPERT_LENGTHS[system])] * n, hooked=False)
        if system == "ungated LoRA":
            with active_adapter(self.model, UNGATED):
                return self._answer(dataset, items, [plain] * n, route=True)
        router = ROUTER_OF[system]
        if system == "probe -> persona prompt":
            scores, routes = self.routes(router, items)
            rows = self._answer(dataset, items, [expert if route else plain for route in routes], hooked=False)
            for row, score, route in zip(rows, scores, routes):
                row["score"], row["routed"] = float(score), bool(route)
            return rows
        prompts = row_prompts(self.tokenizer, items, [plain] * n, dataset, self.personas)
        scores, decisions = None, None
        if router != "probe gate" or dataset in KNOWLEDGE:
            # another router decides, or the prompt ends with an answer stem (an evaluation
            # device after the query): decide on the query's own prompt, route in the answering pass
            scores, routes = self.routes(router, items)
            decisions = {tuple(encode(self.tokenizer, p)): bool(r) for p, r in zip(prompts, routes)}
        options = {"steering": self.steering} if system == "probe -> steering" else {"adapter": GATED}
        routed = Routed(self.model, self.gate, decisions=decisions, **options)
        rows = self._answer(dataset, items, [plain] * n, context=routed)
        for index, (row, prompt) in enumerate(zip(rows, prompts)):
            probability, route = routed.decision(encode(self.tokenizer, prompt))
            row["score"], row["routed"] = (float(scores[index]) if scores is not None else probability), route
        return rows

    def engine_of(self, system: str, dataset: str) -> str | None:
        """The inference engine that generates ``system``'s answers on ``dataset`` when it is not the hooked model (a
        generation set, a system without hooks), else None."""
        engine = self.engine
        generated = engine is not None and engine.name != "hf" and not TASKS[dataset].is_choice
        return engine.name if generated and system in PROMPT_SYSTEMS else None

    def _answer(
        self,
        dataset: str,
        items: Sequence[Item],
        conditions: Sequence[Condition],
        *,
        context=None,
        route: bool | None = None,
        hooked: bool = True,
    ) -> list[dict]:
        task = TASKS[dataset]
        prompts = row_prompts(self.tokenizer, items, conditions, dataset, self.personas)
        tokens = {"harmbench": self.budget.refusal_tokens, "mtbench": self.budget.answer_tokens}.get(dataset)
        with context or nullcontext():
            records = task.measure(
                self.model,
                self.tokenizer,
                items,
                prompts,
                max_new_tokens=tokens,
                batch_size=self.batch_size,
                seed=self.seed,
                share_prefix=context is None,
                engine=None if hooked else self.engine,
            )
        rows = [_measured(task, item, record) for item, record in zip(items, records)]
        for item, row, condition in zip(items, rows, conditions):
            row.update(id=item.id, category=item.category, persona=condition.persona)
            row.setdefault("routed", route if route is not None else condition.persona != "none")
        return rows


def _measured(task: Task, item: Item, record: Mapping) -> dict:
    """A cell row's measurement, under the comparison's column names: correct and margin, or the
    response (and refused, on HarmBench)."""
    metrics = task.item_metrics(item, record)
    if task.is_choice:
        return {"correct": metrics["accuracy"], "margin": metrics["margin"]}
    row = {"response": record["response"]}
    if "refusal_rate" in metrics:
        row["refused"] = metrics["refusal_rate"]
    return row


def row_prompts(
    tokenizer,
    items: Sequence[Item],
    conditions: Sequence[Condition],
    dataset: str,
    personas: Mapping[str, Persona] | None = None,
) -> list:
    """Each item's prompt under its own condition, with the data set's task settings; the conditions' personas are read
    from ``personas`` (default: the built-in library; a PRISM directory's is ``PrismDirectory.persona_library``)."""
    return [
        TASKS[dataset].render(tokenizer, [item], condition, personas=personas)[0]
        for item, condition in zip(items, conditions)
    ]


def run_compare(
    prism_dir: str | Path | PrismDirectory,
    model: TransformerBridge,
    tokenizer,
    *,
    budget: str | CompareBudget = "default",
    systems: Sequence[str] = SYSTEMS,
    seed: int = 0,
    batch_size: int = 8,
    judge: Judge | None = None,
    progress: bool = True,
    engine: Engine | None = None,
) -> CompareSummary:
    """Run every (system, data set) cell not yet saved, then write the tables, figures and report.

    Args:
        prism_dir: the PRISM working directory (trained by ``prism train``).
        model, tokenizer: the bridged model the directory was trained on.
        budget: ``smoke``, ``default`` or a ``CompareBudget``.
        systems: the systems to compare (default: all of ``SYSTEMS``).
        seed: sampling, generation and bootstrap seed.
        batch_size: prompts per forward pass.
        judge: the MT-Bench judge (``make_judge``; default: the plain model judges itself); an MT-Bench cell saved
            with another judge is computed again.
        progress: show a progress bar over the cells.
        engine: what generates the answers of the systems that need no hooks (``PROMPT_SYSTEMS``) and the
            self-judge's ratings (default: ``model``); the adapter and steering systems run on ``model`` whatever it is.
            A cell records the engine that generated it, and one of another engine is computed again.

    Returns:
        the ``CompareSummary``; its ``record`` (``compare_report.summarise``, ``compare/summary.json``) holds the
        table, route rates, knowledge per source and route rates per router and data set (``compare_sources``), router
        agreement, per-category routing and its correlation with the persona's effect, and the intent sources the
        gate's data left out (``excluded_sources``, from ``train.json``).

    Raises:
        ToolkitError: an unknown budget or system, a directory missing a trained artefact (gate, adapters, steering
            vector, embedding router), or adapters named ``prism`` or ``sft`` already on the model.
    """
    work = PrismDirectory(prism_dir)
    plan = resolve_budget(budget)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ToolkitError(f"unknown system {unknown[0]!r}: choose from {', '.join(SYSTEMS)}")
    items = evaluation_items(plan, seed)
    evaluator = _Evaluator(model, tokenizer, work, plan, seed, batch_size, judge, engine)
    hooked = [system for system in systems if system not in PROMPT_SYSTEMS]
    if engine is not None and engine.name != "hf" and hooked:
        log.warning(
            f"{', '.join(hooked)} need hooks (adapters, steering): their cells run on the hooked model, "
            f"not on {engine.name}"
        )
    trained = work.trained_fingerprint()
    jobs = [(system, dataset) for system in systems for dataset in DATASETS]
    judged_by = {dataset: evaluator.judge.name if dataset == "mtbench" else None for dataset in DATASETS}
    group = world()
    todo = group.on_main(
        lambda: [
            job
            for job in jobs
            if _cached(work.cell(*job), plan, seed, trained, judged_by[job[1]], evaluator.engine_of(*job)) is None
        ]
    )
    # under torchrun rank r computes the cells i % N == r; each cell is saved as it ends
    with group.together():
        for system, dataset in tqdm(group.share(todo), desc="compare", unit="cell", disable=not progress):
            rows = evaluator.run(system, dataset, items[dataset])
            write_json(
                work.cell(system, dataset),
                {
                    "system": system,
                    "dataset": dataset,
                    "budget": asdict(plan),
                    "seed": seed,
                    "trained": trained,
                    "judge": judged_by[dataset],
                    **_engine_field(evaluator.engine_of(system, dataset)),
                    "rows": rows,
                },
            )

    def summarise_cells() -> dict:
        cells = {
            job: _cached(work.cell(*job), plan, seed, trained, judged_by[job[1]], evaluator.engine_of(*job))
            for job in jobs
        }
        routes = {router: evaluator.routes(router, [i for d in DATASETS for i in items[d]])[1] for router in ROUTERS}
        trained_on = work.train_record()
        summary = summarise(cells, systems, items, routes, seed, adapters=trained_on.get("adapters"))
        summary["excluded_sources"] = trained_on.get(
            "excluded_sources"
        )  # None: not recorded (trained before the quizzes)
        write_outputs(work, summary, plan)
        return CompareSummary(work.compare, tuple(summary["table"]), summary)

    return group.on_main(summarise_cells)


def _engine_field(engine: str | None) -> dict:
    """A cell's ``engine`` field: only for a cell an inference engine generated (cells of the hooked model have
    none)."""
    return {} if engine is None else {"engine": engine}


def _cached(
    path: Path, plan: CompareBudget, seed: int, trained: str, judge: str | None, engine: str | None = None
) -> list[dict] | None:
    """A saved cell's rows, when it was computed with this budget, seed, trained artefacts, judge and engine; a damaged
    cell (cut off, not the toolkit's shape) is computed again."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or not isinstance(cached.get("rows"), list):
        return None
    if (
        cached.get("budget") == asdict(plan)
        and cached.get("seed") == seed
        and cached.get("trained") == trained
        and cached.get("judge") == judge
        and cached.get("engine") == engine
    ):
        return cached["rows"]
    return None
