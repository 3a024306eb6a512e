"""Tables, figures and a plain-words Markdown report from a study's saved rows.

``summarise_study(directory)`` reads ``items.json`` and ``study.json`` and (re)writes
``cells.csv``, ``effects.csv``, ``effects_by_category.csv`` (each with a JSON twin),
``judge_consistency.json``, ``figures/*.png`` and ``report.md``, and returns a ``StudySummary``.
``compare_models`` adds the cross-model placement figure for several study directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from figures import study as plots
from interventions.measure.tasks import TASKS
from interventions.study.effects import cell_table, effect_table, judge_consistency
from probes.core.errors import ToolkitError
from probes.core.files import save_figure, write_json, write_table, write_text
from probes.core.stats import Estimate
from probes.core.summary import Summary

KNOWLEDGE_TASKS = tuple(name for name, task in TASKS.items() if task.is_choice)  # capitals, mmlu-letter, mmlu-cloze


def load_study(directory: str | Path) -> tuple[dict, list[dict]]:
    directory = Path(directory)
    try:
        settings = json.loads((directory / "study.json").read_text(encoding="utf-8"))
        rows = json.loads((directory / "items.json").read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ToolkitError(f"{directory} holds no finished study ({Path(error.filename).name} missing): run `prism study` first") from error
    except json.JSONDecodeError as error:
        raise ToolkitError(f"{directory} has a malformed study file ({error}): rerun `prism study` to rewrite it") from error
    return settings, rows


@dataclass(frozen=True)
class StudySummary(Summary):
    """What ``summarise_study`` wrote and found.

    Attributes:
        directory: the study directory (``report.md`` inside).
        model: the studied model's name.
        cells, effects, effects_by_category: the tables, rows as in their CSV and JSON files.
        consistency: the MT-Bench judge's consistency (``judge_consistency.json``).
        findings: the report's "Findings, set against the paper" bullets (Markdown; every number
            a mean with its 95% CI and n).
    """

    directory: Path
    model: str
    cells: list[dict]
    effects: list[dict]
    effects_by_category: list[dict]
    consistency: dict
    findings: tuple[str, ...]

    @property
    def report(self) -> Path:
        return self.directory / "report.md"

    def effect(self, task: str, condition: str, metric: str, reference: str = "none[empty]") -> Estimate | None:
        """One paired effect (condition minus reference on the same items), or None if not measured."""
        row = _find(self.effects, task=task, condition=condition, metric=metric, reference=reference)
        return None if row is None or row.get("delta") is None else Estimate.from_columns(row, "delta", prefix="")

    def lines(self) -> list[str]:
        """The findings, one Markdown bullet a line (as in the report)."""
        return list(self.findings)


def summarise_study(directory: str | Path, seed: int = 0) -> StudySummary:
    """Write every table, figure and the report of one study directory.

    Args:
        directory: a finished (or resumed) ``prism study`` directory.
        seed: bootstrap seed of the confidence intervals.

    Returns:
        the ``StudySummary``: the tables and the report's findings.

    Raises:
        ToolkitError: the directory holds no finished study (``study.json`` or ``items.json`` missing or malformed).
    """
    directory = Path(directory)
    settings, rows = load_study(directory)
    tables = {
        "cells": cell_table(rows, seed=seed),
        "effects": effect_table(rows, seed=seed),
        "effects_by_category": effect_table(rows, seed=seed, by_category=True),
    }
    for name, table in tables.items():
        write_table(directory / f"{name}.csv", table)
    consistency = judge_consistency([row for row in rows if row["task"] == "mtbench"])
    write_json(directory / "judge_consistency.json", consistency)
    figures = _write_figures(directory / "figures", tables, settings)
    fell_back = any(row.get("placement") == "system" and row.get("placement_used") == "user" for row in rows)
    report = study_report(settings, tables, consistency, figures, system_fell_back=fell_back)
    write_text(directory / "report.md", report)
    return StudySummary(directory, settings["model"], tables["cells"], tables["effects"], tables["effects_by_category"],
                        consistency, tuple(_findings(tables["effects"], consistency)))


def _write_figures(directory: Path, tables: Mapping, settings: Mapping) -> list[str]:
    by_category, cells = tables["effects_by_category"], tables["cells"]
    tasks = {row["task"] for row in cells}
    wanted = {}
    for task, metric in (("mtbench", "judge_score"), ("ifeval", "strict")):
        if task in tasks:
            wanted[f"fig1a_{task}_by_category"] = lambda t=task, m=metric: plots.generation_by_category(by_category, t, m)
    for task in KNOWLEDGE_TASKS:
        if task in tasks:
            wanted[f"fig1b_{task}_by_category"] = lambda t=task: plots.knowledge_by_category(by_category, t, "margin")
    if "harmbench" in tasks:
        wanted["fig1c_refusal_safety_persona"] = lambda: plots.refusal_with_safety_persona(cells)
    wanted["fig1d_placement"] = lambda: plots.placement_deltas({settings["model"]: tables["effects"]})
    for task, metric in (("capitals", "margin"), ("harmbench", "refusal_rate")):
        if task in tasks:
            wanted[f"fig2_{task}_persona_heatmap"] = lambda t=task, m=metric: plots.persona_lift_heatmap(by_category, t, m)
    for task, metric in (("ifeval", "strict"), ("mtbench", "judge_score"), ("mmlu-letter", "margin")):
        if task in tasks:
            wanted[f"fig2_{task}_expert_bars"] = lambda t=task, m=metric: plots.expert_lift_bars(by_category, t, m)
    written = []
    for name, make in wanted.items():
        save_figure(make(), directory / f"{name}.png")
        written.append(f"figures/{name}.png")
    return written


def compare_models(directories: Sequence[str | Path], out: str | Path) -> Path:
    """Figure 1d across models: persona effects in the system prompt vs the user message."""

    effects = {}
    for directory in directories:
        settings, rows = load_study(directory)
        effects[settings["model"]] = effect_table(rows)
    return save_figure(plots.placement_deltas(effects), out)


# --- the report ------------------------------------------------------------------------------


def _fmt(row: Mapping | None, centre: str = "mean", signed: bool = False) -> str:
    if row is None:
        return "—"
    if row.get(centre) is None:
        return f"no values (n={row['n']})"
    estimate = Estimate.from_columns(row, centre, prefix="")
    return estimate.format(signed=signed, star="significant" in row, n=True)  # effects carry a significance, cells not


def _find(table: Sequence[Mapping], **where) -> Mapping | None:
    for row in table:
        if all(row.get(key) == value for key, value in where.items()):
            return row
    return None


def verdict(effect: Mapping | None, expected_sign: int) -> str:
    """Whether a paired effect goes the paper's way, and whether it is significant."""
    if effect is None:
        return "not measured"
    same = effect["delta"] * expected_sign > 0
    if effect["significant"]:
        return "reproduces the paper's direction (significant)" if same else "goes against the paper (significant)"
    if effect["delta"] == 0:
        return "no change at all (not significant)"
    return f"{'same' if same else 'opposite'} direction as the paper, not significant"


def study_report(settings: Mapping, tables: Mapping, consistency: Mapping, figures: Sequence[str],
                 system_fell_back: bool = False) -> str:
    cells, effects = tables["cells"], tables["effects"]
    lines = [
        f"# Persona-effect study: {settings['model']}",
        "",
        f"Grid `{settings['grid']}`, seed {settings['seed']}, judge `{settings['judge']}`; items per cell: "
        + ", ".join(f"{task} {n if n is not None else 'all'}" for task, n in settings["items"].items())
        + ". Baseline: an explicit empty system message (`none[empty]`); `none[template]` is the chat "
        "template's own default. Every number is a mean with its bootstrap 95% CI and n; differences are "
        "paired on the same items, * = CI excludes 0.",
        "",
    ]
    if system_fell_back:
        lines += [
            "This model's prompt format has no system role, so personas meant for the system prompt were "
            "prepended to the user message: system and user placements are the same prompts here, and "
            "`none[template]` equals `none[empty]`.",
            "",
        ]
    lines += [
        "## Baselines",
        "",
        "| task | metric | no persona | template default | chance |",
        "|---|---|---|---|---|",
    ]
    for row in cells:
        if row["condition"] == "none[empty]":
            template = _find(cells, task=row["task"], metric=row["metric"], condition="none[template]")
            chance = f"{row['chance']:.2f}" if row.get("chance") is not None else "—"
            lines.append(f"| {row['task']} | {row['metric']} | {_fmt(row)} | {_fmt(template)} | {chance} |")
    lines += ["", "## Findings, set against the paper", ""]
    lines += _findings(effects, consistency)
    lines += ["", "## Every effect", "", "| task | condition | metric | Δ vs no persona | Δ vs random persona |",
              "|---|---|---|---|---|"]
    for row in effects:
        if row["reference"] != "none[empty]":
            continue
        versus_random = _find(effects, task=row["task"], condition=row["condition"], metric=row["metric"],
                              reference=row["condition"].replace("expert/", "random/", 1))
        if row["persona_spec"] != "expert":
            versus_random = None
        lines.append(f"| {row['task']} | {row['condition']} | {row['metric']} | {_fmt(row, 'delta', True)} | "
                     f"{_fmt(versus_random, 'delta', True)} |")
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _findings(effects: Sequence[Mapping], consistency: Mapping) -> list[str]:
    found = []
    knowledge = [row for row in effects if row["task"] in KNOWLEDGE_TASKS and row["metric"] == "margin"
                 and row["reference"] == "none[empty]" and row["persona_spec"] != "none"]
    if knowledge:
        negative = sum(row["delta"] < 0 for row in knowledge)
        hurt = sum(row["significant"] and row["delta"] < 0 for row in knowledge)
        helped = sum(row["significant"] and row["delta"] > 0 for row in knowledge)
        found.append(
            f"- **Personas and knowledge retrieval** (paper: every persona lowers MMLU). Over {len(knowledge)} "
            f"persona conditions on the knowledge tasks, the correct option's margin fell in {negative}; "
            f"{hurt} falls and {helped} rises are significant."
        )
        for task in KNOWLEDGE_TASKS:
            for spec in ("expert", "random"):
                short = _find(knowledge, task=task, persona_spec=spec, length="min", placement="system")
                long = _find(knowledge, task=task, persona_spec=spec, length="long", placement="system")
                if short and long:
                    found.append(
                        f"  - {task}, {spec} persona: min {_fmt(short, 'delta', True)} nats, long "
                        f"{_fmt(long, 'delta', True)}: long persona {verdict(long, -1)}; long minus min "
                        f"{long['delta'] - short['delta']:+.2f} nats ({'longer is worse' if long['delta'] < short['delta'] else 'longer is not worse'}; "
                        "paper: longer personas hurt more)."
                    )
                    break
    safety = _find(effects, task="harmbench", persona_spec="safety-monitor", length="long", placement="system",
                   metric="refusal_rate", reference="none[empty]")
    if safety:
        found.append(f"- **Safety monitor and refusal** (paper: refusal rises): long safety-monitor persona "
                     f"{_fmt(safety, 'delta', True)}: {verdict(safety, +1)}.")
    for task, metric, claim in (("ifeval", "strict", "instruction following"), ("mtbench", "judge_score", "judged generation quality")):
        expert = _find(effects, task=task, persona_spec="expert", length="long", placement="system", metric=metric,
                       reference="none[empty]")
        if expert:
            found.append(f"- **Expert persona and {claim}** (paper: alignment-dependent tasks improve): long expert "
                         f"persona {_fmt(expert, 'delta', True)}: {verdict(expert, +1)}.")
        versus = _find(effects, task=task, persona_spec="expert", length="long", placement="system", metric=metric,
                       reference="random/long/system[empty]")
        if versus:
            found.append(f"  - expert over a random persona of the same length: {_fmt(versus, 'delta', True)} "
                         f"({'expertise matters' if versus['significant'] else 'no evidence that expertise, rather than any persona, matters'}).")
    if consistency.get("judgements"):
        parse = consistency.get("parse_rate") or 0
        text = (f"- **Judge noise**: {consistency['parsed']}/{consistency['judgements']} judgements parsed "
                f"({parse:.0%})")
        if consistency.get("pairs"):
            text += (f"; the same answer judged with two sampling seeds agreed exactly in "
                     f"{consistency['exact_agreement']:.0%} of {consistency['pairs']} pairs, mean |difference| "
                     f"{consistency['mean_abs_difference']:.2f} points")
        if consistency.get("share_most_common") is not None:
            text += (f"; {consistency['share_most_common']:.0%} of ratings are {consistency['most_common_rating']:g}"
                     + (" (the example rating in the judge prompt: the judge mostly copies it)"
                        if consistency["most_common_rating"] == 5 else ""))
        found.append(text + ". Differences in judge score smaller than this noise say nothing.")
    placement = [(row, _find(effects, task=row["task"], metric=row["metric"], persona_spec=row["persona_spec"],
                             length=row["length"], placement="user", reference="none[empty]"))
                 for row in effects if row["placement"] == "system" and row["length"] == "long"
                 and row["reference"] == "none[empty]" and row["persona_spec"] in ("expert", "random")]
    placement = [(s, u) for s, u in placement if u is not None]
    if placement:
        larger = sum(abs(s["delta"]) > abs(u["delta"]) for s, u in placement)
        found.append(f"- **Placement**: the long persona moved the metric more from the system prompt than from "
                     f"the user message in {larger} of {len(placement)} task-metric pairs (see fig1d).")
    return found or ["- No persona effects were measured."]
