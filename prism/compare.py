"""``prism compare``: the Table-1 evaluation of PRISM against its baselines.

Data sets (the study's): capital-city questions (knowledge: accuracy and answer margin),
HarmBench standard requests (keyword refusal rate) and MT-Bench first turns (the study's judge,
1-10). Systems:

- ``base``: the model, no persona;
- ``expert prompt``: the matched persona in the system prompt on every query (capitals:
  humanities; HarmBench: safety-monitor; MT-Bench: the category's persona);
- ``ungated LoRA``: the adapter distilled on every bootstrapped query, always on (the SFT baseline);
- ``PRISM``: the gated adapter, routed by the probe gate inside the answering pass;
- ``probe -> persona prompt``: the gate decides, the routed queries get the expert prompt;
- ``probe -> steering``: the gate decides, routed queries get the persona's mean shift added;
- ``MiniLM -> LoRA`` and ``self-classify -> LoRA``: the gated adapter routed by the baseline routers.

Scores on a 0-100 scale as in the paper (accuracy and refusal x100, judge x10); ``Overall`` is
their unweighted mean, with a bootstrap CI resampling each data set's items. Each finished
(system, data set) cell is saved, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score
from tqdm.auto import tqdm

from figures import prism as plots
from interventions.measure.generation import generate
from interventions.measure.judge import JudgeRequest, SelfJudge, parse_rating
from interventions.measure.refusal import is_refusal
from interventions.measure.scoring import score_choices
from prism.baselines import EmbeddingRouter, SelfClassifyRouter
from prism.distill import load_adapter, use_adapter
from prism.gate import Gate
from prism.routing import Routed, route_probabilities
from prism.train import GATED, UNGATED
from probes.core.datasets import Item, load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_figure, write_json, write_table
from probes.core.prompts import Condition, encode
from probes.core.rendering import render_items
from probes.core.stats import bootstrap_correlation, bootstrap_mean, paired_difference

SYSTEMS = ("base", "expert prompt", "ungated LoRA", "PRISM", "probe -> persona prompt", "probe -> steering",
           "MiniLM -> LoRA", "self-classify -> LoRA")
ROUTERS = ("probe gate", "MiniLM", "self-classify")
EXPERT = {"capitals": Condition("humanities"), "harmbench": Condition("safety-monitor"), "mtbench": Condition("expert")}
DATASETS = ("capitals", "harmbench", "mtbench")
SCALE = {"accuracy": 100.0, "refusal": 100.0, "judge": 10.0}
ROUTER_OF = {"PRISM": "probe gate", "probe -> steering": "probe gate", "probe -> persona prompt": "probe gate",
             "MiniLM -> LoRA": "MiniLM", "self-classify -> LoRA": "self-classify"}


@dataclass(frozen=True)
class CompareBudget:
    capitals: int = 48
    harmbench: int = 16
    mtbench: int = 12
    refusal_tokens: int = 32
    answer_tokens: int = 64


COMPARE_BUDGETS = {"smoke": CompareBudget(16, 8, 4, 24, 32), "default": CompareBudget()}


def resolve_budget(budget: str | CompareBudget) -> CompareBudget:
    """A budget by name (``smoke``, ``default``), or the given one."""
    if isinstance(budget, CompareBudget):
        return budget
    if budget not in COMPARE_BUDGETS:
        raise ToolkitError(f"unknown comparison budget {budget!r}: use one of {', '.join(COMPARE_BUDGETS)}")
    return COMPARE_BUDGETS[budget]


def evaluation_items(budget: CompareBudget, seed: int = 0) -> dict[str, list[Item]]:
    harmful = [item for item in load_dataset("harmbench") if item.subcategory == "standard"]
    return {"capitals": stratified_sample(load_dataset("capitals"), budget.capitals, seed=seed),
            "harmbench": stratified_sample(harmful, budget.harmbench, seed=seed),
            "mtbench": stratified_sample(load_dataset("mtbench"), budget.mtbench, seed=seed)}


def evaluation_queries(budget: CompareBudget, seed: int = 0) -> set[str]:
    """Every query the comparison asks: gate training leaves them out."""
    return {item.prompt for items in evaluation_items(budget, seed).values() for item in items}


class _Evaluator:
    """Runs one system on one data set: per-item rows with the metric and the route taken."""

    def __init__(self, model, tokenizer, prism_dir: Path, budget: CompareBudget, seed: int, batch_size: int) -> None:
        self.model, self.tokenizer, self.budget, self.seed, self.batch_size = model, tokenizer, budget, seed, batch_size
        self.gate = Gate.load(prism_dir / "gate" / "gate.safetensors")
        for name in (GATED, UNGATED):
            load_adapter(model, name, prism_dir / "adapters" / name)
        tensors, metadata = load_tensors(prism_dir / "steering.safetensors")
        self.steering = (int(metadata["layer"]), tensors["vector"])
        self.embedding = EmbeddingRouter.load(prism_dir / "baselines" / "embedding.safetensors")
        self.asker = SelfClassifyRouter(model, tokenizer, batch_size=batch_size)
        self.asker.threshold = json.loads((prism_dir / "baselines" / "self_classify.json").read_text())["threshold"]
        self.judge = SelfJudge(model, tokenizer, batch_size=batch_size)

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
            use_adapter(self.model, None)
            texts = self.judge.judge([JudgeRequest((item.prompt,), (row["response"],)) for item, row in zip(items, rows)],
                                     seed=self.seed)
            for row, text in zip(rows, texts):
                row["rating"] = parse_rating(text)
        return rows

    def _run(self, system: str, dataset: str, items: Sequence[Item]) -> list[dict]:
        plain, expert = Condition("none"), EXPERT[dataset]
        n = len(items)
        if system == "base":
            return self._answer(dataset, items, [plain] * n)
        if system == "expert prompt":
            return self._answer(dataset, items, [expert] * n)
        if system == "ungated LoRA":
            use_adapter(self.model, UNGATED)
            try:
                return self._answer(dataset, items, [plain] * n, route=True)
            finally:
                use_adapter(self.model, None)
        router = ROUTER_OF[system]
        if system == "probe -> persona prompt":
            scores, routes = self.routes(router, items)
            rows = self._answer(dataset, items, [expert if route else plain for route in routes])
            for row, score, route in zip(rows, scores, routes):
                row["score"], row["routed"] = float(score), bool(route)
            return rows
        prompts = row_prompts(self.tokenizer, items, [plain] * n, dataset)
        scores, decisions = None, None
        if router != "probe gate" or dataset == "capitals":
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
        prompts = row_prompts(self.tokenizer, items, conditions, dataset)
        with context or nullcontext():
            if dataset == "capitals":
                results = score_choices(self.model, self.tokenizer, prompts, [[f" {c.strip()}" for c in item.choices] for item in items],
                                        [item.answer for item in items], batch_size=self.batch_size,
                                        share_prefix=context is None, progress=False)
                rows = [{"correct": float(r.correct), "margin": r.margin} for r in results]
            else:
                tokens = self.budget.refusal_tokens if dataset == "harmbench" else self.budget.answer_tokens
                answers = generate(self.model, self.tokenizer, prompts, max_new_tokens=tokens, batch_size=self.batch_size,
                                   seed=self.seed, progress=False)
                rows = [{"response": answer} for answer in answers]
        if dataset == "harmbench":
            for row in rows:
                row["refused"] = float(is_refusal(row["response"]))
        for item, row, condition in zip(items, rows, conditions):
            row.update(id=item.id, category=item.category, persona=condition.persona)
            row.setdefault("routed", route if route is not None else condition.persona != "none")
        return rows


def row_prompts(tokenizer, items, conditions, dataset: str):
    scoring = "cloze" if dataset == "capitals" else None
    return [render_items(tokenizer, [item], condition, scoring=scoring)[0] for item, condition in zip(items, conditions)]


def run_compare(prism_dir: str | Path, model, tokenizer, *, budget: str | CompareBudget = "default",
                systems: Sequence[str] = SYSTEMS, seed: int = 0, batch_size: int = 8, progress: bool = True) -> dict:
    prism_dir = Path(prism_dir)
    plan = resolve_budget(budget)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ToolkitError(f"unknown system {unknown[0]!r}: choose from {', '.join(SYSTEMS)}")
    out = prism_dir / "compare"
    items = evaluation_items(plan, seed)
    evaluator = _Evaluator(model, tokenizer, prism_dir, plan, seed, batch_size)
    cells: dict[tuple[str, str], list[dict]] = {}
    trained = _fingerprint(prism_dir)
    jobs = [(system, dataset) for system in systems for dataset in DATASETS]
    for system, dataset in tqdm(jobs, desc="compare", unit="cell", disable=not progress):
        path = out / "cells" / f"{_slug(system)}__{dataset}.json"
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("budget") == asdict(plan) and cached.get("seed") == seed and cached.get("trained") == trained:
                cells[(system, dataset)] = cached["rows"]
                continue
        cells[(system, dataset)] = evaluator.run(system, dataset, items[dataset])
        write_json(path, {"system": system, "dataset": dataset, "budget": asdict(plan), "seed": seed, "trained": trained,
                          "rows": cells[(system, dataset)]})
    routes = {router: evaluator.routes(router, [i for d in DATASETS for i in items[d]])[1] for router in ROUTERS}
    summary = summarise(cells, systems, items, routes, seed)
    write_table(out / "table.csv", summary["table"])
    write_table(out / "route_rates.csv", summary["route_rates"])
    write_table(out / "category_routing.csv", summary["categories"])
    figures = _figures(out, summary)
    _report(out, summary, plan, figures)
    write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "categories"})
    return summary


def _fingerprint(prism_dir: Path) -> str:
    """A hash of the trained artefacts: cells computed with other ones are not reused."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted([prism_dir / "gate" / "gate.safetensors", prism_dir / "steering.safetensors",
                        *(prism_dir / "adapters").glob("*/adapter_model.safetensors"),
                        *(prism_dir / "baselines").glob("*")]):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _values(rows: list[dict], dataset: str) -> np.ndarray:
    if dataset == "capitals":
        return np.array([row["correct"] for row in rows]) * SCALE["accuracy"]
    if dataset == "harmbench":
        return np.array([row["refused"] for row in rows]) * SCALE["refusal"]
    return np.array([row["rating"] if row["rating"] is not None else np.nan for row in rows], dtype=float) * SCALE["judge"]


def summarise(cells, systems, items, routes: dict[str, np.ndarray], seed: int = 0) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a data set without one parsable rating gives NaN, not noise
        return _summarise(cells, systems, items, routes, seed)


def _summarise(cells, systems, items, routes: dict[str, np.ndarray], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    table, rates = [], []
    base = {d: _values(cells[("base", d)], d) for d in DATASETS if ("base", d) in cells}
    for system in systems:
        row = {"system": system}
        overall_draws = np.zeros(1000)
        for dataset in DATASETS:
            values = _values(cells[(system, dataset)], dataset)
            finite = values[np.isfinite(values)]
            estimate = bootstrap_mean(finite if finite.size else [np.nan], seed=seed)
            row.update({dataset: estimate.mean, f"{dataset}_low": estimate.low, f"{dataset}_high": estimate.high,
                        f"{dataset}_n": estimate.n})
            overall_draws += np.nanmean(values[rng.integers(0, len(values), (1000, len(values)))], axis=1) / len(DATASETS)
            if dataset in base and system != "base":
                both = np.isfinite(values) & np.isfinite(base[dataset])
                if not both.any():
                    continue  # e.g. no rating could be parsed
                diff = paired_difference(values[both], base[dataset][both], seed=seed)
                row.update({f"{dataset}_vs_base": diff.mean, f"{dataset}_vs_base_low": diff.low,
                            f"{dataset}_vs_base_high": diff.high})
            routed = [r["routed"] for r in cells[(system, dataset)]]
            rates.append({"system": system, "dataset": dataset, "route_rate": float(np.mean(routed)), "n": len(routed)})
        margins = np.array([r["margin"] for r in cells[(system, "capitals")]])
        margin = bootstrap_mean(margins, seed=seed)
        row.update(margin=margin.mean, margin_low=margin.low, margin_high=margin.high)
        if system != "base" and ("base", "capitals") in cells:
            diff = paired_difference(margins, [r["margin"] for r in cells[("base", "capitals")]], seed=seed)
            row.update(margin_vs_base=diff.mean, margin_vs_base_low=diff.low, margin_vs_base_high=diff.high)
        row["overall"] = float(np.mean([row[d] for d in DATASETS]))
        row["overall_low"], row["overall_high"] = (float(q) for q in np.nanquantile(overall_draws, [0.025, 0.975]))
        table.append(row)
    agreement = []
    for i, a in enumerate(ROUTERS):
        for b in ROUTERS[i + 1:]:
            agreement.append({"a": a, "b": b, "agreement": float((routes[a] == routes[b]).mean()),
                              "kappa": float(cohen_kappa_score(routes[a], routes[b])) if len(set(routes[a])) > 1 or len(set(routes[b])) > 1 else float("nan"),
                              "n": int(len(routes[a]))})
    categories = _category_routing(cells, items) if "PRISM" in systems and "expert prompt" in systems else []
    correlation = {}
    if len(categories) >= 3:
        share = [c["route_share"] for c in categories]
        effect = [c["persona_effect"] for c in categories]
        correlation = {method: bootstrap_correlation(share, effect, method=method, seed=seed).to_dict()
                       for method in ("pearson", "spearman")}
    return {"table": table, "route_rates": rates, "agreement": agreement, "categories": categories,
            "correlation": correlation}


def _category_routing(cells, items) -> list[dict]:
    """Per category: share of queries PRISM's gate sends to the adapter vs the persona's effect
    (expert prompt - base, 0-100 scale) there: the Figure-4 analogue."""
    rows = []
    for dataset in DATASETS:
        prism, base, expert = (cells[(s, dataset)] for s in ("PRISM", "base", "expert prompt"))
        base_values, expert_values = _values(base, dataset), _values(expert, dataset)
        for category in sorted({item.category for item in items[dataset]}):
            index = [i for i, row in enumerate(prism) if row["category"] == category]
            effect = np.nanmean(expert_values[index] - base_values[index]) if index else np.nan
            rows.append({"dataset": dataset, "category": category, "n": len(index),
                         "route_share": float(np.mean([prism[i]["routed"] for i in index])),
                         "persona_effect": float(effect)})
    return [row for row in rows if np.isfinite(row["persona_effect"])]


def _figures(out: Path, summary: dict) -> list[str]:
    written = []
    panels = [("table1", plots.comparison_bars(summary["table"])), ("route_rates", plots.route_rates(summary["route_rates"]))]
    if summary["categories"]:
        panels.append(("fig4_routing_vs_effect", plots.routing_vs_effect(summary["categories"], summary["correlation"])))
    for name, figure in panels:
        save_figure(figure, out / "figures" / f"{name}.png")
        written.append(f"figures/{name}.png")
    return written


def _ci(value: float, low: float, high: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_table(table: Sequence[dict]) -> str:
    """The comparison as a Markdown table (0-100 scale, 95% CIs)."""
    lines = ["| system | capitals acc. | capitals margin (nats) | HarmBench refusal | MT-Bench judge x10 | Overall |",
             "|---|---|---|---|---|---|"]
    for row in table:
        margin = _ci(row["margin"], row["margin_low"], row["margin_high"], 2) if "margin" in row else "-"
        lines.append(f"| {row['system']} | {_ci(row['capitals'], row['capitals_low'], row['capitals_high'])} | {margin} | "
                     f"{_ci(row['harmbench'], row['harmbench_low'], row['harmbench_high'])} | "
                     f"{_ci(row['mtbench'], row['mtbench_low'], row['mtbench_high'])} | "
                     f"{_ci(row['overall'], row['overall_low'], row['overall_high'])} |")
    return "\n".join(lines)


def _report(out: Path, summary: dict, plan: CompareBudget, figures: Sequence[str]) -> None:
    table = {row["system"]: row for row in summary["table"]}
    rates = {(r["system"], r["dataset"]): r["route_rate"] for r in summary["route_rates"]}
    lines = ["# PRISM compared with its baselines", "",
             f"n = {plan.capitals} capital-city questions, {plan.harmbench} HarmBench requests, {plan.mtbench} MT-Bench "
             "first turns. Scores on 0-100 (accuracy, keyword refusal rate, self-judge rating x10) with bootstrap 95% CIs; "
             "Overall = their unweighted mean.", "", format_table(summary["table"]), ""]
    if "PRISM" in table and "base" in table:
        prism = table["PRISM"]
        lines.append("## Does PRISM keep knowledge at the base level and the persona's gains elsewhere?")
        lines.append("")
        for dataset, key, label in (("capitals", "capitals", "capitals accuracy"), ("capitals", "margin", "capitals margin (nats)"),
                                    ("harmbench", "harmbench", "refusal"), ("mtbench", "mtbench", "judge x10")):
            if f"{key}_vs_base" in prism:
                diff = (prism[f"{key}_vs_base"], prism[f"{key}_vs_base_low"], prism[f"{key}_vs_base_high"])
                significant = diff[1] > 0 or diff[2] < 0
                expert = table.get("expert prompt", {})
                digits = 2 if key == "margin" else 1
                lines.append(f"- {label}: PRISM - base {_ci(*diff, digits)}{' (significant)' if significant else ' (not significant)'}"
                             + (f"; expert prompt - base {_ci(expert[f'{key}_vs_base'], expert[f'{key}_vs_base_low'], expert[f'{key}_vs_base_high'], digits)}"
                                if f"{key}_vs_base" in expert else "")
                             + f"; PRISM routed {rates.get(('PRISM', dataset), float('nan')):.0%} of these queries to the adapter.")
        lines.append("")
    lines += ["## Agreement between routers", ""]
    for row in summary["agreement"]:
        lines.append(f"- {row['a']} vs {row['b']}: same decision on {row['agreement']:.0%} of {row['n']} queries "
                     f"(Cohen's kappa {row['kappa']:+.2f}).")
    if summary["correlation"]:
        p, s = summary["correlation"]["pearson"], summary["correlation"]["spearman"]
        lead = (f"Per category, the share PRISM routes to the adapter vs the persona's effect there "
                f"({len(summary['categories'])} categories): ")
        if np.isfinite(p["mean"]):
            lines += ["", lead + f"Pearson {_ci(p['mean'], p['low'], p['high'], 2)}, "
                                 f"Spearman {_ci(s['mean'], s['low'], s['high'], 2)} (the paper: 0.65 and 0.75)."]
        else:
            lines += ["", lead + "undefined: the route share or the persona's effect is the same in every category."]
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _slug(system: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in system.lower()).strip("-")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
