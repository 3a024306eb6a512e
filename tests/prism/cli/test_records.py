"""Every record a command writes says what made it: the ``provenance`` block of each JSON record and tensor file.

The commands run on the tiny model, in this process; every JSON file they write is either a
record (it must carry the block) or one of the plain data files listed here (a table's JSON twin,
per-item rows, curves), whose folder holds the record.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from prism.cli import main
from probes.core.files import load_tensors
from probes.core.provenance import PACKAGES, ROOT, toolkit_version

PLAIN = {"items.json", "logit_lens.json", "adapter_config.json"}  # data files beside a record


def is_plain(path: Path) -> bool:
    """A data file: a table's JSON twin (a CSV beside it), per-item rows, curves, a peft config, a comparison's cell."""
    return path.with_suffix(".csv").is_file() or path.name in PLAIN or path.parent.name == "cells"


def checkout_commit() -> str | None:
    if not (ROOT / ".git").exists():
        return None
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def check_block(block: dict, command: list[str], model_directory: str | None) -> None:
    """The provenance block of a record written by ``prism COMMAND`` on the model in ``model_directory``."""
    assert block["toolkit"] == toolkit_version() and block["toolkit"]
    assert set(block["packages"]) == set(PACKAGES) and all(block["packages"].values())
    assert block["python"].count(".") == 2
    assert block["command"] == ["prism", *command]
    commit = checkout_commit()
    if commit is not None:
        assert block["git"]["commit"] == commit and isinstance(block["git"]["dirty"], bool)
    if model_directory is None:
        assert "model" not in block
        return
    model = block["model"]
    weights = hashlib.sha256((Path(model_directory) / "model.safetensors").read_bytes()).hexdigest()
    assert model["id"] == model["name"] == model_directory
    assert model["weights"] == {"model.safetensors": weights} and model["revision"] == f"sha256:{weights}"
    assert model["device"] == "cpu" and model["dtype"] == "float32" and model["attention"] in ("sdpa", "eager")


def check_folder(folder: Path, command: list[str], model_directory: str | None) -> list[str]:
    """Check every record under ``folder``; returns the records' paths, relative to it."""
    records = []
    for path in sorted(folder.rglob("*.json")):
        if is_plain(path):
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(record, dict) and "provenance" in record, f"{path} is a record without provenance"
        check_block(record["provenance"], command, model_directory)
        records.append(str(path.relative_to(folder)))
    for path in sorted(folder.rglob("*.safetensors")):
        if path.name.startswith("shard_") or path.name == "adapter_model.safetensors":
            continue  # an activation store's shards (its manifest is the record) and a peft adapter's weights
        _, metadata = load_tensors(path)
        check_block(metadata["provenance"], command, model_directory)
        records.append(str(path.relative_to(folder)))
    return records


def test_every_record_of_the_reading_and_measuring_commands_says_what_made_it(tiny_llama_directory, tmp_path, capsys):
    model = ["--model", tiny_llama_directory]
    commands = {
        "evaluate.json": ["evaluate", *model, "--dataset", "capitals", "-n", "3", "--persona", "math"],
        "record": ["record", *model, "--dataset", "capitals", "-n", "5", "--layers", "0,2", "--shard-size", "2"],
        "study": ["study", *model, "--budget", "smoke", "--tasks", "capitals", "--items", "3"],
        "probe": [
            "probe",
            *model,
            "--per-intent",
            "12",
            "--personas",
            "math,writing",
            "--persona-lengths",
            "min",
            "--persona-queries",
            "4",
            "--probes",
            "logistic,diff-means",
        ],
        "intervene": ["intervene", *model, "-n", "6", "--layers", "0,2", "--refusal-items", "0"],
    }
    found = {}
    for out, command in commands.items():
        command = [*command, "--out", str(tmp_path / out)]
        assert main(command) == 0, capsys.readouterr().err[-2000:]
        target = tmp_path / out
        if target.is_file():
            record = json.loads(target.read_text())
            check_block(record["provenance"], command, tiny_llama_directory)
            rows = record["items"]
            assert all(hashlib.sha256(row["prompt"].encode()).hexdigest() == row["prompt_sha256"] for row in rows)
            assert "math" in rows[0]["prompt"].lower() or rows[0]["persona"]
            found[out] = [out]
        else:
            found[out] = check_folder(target, command, tiny_llama_directory)
    assert found["record"] == ["manifest.json"]
    manifest = json.loads((tmp_path / "record" / "manifest.json").read_text())
    assert all(hashlib.sha256(p["text"].encode()).hexdigest() == p["sha256"] for p in manifest["prompts"])
    (study,) = [Path(path) for path in found["study"] if path.endswith("study.json")]
    assert "judge_consistency.json" in {Path(path).name for path in found["study"]}
    assert "summary.json" in found["probe"] and any(path.endswith("/manifest.json") for path in found["probe"])
    assert any(path.startswith("probes/") for path in found["probe"]) and any(
        "directions/" in p for p in found["probe"]
    )
    assert found["intervene"] == ["summary.json"]

    # prism report loads no model: its records say so, and name the command that rewrote them
    study_directory = tmp_path / "study" / study.parent
    assert main(["report", str(study_directory)]) == 0
    consistency = json.loads((study_directory / "judge_consistency.json").read_text())
    check_block(consistency["provenance"], ["report", str(study_directory)], None)


def test_a_secret_on_the_command_line_never_reaches_a_record(tiny_llama_directory, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_KEY", "sk-provenance-test-000000000000")
    command = [
        "study",
        "--model",
        tiny_llama_directory,
        "--budget",
        "smoke",
        "--tasks",
        "capitals",
        "--items",
        "2",
        "--judge-url",
        "http://127.0.0.1:9/v1?token=t0ken",
        "--judge-model",
        "m",
        "--judge-api-key-env",
        "PRISM_TEST_KEY",
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(command) == 0, capsys.readouterr().err[-2000:]
    (settings,) = (tmp_path / "s").glob("*/study.json")
    text = settings.read_text()
    assert "t0ken" not in text and "PRISM_TEST_KEY" not in text and "sk-provenance" not in text
    recorded = json.loads(text)["provenance"]["command"]
    assert recorded[recorded.index("--judge-api-key-env") + 1] == "***"
    assert recorded[recorded.index("--judge-url") + 1] == "http://127.0.0.1:9/v1?token=***"
    assert recorded[recorded.index("--items") + 1] == "2"  # other values stay as given
