"""``--wandb``: a finished command's options, tables and figures in a Weights & Biases run (offline, on disk)."""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest

import prism.cli.study
from prism.cli.shell import main
from prism.cli.tracking import read_csv, run_config, track_run, written_files
from probes.core.models import model_slug

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

SECRET = "sk-abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """Weights & Biases offline, silent, writing its runs under ``tmp_path/wandb``; gives a function that returns the
    runs' folders once wandb has written them out (as it does when a ``prism`` process exits)."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")

    def runs() -> list[Path]:
        wandb.teardown()  # waits for wandb's service to write the runs; the next run reads its own environment
        return sorted((tmp_path / "wandb").glob("offline-run-*"))

    yield runs
    wandb.teardown()


def _results(out: Path) -> None:
    """What a command leaves: a table (CSV with its JSON twin), a figure (PNG with its PDF) and a report."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "scores.csv").write_text("layer,auc,note\n0,0.5,chance\n3,0.97,\n")
    (out / "scores.json").write_text("[]")
    figure = plt.figure(figsize=(1, 1))
    figure.savefig(out / "figures" / "curve.png")
    figure.savefig(out / "figures" / "curve.pdf")
    plt.close(figure)
    (out / "report.md").write_text("# report\n")


def _logged(run: Path) -> tuple[bytes, list[str]]:
    """An offline run's records (config and history, as bytes) and its media files' paths."""
    records = b"".join(path.read_bytes() for path in run.glob("run-*.wandb"))
    media = sorted(
        path.relative_to(run / "files" / "media").as_posix() for path in (run / "files" / "media").rglob("*.*")
    )
    return records, media


def test_a_run_holds_the_options_with_secrets_masked_and_every_table_and_figure(offline, tmp_path):
    out = tmp_path / "out"
    _results(out)
    args = argparse.Namespace(
        command="probe",
        wandb="prism-tests",
        out=out,
        seed=3,
        layers=[0, 3],
        quiet=False,
        judge_api_key_env="MY_KEY_VARIABLE",
        judge_url=f"http://alice:pw@127.0.0.1/v1?key={SECRET}",
        checks=(print,),
        library={"math": object()},
    )
    where = track_run(args)
    (run,) = offline()
    assert Path(where) == run
    records, media = _logged(run)
    assert [name.split("_")[0] for name in media] == ["images/figures/curve.png", "table/scores.csv"]
    table = json.loads(next((run / "files" / "media" / "table").glob("*.table.json")).read_text())
    assert table["columns"] == ["layer", "auc", "note"] and table["data"] == [[0, 0.5, "chance"], [3, 0.97, None]]
    for shown in (b"prism-tests", b"probe", b"layers", b"command_line", b"judge_api_key_env"):
        assert shown in records
    for hidden in (b"MY_KEY_VARIABLE", SECRET.encode(), b"alice", b"library", b"checks"):
        assert hidden not in records


def test_the_config_keeps_plain_values_and_masks_secrets():
    args = argparse.Namespace(
        command="study",
        out=Path("runs/x"),
        models=["a", Path("b")],
        hf_token="t0ken",
        judge_url="https://u:p@host/v1",
        checks=(print,),
        condition=object(),
        items=None,
    )
    config = run_config(args)
    assert config["out"] == "runs/x" and config["models"] == ["a", "b"] and config["items"] is None
    assert config["hf_token"] == "***" and config["judge_url"] == "https://host/v1"
    assert "checks" not in config and "condition" not in config and config["command_line"]


def test_only_the_files_a_command_wrote_are_logged(tmp_path):
    _results(tmp_path)
    old = time.time() - 3600
    os.utime(tmp_path / "scores.csv", (old, old))  # left by an earlier command
    tables, figures = written_files(tmp_path, since=time.time() - 60)
    assert tables == {} and figures == {"figures/curve.png": tmp_path / "figures" / "curve.png"}
    assert set(written_files(tmp_path)[0]) == {"scores.csv"} and read_csv(tmp_path / "report.md")[1] == []


def test_prism_study_wandb_logs_what_the_study_wrote(offline, tmp_path, monkeypatch, capsys):
    personas = tmp_path / "mine.json"
    personas.write_text(json.dumps({"personas": [{"name": "pirate", "min": "You are a pirate."}]}))
    seen = {}

    def fake_study(directory, model, tokenizer, **options):
        seen.update(options)
        _results(directory)
        return SimpleNamespace(report=directory / "report.md")

    monkeypatch.setattr(prism.cli.study, "run_study", fake_study)
    out = tmp_path / "study"
    assert (
        main(
            [
                "study",
                "--tasks",
                "capitals",
                "--personas-file",
                str(personas),
                "--out",
                str(out),
                "--quiet",
                "--wandb",
                "prism-tests",
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert "pirate" in seen["personas"] and seen["progress"] is False
    (run,) = offline()
    records, media = _logged(run)
    assert b"--personas-file" in records and b"prism-tests" in records
    assert any(name.startswith(f"table/{model_slug('default')}/scores.csv") for name in media)
    assert any(name.startswith(f"images/{model_slug('default')}/figures/curve.png") for name in media)
    assert capsys.readouterr().err == ""  # --quiet: the study's lines and the run's address are info lines


def test_a_missing_wandb_is_one_line_before_the_command_runs(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "wandb" else real(name, *rest))
    monkeypatch.setattr(prism.cli.study, "run_study", lambda *a, **k: pytest.fail("the study ran without wandb"))
    assert main(["study", "--out", str(tmp_path / "s"), "--wandb", "p"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "prism study: error: --wandb needs the package 'wandb', which is not installed: pip install wandb"
    ]
