"""Data-parallel runs: ``torchrun --nproc-per-node 2`` on CPUs (gloo) gives the outputs of one process.

Both sides run with one thread per process (``OMP_NUM_THREADS=1``, what torchrun sets), so the
numbers are bit-identical; with more threads a single process differs only by float rounding.
Both run the same command line, each in a folder of its own: records say which command made
them (their ``provenance``), so a run with another ``--out`` writes another record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from interventions.study.ledger import Ledger
from prism import pipeline
from prism.compare import COMPARE_BUDGETS, DATASETS, CompareBudget
from prism.distill import DistillConfig
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors
from probes.core.parallel import World

ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENVIRONMENT.pop(variable, None)


def prism(*arguments: str, processes: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``prism`` in a fresh process, or under torchrun with ``processes`` ranks."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*launcher, "-m", "prism.cli"] if processes > 1 else [sys.executable, "-m", "prism.cli"]
    return subprocess.run([*command, *arguments], cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)


def test_work_units_are_dealt_round_robin_and_cover_everything_once():
    units = list(range(11))
    shares = [World(rank, 3).share(units) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == units
    assert World().share(units) == units and World().is_main and not World().is_parallel


def test_a_one_process_world_gathers_broadcasts_and_agrees_locally():
    alone = World()
    assert alone.gather({"a": 1}) == [{"a": 1}] and alone.broadcast(5) == 5
    assert alone.on_main(lambda: 7) == 7
    with pytest.raises(ToolkitError, match="boom"), alone.together():
        raise ToolkitError("boom")


def test_a_ledger_reads_every_rank_file_and_merge_folds_them_into_one(tmp_path):
    path = tmp_path / "task.jsonl"
    Ledger(path).add([{"key": "a", "value": 0}])
    (tmp_path / "task.rank0.jsonl").write_text('{"key": "b", "value": 1}\n')  # left by an interrupted parallel run
    (tmp_path / "task.rank1.jsonl").write_text('{"key": "c", "value": 2}\n{"key": "a", "value": 0}\n')
    reader = Ledger(path)
    assert len(reader) == 3 and reader["c"]["value"] == 2  # an interrupted parallel run's work is kept
    reader.merge()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.jsonl"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["a", "b", "c"]  # each record once, in rank order


def folders(tmp_path: Path, *names: str) -> list[Path]:
    """Fresh working folders, one per run of the same command line."""
    made = [tmp_path / name for name in names]
    for folder in made:
        folder.mkdir()
    return made


@pytest.mark.parametrize("processes", [2])
def test_record_under_torchrun_writes_the_store_of_one_process(tmp_path, tiny_llama_directory, processes):
    arguments = [
        "record",
        "--model",
        tiny_llama_directory,
        "--dataset",
        "capitals",
        "-n",
        "10",
        "--shard-size",
        "3",
        "--out",
        "store",
    ]
    one, two = folders(tmp_path, "alone", "together")
    alone = prism(*arguments, cwd=one)
    together = prism(*arguments, processes=processes, cwd=two)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert together.returncode == 0, together.stderr[-2000:]
    assert together.stdout.count("recorded 10 prompts") == 1  # rank 0 speaks for the run
    files = sorted(path.name for path in (one / "store").iterdir())
    assert files == sorted(path.name for path in (two / "store").iterdir())  # no rank files left
    assert len([name for name in files if name.startswith("shard_")]) == 4
    for name in files:
        assert (one / "store" / name).read_bytes() == (two / "store" / name).read_bytes(), name
    assert load_file(two / "store" / "shard_00003.safetensors")["blocks.2.hook_out"].shape == (1, 64)
    made_by = json.loads((two / "store" / "manifest.json").read_text())["provenance"]
    assert made_by["command"] == ["prism", *arguments]  # torchrun's rank 0 records the command of one process
    assert made_by["model"]["name"] == tiny_llama_directory and made_by["model"]["device"] == "cpu"


def test_study_under_torchrun_gives_the_effects_of_one_process(tmp_path, tiny_llama_directory):
    arguments = [
        "study",
        "--model",
        tiny_llama_directory,
        "--budget",
        "smoke",
        "--tasks",
        "capitals",
        "--items",
        "12",
        "--batch-size",
        "4",
    ]
    alone = prism(*arguments, "--out", "alone", cwd=tmp_path)
    together = prism(*arguments, "--out", "together", processes=2, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert together.returncode == 0, together.stderr[-2000:]
    (one,), (two,) = (tmp_path / "alone").iterdir(), (tmp_path / "together").iterdir()
    for name in ("effects.csv", "cells.csv", "items.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert sorted(path.name for path in (two / "ledger").iterdir()) == ["capitals.jsonl"]  # rank files merged
    assert len(Ledger(two / "ledger" / "capitals.jsonl")) == len(Ledger(one / "ledger" / "capitals.jsonl")) > 12


def test_a_failing_rank_stops_every_rank_with_one_line_instead_of_hanging(tmp_path, tiny_llama_directory):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    failed = prism(
        "record",
        "--model",
        tiny_llama_directory,
        "--dataset",
        "capitals",
        "-n",
        "4",
        "--out",
        "occupied",
        processes=2,
        cwd=tmp_path,
    )
    assert failed.returncode != 0
    assert "prism record: error: occupied exists and is not an activation store" in failed.stderr
    assert "prism record (rank 1): error: another process of this run failed (rank 0: " in failed.stderr
    assert "/probes/" not in failed.stderr and "/prism/" not in failed.stderr  # only torchrun's own report of exit 2
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"


def test_bootstrap_and_compare_under_torchrun_give_the_samples_and_table_of_one_process(tmp_path, tiny_llama_directory):
    bootstrap = [
        "bootstrap",
        "--model",
        tiny_llama_directory,
        "--personas",
        "math,writing,critic",
        "--queries-per-persona",
        "3",
        "--answer-tokens",
        "8",
        "--batch-size",
        "2",
        "--out",
        "work",
    ]
    one, two, three = folders(tmp_path, "alone", "together", "trained")
    alone = prism(*bootstrap, cwd=one)
    together = prism(*bootstrap, processes=2, cwd=two)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert together.returncode == 0, together.stderr[-2000:]
    for name in ("samples.jsonl", "summary.json", "win_rates.csv"):
        assert (one / "work" / "bootstrap" / name).read_bytes() == (two / "work" / "bootstrap" / name).read_bytes()
    assert sorted(path.name for path in (two / "work" / "bootstrap").glob("*.jsonl*")) == [
        "ledger.jsonl",
        "samples.jsonl",
    ]

    budget = CompareBudget(**COMPARE_BUDGETS["smoke"].__dict__)
    pipeline.train(
        one / "work",
        labels="intents",
        per_intent=12,
        compare_budget=budget,
        max_block=1,
        distill_config=DistillConfig(epochs=1),
        progress=False,
    )
    shutil.copytree(one / "work", three / "work")
    # the long expert prompt does not fit the tiny model's context of 512 tokens
    systems = [system for system in pipeline.SYSTEMS if system != "expert prompt (long)"]
    compare = ["compare", "--budget", "smoke", "--out", "work", "--systems", ",".join(systems)]
    alone = prism(*compare, cwd=one)
    together = prism(*compare, processes=2, cwd=three)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert together.returncode == 0, together.stderr[-2000:]
    assert together.stdout.count("PRISM") == alone.stdout.count("PRISM") > 0  # one table, printed by rank 0
    cells = sorted(path.name for path in (one / "work" / "compare" / "cells").iterdir())
    assert len(cells) == len(DATASETS) * len(systems)
    for name in cells:
        assert (one / "work" / "compare" / "cells" / name).read_bytes() == (
            three / "work" / "compare" / "cells" / name
        ).read_bytes(), name
    summary = json.loads((one / "work" / "compare" / "summary.json").read_text())
    assert summary == json.loads((three / "work" / "compare" / "summary.json").read_text())
    assert summary["provenance"]["command"] == ["prism", *compare]
    work = one / "work"
    blocks = {
        path.relative_to(work).as_posix(): json.loads(path.read_text())["provenance"]
        for path in [
            work / "prism.json",
            work / "bootstrap" / "summary.json",
            work / "train.json",
            work / "baselines" / "self_classify.json",
            *work.glob("adapters/*/training.json"),
        ]
    }
    blocks.update(
        {
            path.relative_to(work).as_posix(): load_tensors(path)[1]["provenance"]
            for path in [
                work / "gate" / "gate.safetensors",
                work / "steering.safetensors",
                work / "baselines" / "embedding.safetensors",
            ]
        }
    )
    assert len(blocks) == 9 and blocks["bootstrap/summary.json"]["command"] == ["prism", *bootstrap]
    # prism.json too: it is written once the model has loaded, so a model that fails to load claims nothing
    for name, block in blocks.items():
        assert block["model"]["name"] == tiny_llama_directory and block["model"]["revision"].startswith("sha256:"), name
        assert block["model"]["dtype"] == "float32" and block["packages"]["peft"], name
