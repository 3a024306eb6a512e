"""``prism serve --engine vllm`` (slow, skipped without vLLM): the same routes as ``prism route`` and answers but for
near-ties, 16 concurrent clients of the official ``openai`` client each answered once, the app's fields, headers and
metrics, and a killed engine answered with 503 and ``Retry-After`` until it is back. The steering mode is refused at
start-up in one line (fast, on the tiny model)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from interventions.measure.engines import EngineSpec
from prism import pipeline
from prism.server.launch import ServerThread, served_files
from prism.server.vllm_launch import build_vllm_app
from prism.server.vllm_modes import OneModuleAtATime
from probes.core.datasets import load_dataset
from probes.core.errors import ToolkitError
from probes.core.models import load_model
from tests.prism.server.conftest import client

TOKENS = 16


def test_steering_is_refused_at_start_up_in_one_line(tiny_prism):
    model_name, files = served_files(tiny_prism)
    with pytest.raises(ToolkitError, match="vLLM cannot") as caught:
        build_vllm_app(
            None,
            None,
            files,
            model_name=model_name,
            spec=EngineSpec("vllm", url="http://127.0.0.1:1/v1"),
            mode="steering",
        )
    assert "\n" not in str(caught.value)


def test_requests_of_different_modules_are_never_in_flight_together():
    gate, active, mixed, done = OneModuleAtATime(), [], [], []

    def request(module):
        with gate.using(module):
            active.append(module)
            mixed.append(len(set(active)) > 1)
            time.sleep(0.01)
            active.remove(module)
        done.append(module)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(request, [None, "prism", None, None, "prism", "prism-ungated", None, "prism"] * 3))
    assert len(done) == 24 and not any(mixed)


@pytest.fixture(scope="module")
def served(vllm_prism, vllm_server):
    model_name, files = served_files(vllm_prism)
    model, tokenizer = load_model(model_name)
    app = build_vllm_app(model, tokenizer, files, model_name=model_name, spec=EngineSpec("vllm"), process=vllm_server)
    with ServerThread(app) as server:
        deadline = time.monotonic() + 600  # the watcher may be restarting the session's server
        while httpx.get(server.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the app never saw the vLLM engine ready"
            time.sleep(0.5)
        yield server, app


def test_routes_equal_prism_route_and_16_clients_are_each_answered_once(served, vllm_prism, queries):
    server, app = served
    asked = list(queries) + [item.prompt for item in load_dataset("capitals")[:10]]
    expected = pipeline.route(vllm_prism, asked, via="adapter", max_new_tokens=TOKENS)
    assert {row["routed"] for row in expected} == {True, False}
    openai = client(server)

    def ask(query: str):
        answer = openai.chat.completions.create(
            model="prism", messages=[{"role": "user", "content": query}], max_tokens=TOKENS, temperature=0
        )
        return answer.choices[0].message.content, answer.model_extra["prism"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, asked))
    assert len(got) == 16
    for row, (_, prism) in zip(expected, got):
        assert prism["route"] == ("persona" if row["routed"] else "base")
        assert prism["gate_probability"] == pytest.approx(row["probability"], abs=1e-4)
    same = sum(text == row["answer"] for row, (text, _) in zip(expected, got))
    differing = [
        (row["prompt"][:40], row["answer"][:60], text[:60])
        for row, (text, _) in zip(expected, got)
        if text != row["answer"]
    ]
    print(f"\nrouted answers identical on {same}/16; differing: {differing}")
    assert same >= 14, differing  # 90% of 16, the rest near-ties of float arithmetic
    metrics = httpx.get(server.url + "/metrics").text
    assert 'route="persona"' in metrics and 'route="base"' in metrics


def test_streams_headers_and_modes_behave_as_with_hf(served, queries):
    server, _ = served
    openai = client(server)
    whole = openai.chat.completions.with_raw_response.create(
        model="always", messages=[{"role": "user", "content": queries[0]}], max_tokens=TOKENS, temperature=0
    )
    assert whole.headers["X-Prism-Route"] == "persona" and whole.headers["X-Prism-Mode"] == "always"
    text = whole.parse().choices[0].message.content
    stream = openai.chat.completions.create(
        model="always",
        messages=[{"role": "user", "content": queries[0]}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == text
    bad = httpx.post(server.url + "/v1/chat/completions", json={"model": "prism", "messages": []})
    assert bad.status_code == 400


def test_a_killed_engine_answers_503_with_retry_after_then_recovers(served, vllm_server, queries):
    server, _ = served

    def ask(query: str) -> httpx.Response:
        return httpx.post(
            server.url + "/v1/chat/completions",
            timeout=180,
            json={"model": "base", "messages": [{"role": "user", "content": query}], "max_tokens": 64},
        )

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, query) for query in queries + queries[:2]]
        time.sleep(0.5)
        os.killpg(vllm_server._process.pid, 9)  # the engine dies under load
        statuses = [future.result().status_code for future in futures]
    assert set(statuses) <= {200, 503}, statuses
    refused = ask(queries[0])
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    deadline = time.monotonic() + 600
    while ask(queries[0]).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover once the engine was back"
        time.sleep(2)
