"""The study's judging step with an endpoint judge on 127.0.0.1: unanswered requests, reruns, the key."""

from __future__ import annotations

import json

import pytest

from interventions.measure.judge import EndpointJudge, make_judge
from interventions.study.ledger import Ledger
from interventions.study.plan import Budget
from interventions.study.runner import _Runner, run_study
from probes.core.errors import ToolkitError
from probes.core.items import Item
from tests.chat_server import FakeChatServer

KEY = "sk-test-study-91c3e5"
ITEMS = [
    Item(id=f"mtbench/{i}", source="mtbench", prompt=f"Question {i}?", category="writing", turns=(f"Question {i}?",))
    for i in range(3)
]


def judge_rows(tmp_path, judge) -> list[dict]:
    rows = [{"item_id": item.id, "response": f"An answer to question {n}."} for n, item in enumerate(ITEMS)]
    plan = Budget(items={"mtbench": 3}, grid="smoke", turns=1, judge_seeds=(0, 1))
    _Runner(None, None, tmp_path / "ledger", 0, 8, False)._judge(
        rows, ITEMS, judge, plan, Ledger(tmp_path / "turns.jsonl")
    )
    return rows


@pytest.fixture
def server():
    with FakeChatServer() as running:
        yield running


def test_unanswered_judgements_count_as_unparseable_and_a_rerun_asks_again(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    options = dict(api_key_env="JUDGE_TEST_KEY", retries=1, backoff=0.01, deadline=2)
    down = EndpointJudge(server.url("down"), "judge-model", **options)
    rows = judge_rows(tmp_path, down)
    assert all(row["ratings"] == {"turn1_seed0": None, "turn1_seed1": None} for row in rows)
    assert server.seen["down"] == 6 * 2  # every request, each tried twice; the run went on
    said = caplog.text  # a warning of the runner's logger
    assert "the judge gave no answer to 6 of 6 requests (6 HTTP 503 (gave up after 2 attempts))" in said
    assert not (tmp_path / "ledger" / "judge.jsonl").exists()  # nothing recorded: a rerun asks again

    rows = judge_rows(tmp_path, EndpointJudge(server.url("good"), "judge-model", **options))
    assert server.seen["good"] == 6 and all(None not in row["ratings"].values() for row in rows)
    assert all(row["judge_score"] == sum(row["ratings"].values()) / 2 for row in rows)
    caplog.clear()
    again = judge_rows(tmp_path, down)  # all on record: the endpoint is not asked again
    assert server.seen["down"] == 12 and again == rows and "no answer" not in caplog.text

    assert {headers["Authorization"] for _, _, headers, _ in server.requests} == {f"Bearer {KEY}"}
    written = "".join(path.read_text() for path in tmp_path.rglob("*") if path.is_file())
    assert "Rating: [[" in written and KEY not in written + said


def test_a_reply_without_a_rating_is_recorded_and_stays_unparseable(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = judge_rows(tmp_path, EndpointJudge(server.url("unrated"), "m", retries=0))
    assert all(row["ratings"] == {"turn1_seed0": None, "turn1_seed1": None} for row in rows)
    assert len((tmp_path / "ledger" / "judge.jsonl").read_text().splitlines()) == 6  # answered: not asked again


def test_a_url_with_credentials_or_no_concurrency_is_refused_in_one_line():
    """What ``prism study`` checks before its model loads (``run_study_command`` makes the judge first)."""
    with pytest.raises(ToolkitError, match="holds credentials") as error:
        make_judge("http://alice:s3cr3t@127.0.0.1:9/v1", "m")
    assert "s3cr3t" not in str(error.value)
    with pytest.raises(ToolkitError, match="concurrency must be at least 1"):
        make_judge("http://127.0.0.1:9/v1", "m", concurrency=0)


def test_a_study_judged_by_an_endpoint_records_it_without_the_key(server, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    judge = make_judge(server.url("good"), "judge-model", api_key_env="JUDGE_TEST_KEY", concurrency=2)
    rows = run_study(
        tmp_path / "s", *tiny, budget="smoke", tasks=["mtbench"], items=2, judge=judge, progress=False
    ).items
    assert rows and all(None not in row["ratings"].values() for row in rows)
    settings = json.loads((tmp_path / "s" / "study.json").read_text())
    assert settings["judge"] == f"endpoint:judge-model@{server.url('good')}"
    assert 0 < server.seen["good"] <= sum(len(row["ratings"]) for row in rows)  # identical answers are judged once
    written = "".join(path.read_text(errors="replace") for path in (tmp_path / "s").rglob("*") if path.is_file())
    assert "judge-model" in written and KEY not in written
