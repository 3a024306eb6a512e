"""The prompt-format control: effects paired within a format, verdicts across formats, the report's wording."""

from __future__ import annotations

import json

import pytest

from interventions.study.agreement import DEPENDS, HOLDS, ONE_FORMAT, format_agreement, format_verdict
from interventions.study.effects import effect_table
from interventions.study.plan import FORMAT_CONTROL, prompt_formats
from interventions.study.report import compare_models, summarise_study
from prism.cli.shell import main
from probes.core.errors import ToolkitError

PERSONAS = {"math": (-0.5, -0.3), "history": (-0.4, +0.4), "writing": (-0.6, -0.05)}  # plain, qa shifts


def _rows(n: int = 12) -> list[dict]:
    """Capitals rows in two formats: qa's baseline is 2 nats higher; math lowers the margin in both formats, history
    lowers it in plain and raises it in qa, writing lowers it in plain and barely moves it in qa."""
    rows = []
    for fmt, base in (("plain", 1.0), ("qa", 3.0)):
        for i in range(n):
            noise = 0.05 * (i % 4 - 1.5)  # mean 0 over 12 items
            common = {
                "task": "capitals",
                "format": fmt,
                "item_id": f"c{i}",
                "category": "Europe",
                "base_system": "empty",
            }
            rows.append(
                {
                    **common,
                    "condition": "none[empty]",
                    "persona_spec": "none",
                    "length": None,
                    "placement": None,
                    "margin": base + i,
                    "accuracy": 1.0,
                }
            )
            for persona, shifts in PERSONAS.items():
                shift = shifts[fmt == "qa"] + (noise if persona != "writing" or fmt == "plain" else 4 * noise)
                rows.append(
                    {
                        **common,
                        "condition": f"{persona}/min/system[empty]",
                        "persona_spec": persona,
                        "length": "min",
                        "placement": "system",
                        "margin": base + i + shift,
                        "accuracy": 1.0,
                    }
                )
    return rows


def test_effects_are_paired_within_a_format_and_judged_across_formats():
    effects = [row for row in effect_table(_rows()) if row["metric"] == "margin"]
    by = {(row["condition"].split("/")[0], row["format"]): row for row in effects}
    assert by[("math", "plain")]["delta"] == pytest.approx(-0.5) and by[("math", "qa")]["delta"] == pytest.approx(-0.3)
    assert by[("history", "qa")]["delta"] == pytest.approx(0.4)  # against qa's own baseline, not plain's
    agreement = {row["condition"].split("/")[0]: row for row in format_agreement(effects, ["plain", "qa"])}
    assert agreement["math"]["verdict"] == HOLDS and agreement["math"]["finding"]
    assert agreement["history"]["verdict"] == DEPENDS and not agreement["history"]["finding"]
    assert agreement["writing"]["verdict"] == "same sign, significant in 1 of 2 formats"
    assert agreement["math"]["formats"] == "plain,qa" and agreement["math"]["n_qa"] == 12
    assert agreement["history"]["delta_plain"] < 0 < agreement["history"]["delta_qa"]


def test_verdicts_need_two_formats_and_significance_everywhere():
    significant_fall, rise, flat = (
        {"delta": -1.0, "significant": True},
        {"delta": 0.5, "significant": True},
        {"delta": 0.1, "significant": False},
    )
    assert format_verdict([significant_fall]) == ONE_FORMAT
    assert format_verdict([significant_fall, significant_fall]) == HOLDS
    assert format_verdict([significant_fall, rise]) == DEPENDS
    assert format_verdict([significant_fall, flat]) == DEPENDS  # significant in one, the other sign in another
    assert format_verdict([flat, {"delta": -0.1, "significant": False}]) == "not significant in any format"


def test_default_formats_follow_the_chat_template():
    assert prompt_formats(None, chat_template=False) == FORMAT_CONTROL == ("plain", "qa")
    assert prompt_formats(None, chat_template=True) == ("plain",)
    assert prompt_formats(["qa", "plain", "qa"], chat_template=True) == ("qa", "plain")
    with pytest.raises(ToolkitError, match="unknown prompt format 'xml'"):
        prompt_formats(["plain", "xml"], chat_template=False)


def test_the_report_calls_a_finding_only_what_holds_across_formats(tmp_path):
    settings = {
        "model": "base-model",
        "grid": "default",
        "formats": ["plain", "qa"],
        "seed": 0,
        "judge": "self",
        "items": {"capitals": 12},
    }
    (tmp_path / "study.json").write_text(json.dumps(settings))
    (tmp_path / "items.json").write_text(json.dumps(_rows()))
    summary = summarise_study(tmp_path)
    report = (tmp_path / "report.md").read_text()
    findings = "\n".join(summary.findings)
    assert "in `plain` the correct option's margin fell in 3 of 3; 3 falls and 0 rises are significant" in findings
    assert "1 of 3 persona conditions do (1 falls, 0 rises); 1 depend on the format" in findings
    assert 'every persona lowers knowledge" is a property of the prompt format here, not of the model' in findings
    assert "capitals, depends on the format: history/min/system[empty]: `plain` -0.40" in findings
    assert "capitals, findings (hold across formats): math/min/system[empty]" in findings
    assert "## Across prompt formats" in report and '- `qa`: persona, blank line, "Question: <question>"' in report
    assert "| capitals | qa | history/min/system[empty] | margin | +0.40" in report
    rows = json.loads((tmp_path / "effects_across_formats.json").read_text())
    verdicts = {row["verdict"] for row in rows if row["metric"] == "margin"}
    assert verdicts == {HOLDS, DEPENDS, "same sign, significant in 1 of 2 formats"}
    assert summary.effect("capitals", "history/min/system[empty]", "margin", prompt_format="qa").mean == pytest.approx(
        0.4
    )
    assert (tmp_path / "figures" / "fig3_capitals_formats.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "fig2_capitals_persona_heatmap.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "fig2_capitals_persona_heatmap.pdf").read_bytes().startswith(b"%PDF")  # its twin
    assert "figures/fig2_capitals_persona_heatmap.png" in report


def test_a_single_format_study_says_its_signs_were_not_checked(tmp_path):
    rows = [row for row in _rows() if row["format"] == "plain"]
    for row in rows:
        del row["format"]  # a study written before formats existed
    (tmp_path / "study.json").write_text(
        json.dumps({"model": "m", "grid": "default", "seed": 0, "judge": "self", "items": {"capitals": 12}})
    )
    (tmp_path / "items.json").write_text(json.dumps(rows))
    summary = summarise_study(tmp_path)
    assert "One prompt format (`plain`): these signs were not checked under another layout." in summary.findings[0]
    assert summary.effect("capitals", "math/min/system[empty]", "margin").mean == pytest.approx(-0.5)
    assert not (tmp_path / "figures" / "fig3_capitals_formats.png").exists()


def test_the_cross_model_figure_takes_the_format_its_path_names(tmp_path):
    study = tmp_path / "model-a"
    study.mkdir()
    (study / "study.json").write_text(
        json.dumps({"model": "a", "grid": "default", "seed": 0, "judge": "self", "items": {"capitals": 12}})
    )
    (study / "items.json").write_text(json.dumps(_rows()))
    assert compare_models([study], tmp_path / "fig1d.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in compare_models([study], tmp_path / "fig1d.svg").read_bytes()[:1000]
    assert compare_models([study], tmp_path / "fig1d.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.glob("fig1d.*")) == ["fig1d.pdf", "fig1d.png", "fig1d.svg"]
    with pytest.raises(ToolkitError, match=r"'fig1d.jpg': give a path ending in \.png, \.pdf or \.svg$"):
        compare_models([tmp_path / "no-study-here"], tmp_path / "fig1d.jpg")  # the suffix is checked first


def test_prism_report_compare_writes_the_format_its_path_names(tmp_path, capsys):
    (tmp_path / "study.json").write_text(
        json.dumps({"model": "a", "grid": "default", "seed": 0, "judge": "self", "items": {"capitals": 12}})
    )
    (tmp_path / "items.json").write_text(json.dumps(_rows()))
    assert main(["report", str(tmp_path), "--compare", str(tmp_path / "fig1d.svg")]) == 0
    assert b"<svg" in (tmp_path / "fig1d.svg").read_bytes()[:1000] and not (tmp_path / "fig1d.png").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--compare", str(tmp_path / "fig1d.eps")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "prism report: error: cannot write a figure as 'fig1d.eps'" in error
