import json
import subprocess
import sys

import pytest

from prism.cli import COMMANDS, main
from probes.store import ActivationStore


@pytest.fixture()
def knowledge_file(tmp_path):
    path = tmp_path / "facts.jsonl"
    rows = [
        {"id": f"f{i}", "prompt": f"Fact question {i}?", "category": "geo" if i % 2 else "sci",
         "choices": ["alpha", "beta", "gamma"], "answer": i % 3}
        for i in range(6)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_help_lists_every_subcommand_with_a_description():
    output = subprocess.run([sys.executable, "-m", "prism.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command, description in COMMANDS.items():
        assert command in output and description[:30] in output


def test_evaluate_writes_per_item_json_with_a_confidence_interval(tiny_llama_directory, knowledge_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["evaluate", "--model", tiny_llama_directory, "--dataset", str(knowledge_file), "--persona", "math",
                 "--length", "short", "--placement", "user", "-n", "4", "--scoring", "cloze", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["condition"] == {"persona": "math", "length": "short", "placement": "user", "base_system": "empty"}
    assert len(result["items"]) == 4 and result["summary"]["n"] == 4
    assert {"mean", "low", "high"} <= set(result["summary"]) and result["chance"] == pytest.approx(1 / 3)
    assert "accuracy" in capsys.readouterr().out


def test_record_command_writes_a_store(tiny_llama_directory, knowledge_file, tmp_path):
    out = tmp_path / "store"
    code = main(["record", "--model", tiny_llama_directory, "--dataset", str(knowledge_file), "--layers", "0,2",
                 "--positions", "mean", "--persona", "random", "--out", str(out)])
    assert code == 0
    store = ActivationStore(out)
    assert store.hooks == ["blocks.0.hook_out", "blocks.2.hook_out"] and len(store) == 6
    assert all(prompt["persona"] not in (None, "random") for prompt in store.prompts)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--dataset", "gsm8k"], "unknown dataset 'gsm8k'"),
        (["evaluate", "--dataset", "mtbench", "--persona", "astronaut"], "unknown persona 'astronaut'"),
        (["evaluate", "--dataset", "mtbench", "--model", "not a model!"], "unknown model"),
        (["evaluate", "--dataset", "mtbench", "-n", "0"], "sample size must be positive"),
        (["record", "--dataset", "mtbench", "--layers", "0,x", "--out", "{tmp}/s"], "--layers takes comma-separated integers"),
        (["record", "--dataset", "mtbench", "-n", "2", "--layers", "99", "--out", "{tmp}/s"], "layer 99 does not exist"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(argv, message, tmp_path, tiny_llama_directory, capsys):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if "--model" not in argv:
        argv += ["--model", tiny_llama_directory]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "s").exists()


def test_a_failed_evaluation_leaves_the_previous_result_intact(tiny_llama_directory, tmp_path, capsys):
    out = tmp_path / "result.json"
    out.write_text('{"earlier": true}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert main(["evaluate", "--model", tiny_llama_directory, "--dataset", str(bad), "--out", str(out)]) == 2
    assert "line 2: empty prompt" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"earlier": True}
    assert {path.name for path in tmp_path.iterdir()} == {"result.json", "bad.jsonl"}
