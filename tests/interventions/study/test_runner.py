"""The study runner on a tiny model: resuming, second turns and their judgements."""

from __future__ import annotations

import json
import shutil

import pytest

from interventions.measure.tasks import Task
from interventions.study.report import summarise_study
from interventions.study.runner import Budget, run_study
from probes.core.errors import ToolkitError
from probes.core.models import load_model
from probes.core.personas import persona_library


def test_study_resumes_without_redoing_finished_work(tiny, tmp_path):
    out = tmp_path / "study"
    options = dict(
        budget="smoke",
        tasks=["capitals", "harmbench", "mtbench"],
        items=2,
        progress=False,
    )
    rows = run_study(out, *tiny, **options).items
    ledgers = {path.name: path.read_text() for path in (out / "ledger").glob("*.jsonl")}
    assert set(ledgers) == {"capitals.jsonl", "harmbench.jsonl", "mtbench.jsonl", "judge.jsonl"}
    # drop the last finished record of one task, as if the run had been killed there
    lines = ledgers["harmbench.jsonl"].splitlines()
    (out / "ledger" / "harmbench.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    summary = run_study(out, *tiny, **options)
    again = summary.items
    assert (out / "ledger" / "capitals.jsonl").read_text() == ledgers["capitals.jsonl"]  # nothing redone
    assert len((out / "ledger" / "harmbench.jsonl").read_text().splitlines()) == len(lines)  # only the lost one
    assert [json.dumps(r, sort_keys=True) for r in again] == [json.dumps(r, sort_keys=True) for r in rows]
    assert summarise_study(out) == summary  # what the run returns is what its directory gives
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "n=" in report
    for name in ("cells.csv", "effects.csv", "effects_by_category.csv", "judge_consistency.json"):
        assert (out / name).is_file()
    findings = report.split("## Findings, set against the paper", 1)[1].split("## Every effect", 1)[0]
    assert summary.report == out / "report.md" and summary.format() == findings.strip()  # what the demo prints
    assert {row["task"] for row in summary.cells} == {"capitals", "harmbench", "mtbench"}
    assert all(row["low"] <= row["mean"] <= row["high"] for row in summary.cells if row["n"])
    judged = [row for row in summary.cells if row["task"] == "mtbench"]
    for cell in judged:  # every answer is either judged or counted as unparseable
        answers = [r for r in again if r["task"] == "mtbench" and r["condition"] == cell["condition"]]
        assert cell["n"] + cell["unparseable"] == len(answers) > 0
    assert (out / "figures" / "fig1c_refusal_safety_persona.png").stat().st_size > 1000

    with pytest.raises(ToolkitError, match="holds a study of"):
        (out / "study.json").write_text(json.dumps({"model": "another-model"}))
        run_study(out, *tiny, **options)


def test_second_turns_are_answered_and_judged_when_the_budget_allows(tiny, tmp_path):
    budget = Budget(items={"mtbench": 2}, grid="smoke", max_new_tokens={"mtbench": 4}, turns=2, judge_seeds=(0,))
    rows = run_study(tmp_path / "s", *tiny, budget=budget, progress=False).items
    two_turns = [row for row in rows if "turn2_key" in row]
    assert two_turns and all(set(row["ratings"]) == {"turn1_seed0", "turn2_seed0"} for row in two_turns)
    answers = [json.loads(line) for line in (tmp_path / "s" / "ledger" / "mtbench.jsonl").read_text().splitlines()]
    second_keys = {row["turn2_key"] for row in two_turns}
    assert second_keys <= {a["key"] for a in answers} and len({a["key"] for a in answers}) == len(answers)


def test_a_second_format_only_adds_work_and_each_format_has_its_rows(tiny, tmp_path):
    out = tmp_path / "study"
    options = dict(budget="smoke", tasks=["capitals", "harmbench"], items=2, progress=False)
    plain = run_study(out, *tiny, formats=["plain"], **options).items  # a chat model's default: plain alone
    assert {row["format"] for row in plain} == {"plain"}
    before = (out / "ledger" / "capitals.jsonl").read_text().splitlines()
    refusals = (out / "ledger" / "harmbench.jsonl").read_text()
    rows = run_study(out, *tiny, formats=["plain", "qa"], **options).items
    after = (out / "ledger" / "capitals.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 2 * len(before)  # plain kept, qa prompts added
    assert (out / "ledger" / "harmbench.jsonl").read_text() == refusals  # generation tasks stay plain
    capitals = [row for row in rows if row["task"] == "capitals"]
    assert {row["format"] for row in capitals} == {"plain", "qa"}
    assert [row for row in capitals if row["format"] == "plain"] == [row for row in plain if row["task"] == "capitals"]
    assert {row["format"] for row in rows if row["task"] == "harmbench"} == {"plain"}
    assert json.loads((out / "study.json").read_text())["formats"] == ["plain", "qa"]
    with pytest.raises(ToolkitError, match="unknown prompt format 'xml'"):
        run_study(out, *tiny, formats=["xml"], **options)


def test_a_model_without_a_chat_template_gets_the_format_control_by_default(tiny_llama_directory, tmp_path):
    base = tmp_path / "base-model"
    shutil.copytree(tiny_llama_directory, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    summary = run_study(
        tmp_path / "study", *load_model(str(base)), budget="smoke", tasks=["capitals"], items=2, progress=False
    )
    assert {row["format"] for row in summary.items} == {"plain", "qa"}
    assert "(`plain`, `qa`)" in summary.findings[0] and (tmp_path / "study" / "effects_across_formats.csv").is_file()


def test_a_users_personas_are_studied_and_the_report_shows_them(tiny, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"personas": [{"name": "pirate", "min": "Arr, you are a pirate captain."}]}))
    out = tmp_path / "study"
    rows = run_study(
        out,
        *tiny,
        budget="smoke",
        tasks=["capitals"],
        items=2,
        personas=persona_library(path),
        progress=False,
    ).items
    mine = [row for row in rows if row["persona_spec"] == "pirate"]
    assert len(mine) == 2 and all(row["persona"] == "pirate" and row["length"] == "min" for row in mine)
    assert json.loads((out / "study.json").read_text())["user_personas"] == {"pirate": str(path)}
    assert "pirate" in (out / "effects.csv").read_text()


def test_a_study_resumed_after_a_cut_ledger_line_gives_the_bytes_of_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    measured = []  # the prompts of every measure call: the chunks, whose batches measure forms
    real_measure = Task.measure
    monkeypatch.setattr(
        Task,
        "measure",
        lambda task, model, tokenizer, items, prompts, **options: (
            measured.append((task.name, tuple(prompt.text for prompt in prompts)))
            or real_measure(task, model, tokenizer, items, prompts, **options)
        ),
    )
    budget = Budget(items={"capitals": 3, "harmbench": 3}, grid="smoke", max_new_tokens={"harmbench": 6})
    options = dict(budget=budget, batch_size=2, progress=False)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_study(whole, *tiny, **options)
    uninterrupted = set(measured)
    run_study(resumed, *tiny, **options)
    for name in ("capitals.jsonl", "harmbench.jsonl"):  # killed while writing a record: its chunk and the rest lost
        ledger = resumed / "ledger" / name
        data = ledger.read_bytes()
        ledger.write_bytes(data[: data.index(b'", "', len(data) // 2)])
    measured.clear()
    run_study(resumed, *tiny, **options)
    assert {task for task, _ in measured} == {"capitals", "harmbench"} and set(measured) <= uninterrupted
    for name in ("items.json", "effects.csv", "cells.csv"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name

    ledger = resumed / "ledger" / "capitals.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:3]) + '{"key": "edited by hand"}\n' + "".join(lines[3:]))
    before = {path.name: path.read_bytes() for path in (resumed / "ledger").iterdir()}
    with pytest.raises(ToolkitError) as caught:
        run_study(resumed, *tiny, **options)
    assert str(caught.value) == (
        f"{ledger} line 4: a ledger record without 'logprobs', 'scores', 'predicted', not written "
        "by prism: delete that line (its work is done again) and rerun"
    )
    assert {path.name: path.read_bytes() for path in (resumed / "ledger").iterdir()} == before
