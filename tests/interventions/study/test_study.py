"""The persona-effect study: tasks, judge parsing, tables, resume, report and figures."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from interventions.measure.instructions import attach_instructions, check_response
from interventions.measure.judge import EndpointJudge, JudgeRequest, judge_messages, parse_rating
from interventions.study.effects import cell_table, effect_table, judge_consistency
from interventions.study.ledger import Ledger
from interventions.study.plan import BUDGETS, resolve_plan
from interventions.study.report import summarise_study
from interventions.study.runner import TASKS, applies, conditions, run_study
from prism.cli import main
from probes.core.datasets import load_dataset
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.prompts import Condition, render, render_conversation
from probes.core.stats import bootstrap_mean, paired_difference

# --- statistics ------------------------------------------------------------------------------


def test_paired_interval_covers_a_known_effect_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(3)
    covered, paired_widths, unpaired_widths = 0, [], []
    for trial in range(200):
        item_difficulty = rng.normal(0, 1, size=60)
        baseline = item_difficulty + rng.normal(0, 0.3, size=60)
        treated = item_difficulty - 0.2 + rng.normal(0, 0.3, size=60)
        estimate = paired_difference(treated, baseline, n_resamples=400, seed=trial)
        covered += estimate.low <= -0.2 <= estimate.high
        paired_widths.append(estimate.high - estimate.low)
        a, b = bootstrap_mean(treated, seed=trial), bootstrap_mean(baseline, seed=trial)
        unpaired_widths.append(np.hypot(a.high - a.low, b.high - b.low))
    assert 0.90 <= covered / 200 <= 0.99
    assert np.mean(paired_widths) < 0.5 * np.mean(unpaired_widths)


def test_tiny_samples_are_never_called_significant():
    assert not paired_difference([1.0], [0.0]).significant  # a zero-width interval from one pair
    assert not paired_difference([1.0] * 4, [0.0] * 4).significant
    assert paired_difference([1.0] * 5, [0.0] * 5).significant


# --- the judge -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, rating",
    [
        ("The answer is clear and correct. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]]", 7.5),
        ("[[ 3 ]] then later [[9]]", 3.0),
        ("Rating: [[10]]", 10.0),
        ("Rating: [[11]]", None),  # out of range
        ("Rating: [[0]]", None),
        ("Rating: 7", None),  # no double brackets
        ("[7]", None),
        ("Rating: [[seven]]", None),
        ("Rating: [[", None),  # cut off
        ("", None),
    ],
)
def test_judge_ratings_parse_only_from_double_brackets_in_range(text, rating):
    assert parse_rating(text) == rating


def test_judge_prompts_are_mtbench_single_answer_prompts():
    system, user = judge_messages(JudgeRequest(("What is 2+2?",), ("4",)))
    assert "impartial judge" in system or "impartial judge" in user
    assert "[[rating]]" in system + user and "What is 2+2?" in user and "[The Start of Assistant's Answer]\n4" in user
    _, two = judge_messages(JudgeRequest(("Q1", "Q2"), ("A1", "A2")))
    assert all(text in two for text in ("Q1", "Q2", "A1", "A2"))
    with pytest.raises(ToolkitError, match="one or two turns"):
        judge_messages(JudgeRequest(("Q1",), ("A1", "A2")))


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        question = body["messages"][-1]["content"]
        reply = {"choices": [{"message": {"content": f"Fine. Rating: [[{len(question) % 9 + 1}]]"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_speaks_the_openai_chat_protocol():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", temperature=0.3)
        texts = judge.judge([JudgeRequest(("Q?",), ("A.",))], seed=7)
        assert parse_rating(texts[0]) is not None
        (sent,) = server.requests
        assert sent["model"] == "judge-model" and sent["seed"] == 7 and sent["temperature"] == 0.3
        assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    finally:
        server.shutdown()
    with pytest.raises(ToolkitError, match="failed"):
        EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "m", timeout=2).judge([JudgeRequest(("Q",), ("A",))], seed=0)
    with pytest.raises(ToolkitError, match="not http"):
        EndpointJudge("localhost:8000", "m")


# --- tasks and conditions --------------------------------------------------------------------


def test_capitals_are_built_from_reference_data_with_generated_distractors():
    items = load_dataset("capitals")
    assert len(items) > 150
    by_id = {item.id: item for item in items}
    france = by_id["capitals/FR"]
    assert france.choices[france.answer] == "Paris" and france.category == "Europe"
    assert france.meta["answer_stem"] == "The capital of France is"
    for item in items:
        assert len(set(item.choices)) == len(item.choices) == 4
    assert load_dataset("capitals") == items  # the same distractors every time


def test_verifiable_instructions_are_attached_deterministically_and_checked():
    base = load_dataset("mtbench")[:20]
    attached = attach_instructions(base, seed=0)
    assert attached == attach_instructions(base, seed=0)
    assert attached != attach_instructions(base, seed=1)
    lowercase = Item("q", "t", "Tell me about cats.", "writing")
    (item,) = attach_instructions([lowercase], types=["change_case:english_lowercase"])
    assert item.prompt.startswith("Tell me about cats.") and "lowercase" in item.prompt
    assert check_response(item, "cats are small furry animals.") == (True, True)
    assert check_response(item, "Cats are small furry animals.") == (False, False)
    (quoted,) = attach_instructions([lowercase], types=["startend:quotation"])
    assert check_response(quoted, '"Cats purr."')[0] and not check_response(quoted, "Cats purr.")[0]
    with pytest.raises(ToolkitError, match="unknown instruction type"):
        attach_instructions([lowercase], types=["no:such"])


def test_expert_condition_matches_the_item_category(smol):
    _, tokenizer = smol
    writing = Item("w", "mtbench", "Write a haiku.", "writing")
    prompt = render(tokenizer, writing.prompt, Condition("expert", "min"), item_category="writing")
    assert prompt.persona == "writing"
    capital = load_dataset("capitals")[0]
    assert not applies(Condition("expert"), capital) and applies(Condition("random"), capital)
    with pytest.raises(ToolkitError, match="no expert persona matches"):
        render(tokenizer, capital.prompt, Condition("expert"), item_category=capital.category)


def test_second_turn_keeps_the_persona_and_the_first_answer(smol):
    _, tokenizer = smol
    first = render(tokenizer, "Name a colour.", Condition("writing", "min", "system"))
    second = render_conversation(tokenizer, first, "Blue.", "Now name another.")
    assert second.text.index("You are") < second.text.index("Name a colour.") < second.text.index("Blue.")
    assert second.text.index("Blue.") < second.text.index("Now name another.")
    assert second.text[slice(*second.query_span)] == "Now name another."


def test_grids_hold_baselines_and_the_full_grid_is_complete():
    for task in TASKS.values():
        default = conditions(task, "default")
        assert default[:2] == [Condition("none"), Condition("none", base_system="template")]
        assert len(conditions(task, "full")) == 2 + 14 * 3 * 2
    assert any(c.persona == "safety-monitor" and c.length == "long" for c in conditions(TASKS["harmbench"], "default"))
    with pytest.raises(ToolkitError, match="unknown grid"):
        conditions(TASKS["capitals"], "huge")


def test_plans_narrow_a_budget_to_tasks_items_and_grid():
    plan = resolve_plan("smoke", tasks=["capitals", "mmlu-cloze"], items=3, grid="default")
    assert dict(plan.items) == {"capitals": 3, "mmlu-cloze": 3} and plan.grid == "default"
    assert plan.max_new_tokens == {**BUDGETS["default"].max_new_tokens, **BUDGETS["smoke"].max_new_tokens}
    assert dict(resolve_plan("smoke", tasks=["mmlu-cloze"]).items) == {"mmlu-cloze": BUDGETS["default"].items["mmlu-cloze"]}
    with pytest.raises(ToolkitError, match="unknown budget"):
        resolve_plan("huge")
    with pytest.raises(ToolkitError, match="at least 1"):
        resolve_plan("smoke", items=0)


# --- tables ----------------------------------------------------------------------------------


def _row(task, condition, spec, item, category, **metrics):
    length, placement = (None, None) if spec == "none" else condition.split("/")[1:3]
    if placement:
        placement = placement.split("[")[0]
    return {"task": task, "condition": condition, "persona_spec": spec, "length": length, "placement": placement,
            "base_system": "empty", "item_id": item, "category": category, **metrics}


def test_effects_are_paired_on_items_and_skip_unparseable_judgements():
    rows = []
    for i in range(10):
        rows.append(_row("t", "none[empty]", "none", f"i{i}", "a", margin=float(i), judge_score=5.0))
        rows.append(_row("t", "expert/long/system[empty]", "expert", f"i{i}", "a", margin=i - 1.0,
                         judge_score=float("nan") if i < 3 else 6.0))
        rows.append(_row("t", "random/long/system[empty]", "random", f"i{i}", "a", margin=i - 0.5, judge_score=5.5))
    effects = effect_table(rows)
    margin = next(e for e in effects if e["condition"].startswith("expert") and e["metric"] == "margin"
                  and e["reference"] == "none[empty]")
    assert margin["delta"] == pytest.approx(-1.0) and margin["n"] == 10 and margin["significant"]
    versus_random = next(e for e in effects if e["condition"].startswith("expert") and e["metric"] == "margin"
                         and e["reference"].startswith("random"))
    assert versus_random["delta"] == pytest.approx(-0.5)
    judged = next(e for e in effects if e["condition"].startswith("expert") and e["metric"] == "judge_score"
                  and e["reference"] == "none[empty]")
    assert judged["n"] == 7 and judged["delta"] == pytest.approx(1.0)
    cells = cell_table(rows)
    expert_judge = next(c for c in cells if c["condition"].startswith("expert") and c["metric"] == "judge_score")
    assert expert_judge["unparseable"] == 3 and expert_judge["n"] == 7


def test_judge_consistency_counts_parses_and_agreement():
    rows = [{"ratings": {"turn1_seed0": 5.0, "turn1_seed1": 5.0}}, {"ratings": {"turn1_seed0": 7.0, "turn1_seed1": 4.0}},
            {"ratings": {"turn1_seed0": None, "turn1_seed1": 6.0}}]
    result = judge_consistency(rows)
    assert result["judgements"] == 6 and result["parsed"] == 5 and result["pairs"] == 2
    assert result["exact_agreement"] == 0.5 and result["mean_abs_difference"] == 1.5


def test_ledger_survives_a_line_cut_off_by_an_interruption(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.add([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
    with path.open("a") as handle:
        handle.write('{"key": "c", "val')  # killed mid-write
    reopened = Ledger(path)
    assert "a" in reopened and "b" in reopened and "c" not in reopened
    reopened.add([{"key": "c", "value": 3}])
    assert Ledger(path)["c"]["value"] == 3 and len(Ledger(path)) == 3


# --- the study end to end on a tiny random model ---------------------------------------------


def test_study_resumes_without_redoing_finished_work(tiny_llama_directory, tmp_path):
    out = tmp_path / "study"
    options = dict(model_name=tiny_llama_directory, budget="smoke", tasks=["capitals", "harmbench", "mtbench"],
                   items=2, progress=False)
    rows = run_study(out, **options)
    ledgers = {path.name: path.read_text() for path in (out / "ledger").glob("*.jsonl")}
    assert set(ledgers) == {"capitals.jsonl", "harmbench.jsonl", "mtbench.jsonl", "judge.jsonl"}
    # drop the last finished record of one task, as if the run had been killed there
    lines = ledgers["harmbench.jsonl"].splitlines()
    (out / "ledger" / "harmbench.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = run_study(out, **options)
    assert (out / "ledger" / "capitals.jsonl").read_text() == ledgers["capitals.jsonl"]  # nothing redone
    assert len((out / "ledger" / "harmbench.jsonl").read_text().splitlines()) == len(lines)  # only the lost one
    assert [json.dumps(r, sort_keys=True) for r in again] == [json.dumps(r, sort_keys=True) for r in rows]

    summary = summarise_study(out)
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
        run_study(out, **options)


def test_study_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["study", "--tasks", "capitals,trivia", "--out", str(tmp_path)]) == 2
    assert "unknown task 'trivia'" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "holds no finished study" in error and len(error.splitlines()) == 1


def test_second_turns_are_answered_and_judged_when_the_budget_allows(tiny_llama_directory, tmp_path):
    from interventions.study.runner import Budget

    budget = Budget(items={"mtbench": 2}, grid="smoke", max_new_tokens={"mtbench": 4}, turns=2, judge_seeds=(0,))
    rows = run_study(tmp_path / "s", model_name=tiny_llama_directory, budget=budget, progress=False)
    two_turns = [row for row in rows if "turn2_key" in row]
    assert two_turns and all(set(row["ratings"]) == {"turn1_seed0", "turn2_seed0"} for row in two_turns)
    answers = [json.loads(line) for line in (tmp_path / "s" / "ledger" / "mtbench.jsonl").read_text().splitlines()]
    second_keys = {row["turn2_key"] for row in two_turns}
    assert second_keys <= {a["key"] for a in answers} and len({a["key"] for a in answers}) == len(answers)
