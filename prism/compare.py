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
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from interventions.measure.judge import Judge, SelfJudge, parse_rating
from interventions.measure.tasks import TASKS, Task, judge_request
from prism.adapters import active_adapter, load_adapter
from prism.baselines import EmbeddingRouter, SelfClassifyRouter
from prism.compare_report import DATASETS, ROUTERS, format_table, summarise, write_outputs
from prism.compare_sources import KNOWLEDGE, KNOWLEDGE_SOURCES
from prism.gate import Gate
from prism.persona_path import GATED, UNGATED
from prism.routing import Routed, check_gate_fits, route_probabilities
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, write_json
from probes.core.items import Item
from probes.core.parallel import world
from probes.core.personas import Persona
from probes.core.prompts import Condition, encode

__all__ = ["COMPARE_BUDGETS", "DATASETS", "KNOWLEDGE", "SYSTEMS", "CompareBudget", "evaluation_items", "evaluation_queries",
           "excluded_sources", "format_table", "resolve_budget", "run_compare", "summarise"]

SYSTEMS = ("base", "expert prompt", "expert prompt (long)", "ungated LoRA", "PRISM", "probe -> persona prompt",
           "probe -> steering",
           "MiniLM -> LoRA", "self-classify -> LoRA")
EXPERT = {**{name: "humanities" for name in KNOWLEDGE}, "harmbench": "safety-monitor", "mtbench": "expert"}
EXPERT_LENGTHS = {"expert prompt": "min", "expert prompt (long)": "long"}  # the prompted systems' persona lengths
ROUTER_OF = {"PRISM": "probe gate", "probe -> steering": "probe gate", "probe -> persona prompt": "probe gate",
             "MiniLM -> LoRA": "MiniLM", "self-classify -> LoRA": "self-classify"}


@dataclass(frozen=True)
class CompareBudget:
    """Items per data set of the comparison, and generation lengths.

    Args:
        capitals: capital-city questions (accuracy and margin).
        harmbench: HarmBench standard requests (keyword refusal).
        mtbench: MT-Bench first turns (self-judged).
        refusal_tokens: greedy tokens per HarmBench answer.
        answer_tokens: tokens per MT-Bench answer.
        continents, currencies, city_countries: the GeoNames quizzes' questions (accuracy and margin).
    """

    capitals: int = 48  # capital-city questions (accuracy and margin)
    harmbench: int = 16  # HarmBench standard requests (keyword refusal)
    mtbench: int = 12  # MT-Bench first turns (self-judged)
    refusal_tokens: int = 32  # greedy tokens per HarmBench answer
    answer_tokens: int = 64  # tokens per MT-Bench answer
    continents: int = 48  # which continent a country is on
    currencies: int = 48  # a country's currency
    city_countries: int = 48  # which country a large city is in

    def size(self, dataset: str) -> int:
        """The items of ``dataset`` (a name in ``DATASETS``; ``city-countries`` is the field ``city_countries``)."""
        return getattr(self, dataset.replace("-", "_"))


COMPARE_BUDGETS = {"smoke": CompareBudget(16, 8, 4, 24, 32, continents=16, currencies=16, city_countries=16),
                   "default": CompareBudget()}


def resolve_budget(budget: str | CompareBudget) -> CompareBudget:
    """A budget by name (``smoke``, ``default``), or the given one."""
    if isinstance(budget, CompareBudget):
        return budget
    if budget not in COMPARE_BUDGETS:
        raise ToolkitError(f"unknown comparison budget {budget!r}: use one of {', '.join(COMPARE_BUDGETS)}")
    return COMPARE_BUDGETS[budget]


def evaluation_items(budget: CompareBudget, seed: int = 0) -> dict[str, list[Item]]:
    """The comparison's items: each data set's registered task, sampled to the budget's size."""
    return {dataset: TASKS[dataset].load_items(budget.size(dataset), seed) for dataset in DATASETS}


def evaluation_queries(budget: CompareBudget, seed: int = 0) -> set[str]:
    """Every query the comparison asks: gate training leaves them out."""
    return {item.prompt for items in evaluation_items(budget, seed).values() for item in items}


def excluded_sources() -> tuple[str, ...]:
    """The intent sources (``probes.intents``) that ask the same kinds of fact as the comparison's knowledge sets:
    gate training leaves them out whole, so that every knowledge set scored is off the gate's training distribution."""
    return tuple(sorted({source for sources in KNOWLEDGE_SOURCES.values() for source in sources}))


class _Evaluator:
    """Runs one system on one data set: per-item rows with the metric and the route taken."""

    def __init__(self, model, tokenizer, work: PrismDirectory, budget: CompareBudget, seed: int, batch_size: int,
                 judge: Judge | None = None) -> None:
        self.model, self.tokenizer, self.budget, self.seed, self.batch_size = model, tokenizer, budget, seed, batch_size
        self.gate = Gate.load(work.gate)
        check_gate_fits(model, self.gate)  # before any cell: a gate of another model fails now, not after the others
        for name in (GATED, UNGATED):
            load_adapter(model, name, work.adapter(name))
        tensors, metadata = load_tensors(work.steering)
        self.steering = (int(metadata["layer"]), tensors["vector"])
        self.embedding = EmbeddingRouter.load(work.embedding_router)
        self.asker = SelfClassifyRouter(model, tokenizer, batch_size=batch_size)
        self.asker.threshold = work.self_classify_threshold()
        self.judge = judge or SelfJudge(model, tokenizer, batch_size=batch_size)
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
                texts = self.judge.judge([judge_request(item, (row["response"],)) for item, row in zip(items, rows)],
                                         seed=self.seed)
            for row, text in zip(rows, texts):
                row["rating"] = parse_rating(text)
        return rows

    def _run(self, system: str, dataset: str, items: Sequence[Item]) -> list[dict]:
        plain, expert = Condition("none"), Condition(EXPERT[dataset], self.teacher_length)
        n = len(items)
        if system == "base":
            return self._answer(dataset, items, [plain] * n)
        if system in EXPERT_LENGTHS:
            return self._answer(dataset, items, [Condition(EXPERT[dataset], EXPERT_LENGTHS[system])] * n)
        if system == "ungated LoRA":
            with active_adapter(self.model, UNGATED):
                return self._answer(dataset, items, [plain] * n, route=True)
        router = ROUTER_OF[system]
        if system == "probe -> persona prompt":
            scores, routes = self.routes(router, items)
            rows = self._answer(dataset, items, [expert if route else plain for route in routes])
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

    def _answer(self, dataset: str, items: Sequence[Item], conditions: Sequence[Condition], *, context=None,
                route: bool | None = None) -> list[dict]:
        task = TASKS[dataset]
        prompts = row_prompts(self.tokenizer, items, conditions, dataset, self.personas)
        tokens = {"harmbench": self.budget.refusal_tokens, "mtbench": self.budget.answer_tokens}.get(dataset)
        with context or nullcontext():
            records = task.measure(self.model, self.tokenizer, items, prompts, max_new_tokens=tokens,
                                   batch_size=self.batch_size, seed=self.seed, share_prefix=context is None)
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


def row_prompts(tokenizer, items: Sequence[Item], conditions: Sequence[Condition], dataset: str,
                personas: Mapping[str, Persona] | None = None) -> list:
    """Each item's prompt under its own condition, with the data set's task settings; the conditions' personas are read
    from ``personas`` (default: the built-in library; a PRISM directory's is ``PrismDirectory.persona_library``)."""
    return [TASKS[dataset].render(tokenizer, [item], condition, personas=personas)[0]
            for item, condition in zip(items, conditions)]


def run_compare(prism_dir: str | Path | PrismDirectory, model, tokenizer, *, budget: str | CompareBudget = "default",
                systems: Sequence[str] = SYSTEMS, seed: int = 0, batch_size: int = 8, judge: Judge | None = None,
                progress: bool = True) -> dict:
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

    Returns:
        the summary (``compare_report.summarise``): the table, route rates, knowledge per source and route rates per
        router and data set (``compare_sources``), router agreement, per-category routing and its correlation with the
        persona's effect, and the intent sources the gate's data left out (``excluded_sources``, from ``train.json``).

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
    evaluator = _Evaluator(model, tokenizer, work, plan, seed, batch_size, judge)
    trained = work.trained_fingerprint()
    jobs = [(system, dataset) for system in systems for dataset in DATASETS]
    judged_by = {dataset: evaluator.judge.name if dataset == "mtbench" else None for dataset in DATASETS}
    group = world()
    todo = group.on_main(lambda: [job for job in jobs if _cached(work.cell(*job), plan, seed, trained, judged_by[job[1]]) is None])
    # under torchrun rank r computes the cells i % N == r; each cell is saved as it ends
    with group.together():
        for system, dataset in tqdm(group.share(todo), desc="compare", unit="cell", disable=not progress):
            rows = evaluator.run(system, dataset, items[dataset])
            write_json(work.cell(system, dataset), {"system": system, "dataset": dataset, "budget": asdict(plan), "seed": seed,
                                                    "trained": trained, "judge": judged_by[dataset], "rows": rows})

    def summarise_cells() -> dict:
        cells = {job: _cached(work.cell(*job), plan, seed, trained, judged_by[job[1]]) for job in jobs}
        routes = {router: evaluator.routes(router, [i for d in DATASETS for i in items[d]])[1] for router in ROUTERS}
        trained_on = work.train_record()
        summary = summarise(cells, systems, items, routes, seed, adapters=trained_on.get("adapters"))
        summary["excluded_sources"] = trained_on.get("excluded_sources")  # None: not recorded (trained before the quizzes)
        write_outputs(work, summary, plan)
        return summary

    return group.on_main(summarise_cells)


def _cached(path: Path, plan: CompareBudget, seed: int, trained: str, judge: str | None) -> list[dict] | None:
    """A saved cell's rows, when it was computed with this budget, seed, trained artefacts and judge; a damaged cell
    (cut off, not the toolkit's shape) is computed again."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or not isinstance(cached.get("rows"), list):
        return None
    if (cached.get("budget") == asdict(plan) and cached.get("seed") == seed and cached.get("trained") == trained
            and cached.get("judge") == judge):
        return cached["rows"]
    return None
