"""Tables, figures and a plain-words Markdown report from a study's saved rows.

``summarise_study(directory)`` reads ``items.json`` and ``study.json`` and (re)writes
``cells.csv``, ``effects.csv``, ``effects_by_category.csv``, ``effects_across_formats.csv`` (each
with a JSON twin), ``judge_consistency.json``, ``figures/*.png`` (each with its ``.pdf`` twin) and ``report.md``, and
returns a ``StudySummary``. The findings' wording is in ``interventions.study.findings``.
``compare_models`` adds the cross-model placement figure for several study directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from figures import study as plots
from interventions.study.agreement import format_agreement
from interventions.study.effects import BASELINE_LABEL, METRICS, cell_table, effect_table, judge_consistency
from interventions.study.findings import KNOWLEDGE_TASKS, across, find, findings, fmt
from probes.core.errors import ToolkitError
from probes.core.files import figure_format, save_figure, write_record, write_table, write_text
from probes.core.formats import DEFAULT_FORMAT, FORMATS
from probes.core.stats import Estimate
from probes.core.summary import Summary

# what the report reads of study.json and of each row of items.json, with the JSON types it needs
SETTINGS_FIELDS = {"model": str, "grid": str, "seed": int, "judge": str, "items": dict}
ROW_FIELDS = {"task": str, "condition": str, "item_id": str, "category": str}
NUMBERS = (int, float, type(None))
JSON_TYPES = {str: "string", int: "whole number", dict: "JSON object"}


def load_study(directory: str | Path) -> tuple[dict, list[dict]]:
    """A study directory's settings (``study.json``) and rows (``items.json``), checked to be what the report reads.

    Raises:
        ToolkitError: either file missing, not JSON, or not of the shape ``prism study`` writes (one line naming the
            file, the row and the field).
    """
    directory = Path(directory)
    try:
        settings = json.loads((directory / "study.json").read_text(encoding="utf-8"))
        rows = json.loads((directory / "items.json").read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ToolkitError(
            f"{directory} holds no finished study ({Path(error.filename).name} missing): run `prism study` first"
        ) from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ToolkitError(
            f"{directory} has a malformed study file ({error}): rerun `prism study` to rewrite it"
        ) from error
    rewrite = "rerun `prism study` with the same options to rewrite it (finished work is kept)"
    problem = _shape_problem(settings, SETTINGS_FIELDS)
    if problem:
        raise ToolkitError(f"{directory / 'study.json'}: {problem}: {rewrite}")
    if not isinstance(rows, list):
        raise ToolkitError(f"{directory / 'items.json'}: not a list of rows: {rewrite}")
    for number, row in enumerate(rows, start=1):
        problem = _shape_problem(row, ROW_FIELDS)
        if problem is None:
            wrong = [metric for metric in (*METRICS, "chance") if not isinstance(row.get(metric), NUMBERS)]
            ratings = row.get("ratings", {})
            if wrong:
                problem = f"field {wrong[0]!r} is not a number"
            elif not isinstance(ratings, dict) or not all(isinstance(value, NUMBERS) for value in ratings.values()):
                problem = "field 'ratings' is not a JSON object of numbers"
        if problem:
            raise ToolkitError(f"{directory / 'items.json'}: row {number}: {problem}: {rewrite}")
    return settings, rows


def _shape_problem(record: object, fields: Mapping[str, type]) -> str | None:
    """What is wrong with ``record`` as a JSON object holding ``fields`` of their types (None: nothing)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kind in fields.items():
        if name not in record:
            return f"has no {name!r} field"
        if not isinstance(record[name], kind):
            return f"field {name!r} is not a {JSON_TYPES[kind]}"
    return None


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
        agreement: each effect across prompt formats, with its verdict (``effects_across_formats.csv``).
        items: the tidy per-item rows the tables come from (``items.json``).
    """

    directory: Path
    model: str
    cells: list[dict]
    effects: list[dict]
    effects_by_category: list[dict]
    consistency: dict
    findings: tuple[str, ...]
    agreement: tuple[dict, ...] = ()
    items: tuple[dict, ...] = field(default=(), repr=False, compare=False)

    @property
    def report(self) -> Path:
        return self.directory / "report.md"

    def effect(
        self,
        task: str,
        condition: str,
        metric: str,
        reference: str = BASELINE_LABEL,
        prompt_format: str = DEFAULT_FORMAT,
    ) -> Estimate | None:
        """One paired effect (condition minus reference on the same items, in one prompt format), or None."""
        row = find(
            self.effects, task=task, condition=condition, metric=metric, reference=reference, format=prompt_format
        )
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
    formats = settings.get("formats") or [DEFAULT_FORMAT]
    tables["effects_across_formats"] = format_agreement(tables["effects"], formats)
    for name, table in tables.items():
        write_table(directory / f"{name}.csv", table)
    consistency = judge_consistency([row for row in rows if row["task"] == "mtbench"])
    write_record(directory / "judge_consistency.json", consistency, model=settings["model"])
    figures = _write_figures(directory / "figures", tables, settings)
    fell_back = any(row.get("placement") == "system" and row.get("placement_used") == "user" for row in rows)
    report = study_report(settings, tables, consistency, figures, system_fell_back=fell_back)
    write_text(directory / "report.md", report)
    found = findings(tables["effects"], consistency, tables["effects_across_formats"])
    return StudySummary(
        directory,
        settings["model"],
        tables["cells"],
        tables["effects"],
        tables["effects_by_category"],
        consistency,
        tuple(found),
        tuple(tables["effects_across_formats"]),
        tuple(rows),
    )


def _write_figures(directory: Path, tables: Mapping, settings: Mapping) -> list[str]:
    """Every figure the study's tasks allow, written into ``directory``; their paths relative to the study."""
    tasks = {row["task"] for row in tables["cells"]}
    wanted = {
        **_category_figures(tables, tasks),
        "fig1d_placement": lambda: plots.placement_deltas({settings["model"]: tables["effects"]}),
        **_persona_figures(tables, tasks),
        **_format_figures(tables),
    }
    written = []
    for name, make in wanted.items():
        save_figure(make(), directory / f"{name}.png")
        written.append(f"figures/{name}.png")
    return written


def _category_figures(tables: Mapping, tasks: set[str]) -> dict[str, Callable]:
    """Figure 1a-c: generation and knowledge per category, refusal with the safety persona."""
    by_category, cells = tables["effects_by_category"], tables["cells"]
    wanted = {}
    for task, metric in (("mtbench", "judge_score"), ("ifeval", "strict")):
        if task in tasks:
            wanted[f"fig1a_{task}_by_category"] = lambda t=task, m=metric: plots.generation_by_category(
                by_category, t, m
            )
    for task in KNOWLEDGE_TASKS:
        if task in tasks:
            wanted[f"fig1b_{task}_by_category"] = lambda t=task: plots.knowledge_by_category(by_category, t, "margin")
    if "harmbench" in tasks:
        wanted["fig1c_refusal_safety_persona"] = lambda: plots.refusal_with_safety_persona(cells)
    return wanted


def _persona_figures(tables: Mapping, tasks: set[str]) -> dict[str, Callable]:
    """Figure 2: each persona's lift per category, and the matched experts' lifts."""
    by_category = tables["effects_by_category"]
    wanted = {}
    for task, metric in (("capitals", "margin"), ("harmbench", "refusal_rate")):
        if task in tasks:
            wanted[f"fig2_{task}_persona_heatmap"] = lambda t=task, m=metric: plots.persona_lift_heatmap(
                by_category, t, m
            )
    for task, metric in (("ifeval", "strict"), ("mtbench", "judge_score"), ("mmlu-letter", "margin")):
        if task in tasks:
            wanted[f"fig2_{task}_expert_bars"] = lambda t=task, m=metric: plots.expert_lift_bars(by_category, t, m)
    return wanted


def _format_figures(tables: Mapping) -> dict[str, Callable]:
    """Figure 3: each knowledge task's effects across prompt formats, where it ran in more than one."""
    wanted = {}
    for task in KNOWLEDGE_TASKS:
        if len({row.get("format") for row in tables["cells"] if row["task"] == task}) > 1:
            verdicts = {
                row["condition"]: row["verdict"]
                for row in tables["effects_across_formats"]
                if row["task"] == task and row["metric"] == "margin" and row["reference"] == BASELINE_LABEL
            }
            wanted[f"fig3_{task}_formats"] = lambda t=task, v=verdicts: plots.format_effects(
                tables["effects"], t, "margin", v
            )
    return wanted


def compare_models(directories: Sequence[str | Path], out: str | Path) -> Path:
    """Figure 1d across models: persona effects in the system prompt vs the user message.

    Args:
        directories: finished study directories, one per model.
        out: the figure's file; its suffix picks the format (``.png``, with a ``.pdf`` twin beside it; ``.pdf``;
            ``.svg``), checked before any study is read.

    Returns:
        ``out``, as a ``Path``.

    Raises:
        ToolkitError: another suffix, or a directory that holds no finished study.
    """
    figure_format(out)
    effects = {}
    for directory in directories:
        settings, rows = load_study(directory)
        effects[settings["model"]] = effect_table(rows)
    return save_figure(plots.placement_deltas(effects), out)


# --- the report ------------------------------------------------------------------------------


def study_report(
    settings: Mapping, tables: Mapping, consistency: Mapping, figures: Sequence[str], system_fell_back: bool = False
) -> str:
    """The Markdown report: settings, baselines, findings, every effect, the format control and the figures.

    Args:
        settings: ``study.json``.
        tables: ``cells``, ``effects`` and ``effects_across_formats`` (``format_agreement``; may be missing).
        consistency: ``judge_consistency``'s result.
        figures: the figures' paths relative to the study directory.
        system_fell_back: whether personas meant for the system prompt went to the user message.
    """
    cells, effects = tables["cells"], tables["effects"]
    agreement = tables.get("effects_across_formats") or format_agreement(effects)
    formats = list(dict.fromkeys(row.get("format") or DEFAULT_FORMAT for row in cells))
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
    if len(formats) > 1:
        lines += (
            [
                "Prompt formats: the knowledge tasks ran every condition under each format below, each against the "
                "baseline of its own format. An effect is called a finding only if its sign holds, significantly, in "
                "every format; otherwise the report says it depends on the format.",
                "",
            ]
            + [f"- `{name}`: {FORMATS[name].description}" for name in formats if name in FORMATS]
            + [""]
        )
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
        "| task | format | metric | no persona | template default | chance |",
        "|---|---|---|---|---|---|",
    ]
    for row in cells:
        if row["condition"] == BASELINE_LABEL:
            template = find(
                cells, task=row["task"], format=row.get("format"), metric=row["metric"], condition="none[template]"
            )
            chance = f"{row['chance']:.2f}" if row.get("chance") is not None else "—"
            lines.append(
                f"| {row['task']} | {row.get('format')} | {row['metric']} | {fmt(row)} | {fmt(template)} | {chance} |"
            )
    lines += ["", "## Findings, set against the paper", ""]
    lines += findings(effects, consistency, agreement)
    lines += [
        "",
        "## Every effect",
        "",
        "| task | format | condition | metric | Δ vs no persona | Δ vs random persona | across formats |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in effects:
        if row["reference"] != BASELINE_LABEL:
            continue
        versus_random = find(
            effects,
            task=row["task"],
            format=row.get("format"),
            condition=row["condition"],
            metric=row["metric"],
            reference=row["condition"].replace("expert/", "random/", 1),
        )
        if row["persona_spec"] != "expert":
            versus_random = None
        agreed = find(
            agreement, task=row["task"], condition=row["condition"], metric=row["metric"], reference=BASELINE_LABEL
        )
        lines.append(
            f"| {row['task']} | {row.get('format')} | {row['condition']} | {row['metric']} | "
            f"{fmt(row, 'delta', True)} | {fmt(versus_random, 'delta', True)} | "
            f"{agreed['verdict'] if agreed else '—'} |"
        )
    several = [
        row
        for row in agreement
        if "," in row["formats"] and row["reference"] == BASELINE_LABEL and row["persona_spec"] != "none"
    ]
    if several:
        lines += [
            "",
            "## Across prompt formats",
            "",
            "Each persona effect (vs no persona in the same format) side by side; a finding holds its sign, "
            "significantly, in every format.",
            "",
            "| task | condition | metric | effect per format | verdict |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['task']} | {row['condition']} | {row['metric']} | {across(row)} | {row['verdict']} |"
            for row in several
        ]
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
