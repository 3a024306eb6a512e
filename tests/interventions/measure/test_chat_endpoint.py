"""The chat-completions client against a real server on 127.0.0.1: concurrency, deadline, retries, keys."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from interventions.measure.chat_endpoint import ChatEndpoint, is_loopback
from probes.core.errors import ToolkitError
from tests.chat_server import FakeChatServer

KEY = "sk-test-4f1d9c0e7b2a"
FAST = dict(deadline=3.0, connect_timeout=1.0, read_timeout=2.0, retries=2, backoff=0.01, backoff_cap=0.05)


@pytest.fixture
def server():
    with FakeChatServer() as running:
        yield running


def ask(endpoint: ChatEndpoint, *texts: str):
    return endpoint.complete([[{"role": "user", "content": text}] for text in texts], temperature=0.0)


def test_good_replies_come_back_in_request_order_with_the_options_sent(server):
    endpoint = ChatEndpoint(server.url("good"), "judge-model", **FAST)
    replies = ask(endpoint, "one", "three", "seven!")
    assert [reply.text for reply in replies] == [
        f"Rating: [[{len(t) % 9 + 1}]]. You said {t!r}" for t in ("one", "three", "seven!")
    ]
    assert all(reply.failure is None and reply.attempts == 1 for reply in replies)
    sent = json.loads(server.requests[0][3])
    assert sent["model"] == "judge-model" and sent["temperature"] == 0.0 and sent["messages"][0]["role"] == "user"
    assert server.requests[0][1] == "/good/v1/chat/completions" and not endpoint.failures
    assert ask(endpoint) == []


def test_it_also_runs_where_an_event_loop_already_runs(server):
    async def inside_a_loop():  # as in a notebook
        return ask(ChatEndpoint(server.url("good"), "m", **FAST), "hi")

    assert [reply.text for reply in asyncio.run(inside_a_loop())] == ["Rating: [[3]]. You said 'hi'"]


@pytest.mark.parametrize("concurrency", [2, 4])
def test_at_most_concurrency_requests_are_in_flight(server, concurrency):
    endpoint = ChatEndpoint(server.url("slow"), "m", concurrency=concurrency, **FAST)
    texts = [f"question {i}" for i in range(8)]
    start = time.monotonic()
    replies = ask(endpoint, *texts)
    elapsed = time.monotonic() - start
    assert [reply.text.split("'")[1] for reply in replies] == texts  # in request order
    assert server.most_in_flight == concurrency
    assert elapsed >= 0.3 * 8 / concurrency - 0.05


@pytest.mark.parametrize("mode", ["flaky", "reset"])
def test_a_5xx_or_a_dropped_connection_is_retried_and_then_succeeds(server, mode):
    (reply,) = ask(ChatEndpoint(server.url(mode), "m", **FAST), "hello")
    assert reply.text == "Rating: [[6]]. You said 'hello'" and reply.attempts == 2 and server.seen[mode] == 2


def test_a_429_waits_as_long_as_retry_after_asks(server):
    endpoint = ChatEndpoint(server.url("busy"), "m", **FAST)
    start = time.monotonic()
    (reply,) = ask(endpoint, "hello")
    assert reply.text and reply.attempts == 2 and server.seen["busy"] == 2
    assert server.times[1] - server.times[0] >= 0.3 and time.monotonic() - start < 2


def test_retries_back_off_exponentially_and_are_bounded(server):
    endpoint = ChatEndpoint(server.url("down"), "m", **{**FAST, "retries": 3, "backoff": 0.1, "backoff_cap": 1.0})
    (reply,) = ask(endpoint, "hello")
    assert reply.text is None and reply.failure == "HTTP 503 (gave up after 4 attempts)" and server.seen["down"] == 4
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert 0.05 <= gaps[0] < 0.3 and gaps[2] >= 0.2 and gaps[2] > gaps[0]  # about 0.1, 0.2, 0.4 s, each with jitter
    assert endpoint.failures == {"HTTP 503 (gave up after 4 attempts)": 1}


def test_other_4xx_are_not_retried(server):
    (reply,) = ask(ChatEndpoint(server.url("unauthorised"), "m", **FAST), "hello")
    assert (reply.text, reply.failure, reply.attempts, server.seen["unauthorised"]) == (None, "HTTP 401", 1, 1)


@pytest.mark.parametrize(
    "mode, failure",
    [
        ("garbage", "reply not JSON"),
        ("latin1", "reply not UTF-8"),
        ("empty", "reply without choices[0].message.content"),
    ],
)
def test_malformed_replies_are_failures_not_tracebacks_and_are_not_retried(server, mode, failure):
    endpoint = ChatEndpoint(server.url(mode), "m", **FAST)
    replies = ask(endpoint, "a", "b")
    assert [(reply.text, reply.failure) for reply in replies] == [(None, failure)] * 2
    assert server.seen[mode] == 2 and endpoint.failures == {failure: 2}


def test_a_trickling_reply_hits_the_overall_deadline_and_the_run_goes_on(server):
    endpoint = ChatEndpoint(server.url("trickle"), "m", deadline=0.8, read_timeout=5.0, retries=3, backoff=0.01)
    start = time.monotonic()
    replies = endpoint.complete([[{"role": "user", "content": "q"}]] * 2)
    elapsed = time.monotonic() - start
    assert [reply.failure for reply in replies] == ["no reply within the 0.8s deadline"] * 2
    assert elapsed < 2.0  # both in parallel, each cut off at its deadline although every read was in time


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(server, monkeypatch):
    with FakeChatServer() as elsewhere:
        server.redirect_to = f"http://localhost:{elsewhere.server_port}"
        monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
        endpoint = ChatEndpoint(server.url("redirect"), "m", api_key_env="JUDGE_TEST_KEY", **FAST)
        (reply,) = ask(endpoint, "hello")
        assert reply.text is None and reply.failure == "HTTP 302 redirect (not followed)" and reply.attempts == 1
        assert server.requests[0][2]["Authorization"] == f"Bearer {KEY}" and not elsewhere.requests


def test_the_key_comes_from_the_named_variable_and_is_never_shown(server, monkeypatch, capsys):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    endpoint = ChatEndpoint(server.url("good"), "m", api_key_env="JUDGE_TEST_KEY", **FAST)
    failing = ChatEndpoint(server.url("down"), "m", api_key_env="JUDGE_TEST_KEY", **FAST)
    replies = ask(endpoint, "hello") + ask(failing, "hello")
    assert [headers["Authorization"] for _, _, headers, _ in server.requests] == [f"Bearer {KEY}"] * 4
    shown = repr(endpoint) + repr(replies) + repr(failing.failures) + "".join(capsys.readouterr())
    assert KEY not in shown and "good" in shown
    ask(ChatEndpoint(server.url("good"), "m", **FAST), "no key")  # OPENAI_API_KEY unset: no header at all
    assert "Authorization" not in server.requests[-1][2]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    ask(ChatEndpoint(server.url("good"), "m", **FAST), "default variable")
    assert server.requests[-1][2]["Authorization"] == f"Bearer {KEY}"


def test_unreachable_endpoints_fail_per_request_after_bounded_retries():
    with FakeChatServer() as gone:
        url = gone.url("good")
    endpoint = ChatEndpoint(url, "m", **FAST)
    (reply,) = ask(endpoint, "hello")
    assert reply.text is None and reply.attempts == 3 and reply.failure.startswith("connection failed (ConnectError)")


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://alice:s3cr3t-pw@127.0.0.1:9/v1", "holds credentials"),
        ("https://s3cr3t-pw@api.example.com/v1", "holds credentials"),
        ("alice:s3cr3t-pw@host:8000/v1", "not http(s)"),
        ("localhost:8000", "not http(s)"),
        ("ftp://example.com/v1", "not http(s)"),
        ("http:///v1", "not http(s)"),
    ],
)
def test_bad_urls_fail_in_one_line_without_echoing_secrets(url, message):
    with pytest.raises(ToolkitError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        ChatEndpoint(url, "m")
    assert "s3cr3t" not in str(error.value) and "\n" not in str(error.value)


def test_a_key_is_refused_over_plain_http_to_another_machine_only(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)
    with pytest.raises(ToolkitError, match="over plain http to judge.example.com") as error:
        ChatEndpoint("http://judge.example.com/v1", "m", api_key_env="JUDGE_TEST_KEY")
    assert KEY not in str(error.value)
    for url in (
        "http://127.0.0.1:8000/v1",
        "http://localhost:8000/v1",
        "http://[::1]:8000/v1",
        "https://judge.example.com/v1",
    ):
        ChatEndpoint(url, "m", api_key_env="JUDGE_TEST_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert ChatEndpoint("http://judge.example.com/v1/", "m").endpoint == "http://judge.example.com/v1/chat/completions"
    with_query = ChatEndpoint("https://judge.example.com/v1?api-version=2&sig=abc", "m")
    assert with_query.endpoint == "https://judge.example.com/v1/chat/completions?api-version=2&sig=abc"
    assert with_query.url == "https://judge.example.com/v1" and "sig" not in repr(with_query)
    with pytest.raises(ToolkitError, match="NO_SUCH_KEY_VARIABLE is not set"):
        ChatEndpoint("https://judge.example.com/v1", "m", api_key_env="NO_SUCH_KEY_VARIABLE")
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-with a space")
    with pytest.raises(ToolkitError, match="holds spaces") as error:
        ChatEndpoint("https://judge.example.com/v1", "m", api_key_env="JUDGE_TEST_KEY")
    assert "with a space" not in str(error.value)
    assert (
        is_loopback("127.0.0.2") and is_loopback("LOCALHOST") and not is_loopback("10.0.0.1") and not is_loopback(None)
    )


@pytest.mark.parametrize(
    "option, message",
    [
        (dict(concurrency=0), "concurrency must be at least 1"),
        (dict(deadline=0), "timeouts must be positive"),
        (dict(retries=-1), "cannot be negative"),
    ],
)
def test_settings_out_of_range_fail_in_one_line(option, message):
    with pytest.raises(ToolkitError, match=message):
        ChatEndpoint("http://127.0.0.1:9/v1", "m", **option)
