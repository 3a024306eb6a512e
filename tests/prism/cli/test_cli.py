import json
import subprocess
import sys
from pathlib import Path

import pytest

import prism.cli.demo
import prism.cli.interventions
import prism.cli.options
import prism.cli.probes
import prism.pipeline
import probes.core.models
import probes.study
from interventions.study.report import StudySummary
from interventions.summary import InterventionSummary, Patch
from prism.cli import COMMANDS, build_parser, load_command, main, run_demo
from prism.cli.router import distill_config, run_train
from prism.compare import format_table
from prism.distill import DistillConfig
from prism.summary import BootstrapSummary, CompareSummary, TrainSummary, WinRate
from prism.train import _check_options as check_options
from probes.core.errors import ToolkitError
from probes.core.locking import LOCK_NAME, directory_lock
from probes.core.personas import persona_library
from probes.core.prompts import Condition
from probes.core.stats import Estimate
from probes.store import ActivationStore
from probes.study import persona_conditions
from probes.summary import EarliestLayer, ProbeSummary
from tests.directory_holder import held_elsewhere, snapshot


@pytest.fixture()
def knowledge_file(tmp_path):
    path = tmp_path / "facts.jsonl"
    rows = [
        {
            "id": f"f{i}",
            "prompt": f"Fact question {i}?",
            "category": "geo" if i % 2 else "sci",
            "choices": ["alpha", "beta", "gamma"],
            "answer": i % 3,
        }
        for i in range(6)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_help_lists_every_subcommand_with_a_description():
    output = subprocess.run(
        [sys.executable, "-m", "prism.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name, command in COMMANDS.items():
        assert name in output and command.help[:30] in output


def test_evaluate_writes_per_item_json_with_a_confidence_interval(
    tiny_llama_directory, knowledge_file, tmp_path, capsys
):
    out = tmp_path / "result.json"
    code = main(
        [
            "evaluate",
            "--model",
            tiny_llama_directory,
            "--dataset",
            str(knowledge_file),
            "--persona",
            "math",
            "--length",
            "short",
            "--placement",
            "user",
            "-n",
            "4",
            "--scoring",
            "cloze",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["condition"] == {"persona": "math", "length": "short", "placement": "user", "base_system": "empty"}
    assert len(result["items"]) == 4 and result["summary"]["n"] == 4
    assert {"mean", "low", "high"} <= set(result["summary"]) and result["chance"] == pytest.approx(1 / 3)
    assert "accuracy" in capsys.readouterr().out


def test_record_command_writes_a_store(tiny_llama_directory, knowledge_file, tmp_path):
    out = tmp_path / "store"
    code = main(
        [
            "record",
            "--model",
            tiny_llama_directory,
            "--dataset",
            str(knowledge_file),
            "--layers",
            "0,2",
            "--positions",
            "mean",
            "--persona",
            "random",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    store = ActivationStore(out)
    assert store.hooks == ["blocks.0.hook_out", "blocks.2.hook_out"] and len(store) == 6
    assert all(prompt["persona"] not in (None, "random") for prompt in store.prompts)


def test_record_takes_a_device_map(tiny_llama_directory, knowledge_file, tmp_path):
    """On this CPU-only machine ``--device-map auto`` puts every block on the CPU through accelerate's path."""
    assert (
        main(
            [
                "record",
                "--model",
                tiny_llama_directory,
                "--dataset",
                str(knowledge_file),
                "-n",
                "2",
                "--layers",
                "0,2",
                "--device-map",
                "auto",
                "--out",
                str(tmp_path / "mapped"),
            ]
        )
        == 0
    )
    manifest = ActivationStore(tmp_path / "mapped").manifest
    assert manifest["device_map"] == "auto" and manifest["attention"] == "sdpa" and manifest["device"] == "cpu"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--device-map", "everywhere"], "invalid choice: 'everywhere'"),
        (["record", "--dataset", "mmlu", "--out", "s", "--device-map", "everywhere"], "invalid choice: 'everywhere'"),
    ],
)
def test_unknown_device_maps_fail_while_parsing(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", "--dataset", "mtbench", "-n", "1", "--device-map", "auto", "--device", "cpu"],
            "give --device-map or --device cpu, not both",
        ),
        (["evaluate", "--dataset", "gsm8k"], "unknown dataset 'gsm8k'"),
        (["evaluate", "--dataset", "mtbench", "--persona", "astronaut"], "unknown persona 'astronaut'"),
        (["evaluate", "--dataset", "mtbench", "--model", "not a model!"], "unknown model"),
        (["evaluate", "--dataset", "mtbench", "-n", "0"], "sample size must be positive"),
        (
            ["record", "--dataset", "mtbench", "--layers", "0,x", "--out", "{tmp}/s"],
            "--layers takes comma-separated integers",
        ),
        (
            ["record", "--dataset", "mtbench", "-n", "2", "--layers", "99", "--out", "{tmp}/s"],
            "layer 99 does not exist",
        ),
        (
            ["record", "--dataset", "mtbench", "-n", "2", "--hooks", "blocks.0.attn.hook_pattern", "--out", "{tmp}/s"],
            "blocks.0.attn.hook_pattern gives activations of shape (2, 4, ",
        ),
        (["study", "--formats", "plain,xml", "--out", "{tmp}/s"], "unknown prompt format 'xml': use any of plain, qa"),
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


# --- the registry, the shared options and the one persona check ------------------------------

ALL_COMMANDS = {
    "demo",
    "evaluate",
    "record",
    "personas",
    "study",
    "report",
    "probe",
    "intervene",
    "bootstrap",
    "train",
    "route",
    "compare",
    "serve",
}


def test_the_registry_holds_every_command_and_each_help_works(capsys):
    assert set(COMMANDS) == ALL_COMMANDS and all(load_command(name).name == name for name in COMMANDS)
    pages = {}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit:
            main([name, "--help"])
        assert exit.value.code == 0
        pages[name] = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
        assert pages[name].startswith(f"usage: prism {name}") and "%%" not in pages[name]
    assert "write per-item JSON with a 95% CI" in pages["evaluate"]  # a % in help text is written as it is
    for name in ("train", "route", "compare"):
        assert "--model MODEL" not in pages[name] and "recorded in the PRISM working directory" in pages[name]
    for name in ALL_COMMANDS - {"train", "route", "compare", "personas", "report"}:
        assert "--model MODEL" in pages[name]


def test_model_has_one_shape_and_study_repeats_it():
    parser = build_parser()
    for argv in (
        ["demo"],
        ["probe"],
        ["intervene"],
        ["bootstrap"],
        ["evaluate", "--dataset", "mmlu"],
        ["record", "--dataset", "mmlu", "--out", "s"],
    ):
        assert parser.parse_args(argv).model == "default"
    assert parser.parse_args(["study"]).models is None
    assert parser.parse_args(["study", "--model", "a", "--model", "b"]).models == ["a", "b"]


def test_train_options_make_the_distillation_settings():
    parser = build_parser()
    default = distill_config(parser.parse_args(["train"]))
    assert default == DistillConfig(seed=default.seed)
    chosen = distill_config(
        parser.parse_args(["train", "--teacher-length", "long", "--rank", "8", "--epochs", "6", "--retain-weight", "0"])
    )
    assert (chosen.persona_length, chosen.rank, chosen.alpha, chosen.epochs, chosen.retain_weight) == (
        "long",
        8,
        16,
        6,
        0,
    )
    with pytest.raises(ToolkitError, match="at least 1"):
        distill_config(parser.parse_args(["train", "--epochs", "0"]))
    with pytest.raises(ToolkitError, match="unknown persona length 'longer'"):
        DistillConfig(persona_length="longer")


def test_train_passes_the_exam_checks_size_and_refuses_a_negative_one(monkeypatch):
    parser = build_parser()
    called = {}
    monkeypatch.setattr(prism.pipeline, "train", lambda *a, **k: called.update(k))
    for argv, stems in ((["train"], 200), (["train", "--exam-stems", "0"], 0)):
        args = parser.parse_args(argv)
        args.progress = False  # set by main
        run_train(args)
        assert called["exam_stems"] == stems
    with pytest.raises(ToolkitError, match="--exam-stems counts MMLU stems: give 0 .* got -1"):
        check_options(30, 3, None, None, None, "intents", (), -1)


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Any model load fails the test: what it checks must be refused before one."""

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    for module in (probes.core.models, prism.cli.options, prism.pipeline):
        monkeypatch.setattr(module, "load_model", no_model)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["intervene", "--persona", "expert"], "--persona expert does not apply here: give a persona name or 'random'"),
        (["intervene", "--persona", "none"], "--persona none does not apply here"),
        (["intervene", "--persona", "astronaut"], "unknown persona 'astronaut'"),
        (["evaluate", "--dataset", "mtbench", "--persona", "nosuch"], "unknown persona 'nosuch'"),
        (["record", "--dataset", "mtbench", "--persona", "nosuch", "--out", "{tmp}/s"], "unknown persona 'nosuch'"),
        (["evaluate", "--dataset", "mtbench", "--personas-file", "{tmp}/missing.json"], "missing.json"),
        (["study", "--personas-file", "{tmp}/missing.json", "--out", "{tmp}/s"], "no persona file at"),
        (["probe", "--personas-file", "{tmp}/missing.json", "--out", "{tmp}/s"], "no persona file at"),
        (["bootstrap", "--personas-file", "{tmp}/missing.json", "--out", "{tmp}/s"], "no persona file at"),
        (["intervene", "--personas-file", "{tmp}/missing.json", "--out", "{tmp}/s"], "no persona file at"),
        (["probe", "--personas", "math,pirate", "--out", "{tmp}/s"], "unknown persona 'pirate'"),
        (["bootstrap", "--personas", "math,pirate", "--out", "{tmp}/s"], "unknown persona 'pirate'"),
        (["intervene", "--persona", "pirate", "--out", "{tmp}/s"], "unknown persona 'pirate'"),
    ],
)
def test_a_bad_persona_fails_in_one_line_before_any_model_loads(argv, message, tmp_path, no_model_loads, capsys):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"prism {argv[0]}: error: ") and message in errors[0]
    assert not (tmp_path / "s").exists()


@pytest.fixture()
def pirate_file(tmp_path):
    """A user's persona library: a pirate at two lengths."""
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "personas": [
                    {
                        "name": "pirate",
                        "min": "Arr, you are a pirate captain.",
                        "long": "Arr, you are a pirate captain who has sailed every sea.",
                    }
                ]
            }
        )
    )
    return path


def test_probe_bootstrap_and_intervene_take_a_users_personas_from_a_file(pirate_file, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(prism.cli.probes, "run_probe_study", lambda out, model, tokenizer, **k: seen.update(probe=k))
    monkeypatch.setattr(prism.pipeline, "bootstrap", lambda out, **k: seen.update(bootstrap=k))
    monkeypatch.setattr(
        prism.cli.interventions, "run_interventions", lambda out, model, tokenizer, **k: seen.update(intervene=k)
    )
    file = ["--personas-file", str(pirate_file), "--out", str(tmp_path / "out")]
    assert main(["probe", "--personas", "math,pirate", "--persona-lengths", "min,long", *file]) == 0
    probe = seen.pop("probe")
    assert persona_conditions(probe["personas"], probe["persona_lengths"], probe["library"]) == [
        Condition(name, length, "system") for name in ("math", "pirate") for length in ("min", "long")
    ]
    assert main(["bootstrap", "--personas", "pirate", *file]) == 0
    bootstrap = seen.pop("bootstrap")
    assert (
        bootstrap["personas"] == ["pirate"]
        and bootstrap["library"]["pirate"].text("min") == "Arr, you are a pirate captain."
    )
    assert main(["bootstrap", "--out", str(tmp_path / "out")]) == 0
    assert seen.pop("bootstrap")["library"] is None  # no file: the directory's own personas
    assert main(["intervene", "--persona", "pirate", *file]) == 0
    intervene = seen.pop("intervene")
    assert intervene["persona"] == Condition("pirate", "long") and "pirate" in intervene["personas"]


def test_the_probes_persona_conditions_come_from_the_library(pirate_file):
    library = persona_library(pirate_file)
    assert len(persona_conditions(None, ["min"], library)) == 13  # the twelve built-in personas and the pirate
    with pytest.raises(ToolkitError, match="unknown persona 'pirate'"):
        persona_conditions(["pirate"], ["min"])  # not built in
    with pytest.raises(
        ToolkitError, match=r"persona 'pirate' has no 'short' text \(it has: min, long\).*--persona-lengths"
    ):
        persona_conditions(["math", "pirate"], ["min", "short"], library)


# --- typed summaries: what the commands and the demo print ----------------------------------


def summaries(tmp_path: Path) -> dict:
    """One of each summary, built from estimates as the pipeline builds them."""
    row = {"system": "base", "margin": 1.25, "margin_low": 1.0, "margin_high": 1.5}
    for column, value in (("capitals", 80.0), ("harmbench", 40.0), ("mtbench", 55.0), ("overall", 58.3)):
        row.update({column: value, f"{column}_low": value - 5, f"{column}_high": value + 5, f"{column}_n": 8})
    return {
        "study": StudySummary(
            tmp_path / "study",
            "m",
            [],
            [],
            [],
            {},
            (
                "- **Placement**: the long persona moved the metric more from the system prompt in 2 of 3 "
                "task-metric pairs.",
                "  - capitals, expert persona: min -0.10 [-0.30, +0.05] (n=8) nats.",
            ),
        ),
        "probe": ProbeSummary(
            tmp_path / "probe",
            "m",
            144,
            "0123abcd",
            {
                "knowledge-vs-generation/mean": EarliestLayer(3, Estimate(0.912, 0.851, 0.968, 48)),
                "knowledge-vs-generation/last": None,
                "harmful-vs-benign/mean": EarliestLayer(1, Estimate(0.99, 0.97, 1.0, 48)),
                "intent/last": None,
            },
        ),
        "intervene": InterventionSummary(
            tmp_path / "intervene",
            "m",
            "random/long/system[empty]",
            Estimate(-0.52, -0.81, -0.23, 16),
            Patch(4, "final", Estimate(0.75, 0.55, 0.9, 16)),
        ),
        "bootstrap": BootstrapSummary(
            WinRate(Estimate(0.4, 0.25, 0.55, 24), 0.5), {"math": WinRate(Estimate(0.5, 0.0, 1.0, 2), 1.0)}
        ),
        "train": TrainSummary(
            1,
            "last",
            "logistic",
            0.5123,
            0.45,
            Estimate(0.9, 0.8, 0.97, 30),
            {"embedding": Estimate(0.85, 0.7, 0.95, 30), "self_classify": Estimate(0.5, 0.3, 0.7, 30)},
        ),
        "compare": CompareSummary(tmp_path / "prism" / "compare", (row,)),
    }


def test_typed_summaries_format_into_the_printed_lines(tmp_path):
    made = summaries(tmp_path)
    study = made["study"]
    assert study.format() == "\n".join(study.findings) and study.report == tmp_path / "study" / "report.md"
    assert made["probe"].format(["knowledge-vs-generation/mean", "knowledge-vs-generation/last"]) == (
        "held-out knowledge-vs-generation/mean: layer 3, AUC 0.91 [0.85, 0.97] (n=48)\n"
        "held-out knowledge-vs-generation/last: not above the controls at any layer"
    )
    assert len(made["probe"].lines()) == 4  # prism probe prints every target
    assert made["intervene"].lines() == [
        "persona effect on the capitals answer margin: -0.52 [-0.81, -0.23] (n=16)",
        "decisive patch: block 4, final tokens: +0.75 [+0.55, +0.90] of the effect recovered",
    ]
    assert made["intervene"].n == 16
    assert made["bootstrap"].lines() == [
        "24 queries; the persona won both orders on 40% [25%, 55%]; the two orders agreed on 50%",
        "  math            n=  2  win rate 50% [0%, 100%]",
    ]
    assert made["train"].lines() == [
        "gate: block 1, last token(s), logistic; AUC on unseen sources 0.90 [0.80, 0.97] (n=30); threshold 0.512 "
        "routes 45%",
        "embedding router on the same sources: AUC 0.85 [0.70, 0.95]",
        "self-classify router on the same sources: AUC 0.50 [0.30, 0.70]",
    ]
    fidelity = {
        **Estimate(0.53, 0.5, 0.57, 96).columns("fidelity"),
        "n": 96,
        "kl_teacher_base": 0.161,
        "kl_teacher_student": 0.075,
        **Estimate(0.33, 0.25, 0.4, 96).columns("other_persona_fidelity"),
    }
    trained = TrainSummary(
        1,
        "last",
        "logistic",
        0.5,
        0.45,
        Estimate(0.9, 0.8, 0.97, 30),
        {},
        record={"adapters": {"prism": {"teacher_length": "long", "fidelity": fidelity}}},
    )
    assert trained.lines()[-1] == (
        "adapter 'prism': fidelity to the long persona 0.53 [0.50, 0.57] (n=96) on held-out "
        "persona-path samples (persona effect 0.161 nats/token, 0.075 left; another persona's "
        "prompt: 0.33 [0.25, 0.40])"
    )
    compared = made["compare"]
    assert str(compared) == format_table([compared.table[0]])
    assert "| base | 80.0 [75.0, 85.0] | 1.25 [1.00, 1.50] |" in str(compared)
    assert compared.score("base", "capitals") == Estimate(80.0, 75.0, 85.0, 8)


def test_summaries_read_back_the_records_written_to_disk(tmp_path):
    record = {
        "model": "m",
        "n_queries": 10,
        "data": "ab",
        "saved": [],
        "earliest": {
            "intent/last": {"layer": 2, "auc": 0.8, "auc_low": 0.7, "auc_high": 0.9, "n": 20, "controls": {}},
            "intent/mean": None,
        },
    }
    probe = ProbeSummary.from_record(tmp_path, record)
    assert probe.earliest == {"intent/last": EarliestLayer(2, Estimate(0.8, 0.7, 0.9, 20)), "intent/mean": None}
    assert probe.record is record
    record = {
        "model": "m",
        "persona": "p",
        "n": 12,
        "effect": Estimate(-0.4, -0.6, -0.2, 12).to_dict(),
        "best_patch": {"layer": 3, "group": "query", "fraction": 0.6, "low": 0.5, "high": 0.7, "n": 12, "margin": 1.0},
    }
    causal = InterventionSummary.from_record(tmp_path, record)
    assert causal.effect == Estimate(-0.4, -0.6, -0.2, 12)
    assert causal.best_patch == Patch(3, "query", Estimate(0.6, 0.5, 0.7, 12))


def test_the_demo_prints_each_step_through_its_summary(tmp_path, monkeypatch, capsys):
    made = summaries(tmp_path)
    steps = {
        "run_study": lambda *a, **k: made["study"],
        "run_probe_study": lambda *a, **k: made["probe"],
        "run_interventions": lambda *a, **k: made["intervene"],
        "_spread_layers": lambda *a, **k: [0, 1],
    }
    for name, step in steps.items():
        monkeypatch.setattr(prism.cli.demo, name, step)
    called = {}
    for name in ("bootstrap", "train", "compare"):
        monkeypatch.setattr(prism.pipeline, name, lambda *a, name=name, **k: called.update({name: k}) or made[name])
    assert run_demo(tmp_path) == tmp_path
    printed = capsys.readouterr().out
    assert called["train"]["distill_config"].persona_length == "long"  # the teacher that carries the persona
    systems = called["compare"]["systems"]
    assert "expert prompt (long)" in systems and "MiniLM -> LoRA" not in systems
    assert "What the comparison shows" in printed and "--teacher-length long" in printed
    for text in (
        made["study"].format(),
        made["probe"].format(prism.cli.demo.PROBE_TARGETS),
        made["intervene"].format(),
        made["bootstrap"].headline(),
        made["train"].format(),
        made["compare"].format(),
    ):
        assert text in printed
    assert "not above the controls" in printed and "intent/last" not in printed  # only the demo's targets


def test_train_passes_the_distillation_options(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(prism.pipeline, "train", lambda *a, distill_config, **k: seen.update(config=distill_config))
    main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--rank",
            "4",
            "--distill-batch-size",
            "8",
            "--distill-micro-batch-size",
            "2",
            "--gradient-checkpointing",
            "--learning-rate",
            "3e-4",
            "--retain-weight",
            "0.5",
        ]
    )
    config = seen.pop("config")
    assert (config.rank, config.alpha, config.batch_size, config.micro_batch_size, config.gradient_checkpointing) == (
        4,
        8,
        8,
        2,
        True,
    )
    assert (config.learning_rate, config.retain_weight) == (3e-4, 0.5)
    main(["train", "--out", str(tmp_path)])
    config = seen.pop("config")
    assert (config.batch_size, config.micro_batch_size, config.gradient_checkpointing) == (4, None, False)
    assert main(["train", "--out", str(tmp_path), "--distill-micro-batch-size", "0"]) == 2
    assert "--distill-micro-batch-size must be at least 1" in capsys.readouterr().err and not seen


def test_study_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["study", "--tasks", "capitals,trivia", "--out", str(tmp_path)]) == 2
    assert "unknown task 'trivia'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "holds no finished study" in error and len(error.splitlines()) == 1


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--judge-url", "http://alice:s3cr3t@127.0.0.1:9/v1", "--judge-model", "m"],
            "the judge URL holds credentials",
        ),
        (
            [
                "--judge-url",
                "http://judge.example.com/v1",
                "--judge-model",
                "m",
                "--judge-api-key-env",
                "JUDGE_TEST_KEY",
            ],
            "refusing to send the API key over plain http to judge.example.com",
        ),
        (
            [
                "--judge-url",
                "https://judge.example.com/v1",
                "--judge-model",
                "m",
                "--judge-api-key-env",
                "NO_SUCH_KEY_VARIABLE",
            ],
            "NO_SUCH_KEY_VARIABLE is not set",
        ),
        (["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--judge-concurrency", "0"], "at least 1"),
        (["--judge-url", "http://127.0.0.1:9/v1"], "--judge-url needs --judge-model"),
    ],
)
def test_judge_options_fail_in_one_line_before_any_model_loads(options, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-cli-secret")
    assert main(["study", "--model", "no such model", "--out", str(tmp_path / "s"), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert "s3cr3t" not in error and "sk-test-cli-secret" not in error and not (tmp_path / "s").exists()


def test_prism_help_imports_no_command_group_and_no_torch():
    code = (
        "import sys; from prism.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [name for name in ('torch', 'transformers', 'transformer_lens', 'prism.cli.study') if name in "
        "sys.modules]\n"
        "print('loaded:', heavy)"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: prism" in shown and "loaded: []" in shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--out", "{tmp}/afile"], "afile is a file, not a folder"),
        (
            ["record", "--dataset", "mtbench", "--out", "{tmp}/afile/store"],
            "afile is a file, so nothing can be written under it",
        ),
        (["probe", "--out", "{tmp}/afile"], "afile is a file, not a folder"),
        (["intervene", "--out", "{tmp}/afile"], "afile is a file, not a folder"),
        (["bootstrap", "--out", "{tmp}/afile"], "afile is a file, not a folder"),
        (["evaluate", "--dataset", "mtbench", "--out", "{tmp}"], "is a folder: give --out the path of a file"),
    ],
)
def test_an_output_path_that_cannot_be_written_fails_before_any_model_loads(
    argv, message, tmp_path, no_model_loads, capsys
):
    (tmp_path / "afile").write_text("mine")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and message in errors[0], errors
    assert (tmp_path / "afile").read_text() == "mine"


def test_compare_takes_the_judge_options_and_checks_them_before_any_model_loads(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(prism.pipeline, "compare", lambda *a, judge, **k: seen.update(judge=judge))
    main(
        [
            "compare",
            "--out",
            str(tmp_path),
            "--judge-url",
            "https://judge.example/v1",
            "--judge-model",
            "m",
            "--judge-concurrency",
            "3",
            "--judge-timeout",
            "9",
        ]
    )
    assert seen.pop("judge") == {
        "url": "https://judge.example/v1",
        "judge_model": "m",
        "api_key_env": None,
        "concurrency": 3,
        "deadline": 9.0,
    }
    monkeypatch.undo()
    monkeypatch.setattr(
        prism.pipeline, "_load", lambda *a, **k: pytest.fail("the model loaded before the judge was checked")
    )
    monkeypatch.setattr(prism.pipeline.PrismDirectory, "require_gate", lambda self: None)
    assert main(["compare", "--out", str(tmp_path), "--judge-url", "https://judge.example/v1"]) == 2
    assert "--judge-url needs --judge-model" in capsys.readouterr().err


# --- two processes on one directory, and usage errors -------------------------------------------


@pytest.mark.parametrize(
    "argv, held",
    [
        (["record", "--dataset", "mtbench", "--out", "{out}"], "{out}"),
        (["study", "--out", "{out}"], "{out}/smollm2-135m-instruct"),
        (["probe", "--out", "{out}"], "{out}"),
        (["intervene", "--out", "{out}"], "{out}"),
        (["bootstrap", "--out", "{out}"], "{out}"),
        (["train", "--out", "{out}"], "{out}"),
        (["compare", "--out", "{out}"], "{out}"),
        (["demo", "--out", "{out}"], "{out}"),
    ],
)
def test_a_directory_in_use_by_another_process_is_refused_in_one_line(argv, held, tmp_path, no_model_loads, capsys):
    out = tmp_path / "out"
    held = Path(held.replace("{out}", str(out)))
    held.mkdir(parents=True)
    (held / "notes.txt").write_text("mine")
    with held_elsewhere(held) as holder:
        before = snapshot(tmp_path)
        assert main([arg.replace("{out}", str(out)) for arg in argv]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"prism {argv[0]}: error: {held} is in use by another prism process (pid {holder.pid}); "
            "wait for it or use another --out"
        ]
        assert snapshot(tmp_path) == before


def test_commands_that_only_read_a_directory_do_not_lock_it(tmp_path, no_model_loads, capsys):
    with directory_lock(tmp_path):
        assert main(["route", "--out", str(tmp_path), "hello"]) == 2
    assert "is not a PRISM directory" in capsys.readouterr().err


def test_a_finished_command_releases_its_directory(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        prism.pipeline, "bootstrap", lambda out, **options: seen.append(sorted(p.name for p in out.iterdir()))
    )
    assert main(["bootstrap", "--out", str(tmp_path / "work")]) == 0
    assert (
        seen == [[LOCK_NAME]] and not (tmp_path / "work").exists()
    )  # held while it ran; nothing written, nothing left


@pytest.mark.parametrize(
    "argv, line",
    [
        (["study", "--batch-size", "0"], "prism study: error: argument --batch-size: 0 is below 1: give 1 or more"),
        (["record", "--dataset", "mtbench"], "prism record: error: the following arguments are required: --out"),
        (
            ["evaluate", "--dataset", "mtbench", "--length", "huge"],
            "prism evaluate: error: argument --length: invalid choice: 'huge'",
        ),
        (["studdy"], "prism: error: argument COMMAND: invalid choice: 'studdy'"),
        ([], "prism: error: the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_naming_the_option_and_where_help_is(argv, line, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    errors = capsys.readouterr().err.splitlines()
    command = f"prism {argv[0]}" if argv and argv[0] != "studdy" else "prism"
    assert exit.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(line) and errors[0].endswith(f"(see {command} --help)"), errors
