"""The MT-Bench judge: rating parsing, the single-answer prompt, the OpenAI-compatible endpoint."""

from __future__ import annotations

import json

import pytest

from interventions.measure.judge import EndpointJudge, JudgeRequest, judge_messages, make_judge, parse_rating
from probes.core.errors import ToolkitError
from tests.chat_server import FakeChatServer


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


def test_endpoint_judge_speaks_the_openai_chat_protocol(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer() as server:
        judge = EndpointJudge(server.url("good"), "judge-model", temperature=0.3, concurrency=2)
        requests = [
            JudgeRequest(("Q?",), ("A.",)),
            JudgeRequest(("Q1", "Q2"), ("A1", "A2")),
            JudgeRequest(("Q",), ("B",)),
        ]
        texts = judge.judge(requests, seed=7)
        assert all(parse_rating(text) is not None for text in texts) and judge.name == "endpoint:judge-model"
        sent = [json.loads(body) for _, _, _, body in server.requests]
        assert all(s["model"] == "judge-model" and s["seed"] == 7 and s["temperature"] == 0.3 for s in sent)
        assert all([m["role"] for m in s["messages"]] == ["system", "user"] for s in sent)
        for request, text in zip(requests, texts):  # each judgement answers its own request
            user = judge_messages(request)[1]
            assert repr(user)[:60] in text and parse_rating(text) == len(user) % 9 + 1
        assert judge.judge([JudgeRequest(("Q",), ("A",))], seed=0) != [None]


def test_an_unanswered_judgement_is_none_and_counts_as_unparseable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer() as server:
        for mode in ("garbage", "down", "unrated"):
            judge = EndpointJudge(server.url(mode), "m", retries=1, backoff=0.01, deadline=2)
            (text,) = judge.judge([JudgeRequest(("Q",), ("A",))], seed=0)
            assert parse_rating(text) is None
            assert (text is None) == (mode != "unrated") and bool(judge.failures) == (mode != "unrated")


def test_make_judge_gives_the_endpoint_or_the_model_itself(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = make_judge("http://127.0.0.1:9/v1/", "m", concurrency=3, deadline=5, retries=0)
    assert isinstance(judge, EndpointJudge) and judge.url == "http://127.0.0.1:9/v1"
    assert (judge.endpoint.concurrency, judge.endpoint.deadline, judge.endpoint.retries) == (3, 5, 0)
    with pytest.raises(ToolkitError, match="--judge-url needs --judge-model"):
        make_judge("http://127.0.0.1:9/v1", None)
    with pytest.raises(ToolkitError, match="need --judge-url"):
        make_judge(None, "m")
    with pytest.raises(ToolkitError, match="a model and tokenizer"):
        make_judge()
    with pytest.raises(ToolkitError, match="not http"):
        make_judge("localhost:8000", "m")
