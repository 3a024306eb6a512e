"""The PRISM working directory object: every path in one place, the model it records."""

import json
import os
from pathlib import Path

import pytest

from interventions.measure.tasks import TASKS
from prism.compare import DATASETS, evaluation_items, resolve_budget
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.personas import builtin_personas, persona_library, user_personas


def test_the_directory_knows_its_layout(tmp_path):
    work = PrismDirectory(tmp_path / "p")
    root = tmp_path / "p"
    assert (
        work == PrismDirectory(str(root)) == PrismDirectory(work)
        and Path(work) == root
        and os.fspath(work) == str(root)
    )
    expected = {
        work.manifest: "prism.json",
        work.bootstrap_ledger: "bootstrap/ledger.jsonl",
        work.samples: "bootstrap/samples.jsonl",
        work.bootstrap_summary: "bootstrap/summary.json",
        work.win_rates: "bootstrap/win_rates.csv",
        work.gate: "gate/gate.safetensors",
        work.gate_sweep: "gate/sweep.csv",
        work.gate_sweep_figure: "gate/sweep.png",
        work.gate_features: "gate/features",
        work.sample_features: "gate/sample_features",
        work.adapter("prism"): "adapters/prism",
        work.adapter("sft"): "adapters/sft",
        work.steering: "steering.safetensors",
        work.embedding_router: "baselines/embedding.safetensors",
        work.self_classify: "baselines/self_classify.json",
        work.train_summary: "train.json",
        work.cell("probe -> steering", "capitals"): "compare/cells/probe----steering__capitals.json",
        work.compare_table: "compare/table.csv",
        work.route_rates: "compare/route_rates.csv",
        work.category_routing: "compare/category_routing.csv",
        work.compare_summary: "compare/summary.json",
        work.report: "compare/report.md",
        work.figure("table1"): "compare/figures/table1.png",
        work.knowledge_table: "compare/knowledge.csv",
        work.router_rates: "compare/router_rates.csv",
    }
    for path, relative in expected.items():
        assert path == root / relative


def test_the_directory_records_its_model_and_refuses_another(tmp_path):
    work = PrismDirectory(tmp_path)
    with pytest.raises(ToolkitError, match="not a PRISM directory"):
        work.model_name()
    assert work.model_name("tiny", create=True) == "tiny"
    assert not work.manifest.exists()  # nothing is claimed before the model has loaded
    work.record_model("tiny")
    recorded = json.loads(work.manifest.read_text())
    assert recorded["model"] == "tiny" and set(recorded) == {"model", "provenance"}  # and what made the directory
    assert (
        recorded["provenance"]["packages"]["torch"] and "model" not in recorded["provenance"]
    )  # none loaded as "tiny"
    assert work.model_name() == work.model_name("tiny") == "tiny"
    with pytest.raises(ToolkitError, match="bootstrapped with model 'tiny', not 'default'"):
        work.model_name("default")
    with pytest.raises(ToolkitError, match="no trained gate: run `prism train"):
        work.require_gate()
    work.gate.parent.mkdir(parents=True)
    work.gate.write_bytes(b"x")
    work.adapter("prism").mkdir(parents=True)
    (work.adapter("prism") / "adapter_model.safetensors").write_bytes(b"y")
    assert work.require_gate() == work.gate
    assert work.trained_files() == sorted(
        [work.gate, work.steering, work.adapter("prism") / "adapter_model.safetensors"]
    )


def test_the_comparison_samples_the_registered_tasks():
    plan = resolve_budget("smoke")
    items = evaluation_items(plan, seed=0)
    assert list(items) == list(DATASETS)
    for dataset in DATASETS:
        assert items[dataset] == TASKS[dataset].load_items(plan.size(dataset), 0)
    assert {item.subcategory for item in items["harmbench"]} == {"standard"}


@pytest.mark.parametrize("content", ['{"model": "tiny"', "[]", '{"model": 3}', b"\xff\xfe"])
def test_a_damaged_prism_json_fails_in_one_line(tmp_path, content):
    work = PrismDirectory(tmp_path)
    if isinstance(content, bytes):
        work.manifest.write_bytes(content)
    else:
        work.manifest.write_text(content)
    with pytest.raises(ToolkitError, match="prism.json is damaged") as caught:
        work.model_name("tiny", create=True)
    assert "\n" not in str(caught.value)


def test_the_directory_keeps_the_users_personas_and_refuses_others(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(
        json.dumps(
            {
                "personas": [
                    {"name": "pirate", "min": "Arr, you are a pirate captain.", "category": "Ships"},
                    {"name": "humanities", "min": "You are my own humanist."},
                ]
            }
        )
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"personas": [{"name": "pirate", "min": "You are a quiet pirate."}]}))
    work = PrismDirectory(tmp_path / "p")
    assert work.persona_library() == builtin_personas()  # not bootstrapped yet: the built-in personas
    assert work.persona_library(persona_library(mine))["pirate"].text("min") == "Arr, you are a pirate captain."
    work.record_model("tiny", persona_library(mine))
    stored = json.loads(work.manifest.read_text())["personas"]
    assert {entry["name"] for entry in stored} == {"pirate", "humanities"}
    library = PrismDirectory(tmp_path / "p").persona_library()  # read back without the file
    assert user_personas(library) == user_personas(persona_library(mine))
    assert (
        library["humanities"].text("min") == "You are my own humanist."
        and library["math"] == builtin_personas()["math"]
    )
    assert work.persona_library(persona_library(mine)) == library  # the same file again is accepted
    for requested, message in (
        (
            other,
            r"user personas humanities, pirate \(from .*prism.json\), not user personas pirate "
            r"\(from .*other.json\): use another --out",
        ),
        (None, "not the built-in personas only"),
    ):
        with pytest.raises(ToolkitError, match=message) as caught:
            work.persona_library(persona_library(requested))
        assert "\n" not in str(caught.value)


def test_a_directory_without_user_personas_records_none_and_refuses_a_file(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"personas": [{"name": "pirate", "min": "Arr."}]}))
    work = PrismDirectory(tmp_path / "p")
    work.record_model("tiny", persona_library())
    assert "personas" not in json.loads(work.manifest.read_text()) and work.persona_library() == builtin_personas()
    with pytest.raises(ToolkitError, match=r"bootstrapped with the built-in personas only, not user personas pirate"):
        work.persona_library(persona_library(mine))
