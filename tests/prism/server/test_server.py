"""``prism serve`` on 127.0.0.1 over a trained PRISM directory of the tiny random model, through the official client."""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

import prism.server as surface
from interventions.measure.generation import generate
from prism import pipeline
from prism.adapters import load_adapter
from prism.cli import main
from prism.cli import options as cli_options
from prism.gate import Gate
from prism.persona_path import GATED
from prism.routing import Routed
from prism.server.launch import ServerThread, build_app, served_files
from probes.core.models import load_model
from probes.core.prompts import Condition, render

ROOT = Path(__file__).resolve().parents[3]


def _ask(client, query: str, **options):
    """A chat request for one user message: (text, prism field, headers, whole answer)."""
    raw = client.chat.completions.with_raw_response.create(
        model=options.pop("model", "prism"), messages=[{"role": "user", "content": query}], **options
    )
    answer = raw.parse()
    return answer.choices[0].message.content, answer.model_extra["prism"], raw.headers, answer


def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(value) for value in re.findall(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.M))


def _until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.05)


def test_routed_and_unrouted_requests_get_the_text_of_prism_route(tiny_server, tiny_prism, queries, openai_client):
    client = openai_client(tiny_server)
    for via, mode in (("adapter", "prism"), ("steering", "steering")):
        expected = pipeline.route(tiny_prism, queries, via=via, max_new_tokens=6)
        assert {row["routed"] for row in expected} == {True, False}  # routed and unrouted prompts
        for row in expected:
            text, prism, headers, answer = _ask(client, row["prompt"], model=mode, temperature=0, max_tokens=6)
            assert text == row["answer"]
            assert prism["route"] == ("persona" if row["routed"] else "base") == headers["x-prism-route"]
            assert prism["gate_probability"] == pytest.approx(row["probability"], abs=1e-5)
            assert float(headers["x-prism-gate-probability"]) == pytest.approx(row["probability"], abs=1e-5)
            assert answer.model == mode == headers["x-prism-mode"] and answer.usage.completion_tokens <= 6
            base, base_prism, _, _ = _ask(client, row["prompt"], model="base", temperature=0, max_tokens=6)
            assert base_prism["route"] == "base" and base_prism["gate_probability"] == pytest.approx(
                prism["gate_probability"]
            )
            if not row["routed"]:
                assert base == text  # unrouted: the base model's answer
    routed = [row for row in expected if row["routed"]]
    assert any(
        _ask(client, row["prompt"], model="base", temperature=0, max_tokens=6)[0] != row["answer"] for row in routed
    )
    always = _ask(client, queries[0], model="always", temperature=0, max_tokens=6)[1]
    assert always["route"] == "persona" and always["mode"] == "always"


def test_streaming_gives_the_same_text_as_a_whole_answer(tiny_server, queries, openai_client):
    client = openai_client(tiny_server)
    for options in (
        {"temperature": 0},
        {"temperature": 0.9, "top_p": 0.9, "seed": 11},
        {"temperature": 1.2, "seed": 3},
    ):
        for query in queries[:3]:
            messages = [{"role": "user", "content": query}]
            whole = client.chat.completions.create(model="prism", messages=messages, max_tokens=12, **options)
            chunks = list(
                client.chat.completions.create(
                    model="prism",
                    messages=messages,
                    max_tokens=12,
                    stream=True,
                    stream_options={"include_usage": True},
                    **options,
                )
            )
            routes = [
                {**answer.model_extra["prism"], "seed": None} for answer in (chunks[0], whole)
            ]  # drawn when not given
            assert chunks[0].choices[0].delta.role == "assistant" and routes[0] == routes[1]
            assert (
                "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                == whole.choices[0].message.content
            )
            assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
            assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        whole = client.completions.create(model="prism", prompt="Once upon a time", max_tokens=10, **options)
        streamed = client.completions.create(
            model="prism", prompt="Once upon a time", max_tokens=10, stream=True, **options
        )
        assert (
            "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
            and whole.model_extra["prism"]["route"]
        )
    messages = [{"role": "user", "content": queries[3]}]
    full = client.chat.completions.create(model="prism", messages=messages, max_tokens=16, temperature=0)
    stop = full.choices[0].message.content[6:9]
    expected = full.choices[0].message.content.split(stop)[0].rstrip()
    cut = client.chat.completions.create(
        model="prism", messages=messages, max_tokens=16, temperature=0, stop=[stop, "zzz"]
    )
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="prism", messages=messages, max_tokens=16, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
    body = {"model": "prism", "messages": [{"role": "user", "content": queries[0]}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line]
        assert response.headers["content-type"].startswith("text/event-stream") and response.headers["x-prism-route"]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


BAD = [
    (b"{not json", "not valid JSON"),
    (b'"just a string"', "must be a JSON object"),
    ({"model": "prism"}, "messages must be a non-empty list"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "word " * 700}]}, "but the model's context is 512 tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600}, "plus max_tokens 600"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature must be in [0, 2]"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens must be at least 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p must be in (0, 1]"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.01}, "top_p must be in (0, 1]"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 7}, "stop must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": "x"}, "seed must be an integer"),
]


@pytest.mark.parametrize("body, message", BAD, ids=[message for _, message in BAD])
def test_bad_input_gets_400_with_a_clear_message_and_the_server_keeps_serving(
    tiny_server, openai_client, body, message
):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        tiny_server.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    text, prism, _, _ = _ask(openai_client(tiny_server), "Name a colour.", temperature=0, max_tokens=2)
    assert prism["route"] in ("persona", "base")


def test_the_official_client_sees_openai_errors(tiny_server, openai_client):
    client = openai_client(tiny_server)
    with pytest.raises(openai.BadRequestError, match="temperature must be in") as refused:
        _ask(client, "hi", temperature=-0.5)
    assert refused.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError, match="GET /v1/nothing"):
        client.get("/nothing", cast_to=object)
    assert httpx.get(tiny_server.url + "/v1/chat/completions").status_code == 405
    assert _ask(client, "hi", model="gpt-4o", max_tokens=2)[1]["mode"] == "prism"  # any other name: the default mode


def test_concurrent_requests_each_get_their_own_answer(tiny_server, queries, openai_client):
    client = openai_client(tiny_server)
    asks = [
        dict(
            query=query,
            model=("prism", "base")[index % 2],
            max_tokens=4 + index % 5,
            seed=index,
            temperature=(0.0, 0.8, 1.3)[index % 3],
        )
        for index, query in enumerate(queries * 2)
    ]

    def send(ask: dict):
        ask = dict(ask)
        text, prism, _, answer = _ask(client, ask.pop("query"), **ask)
        return text, prism["route"], round(prism["gate_probability"], 4), answer.usage.completion_tokens

    alone = [send(ask) for ask in asks]
    batches_before = _metric(tiny_server, "prism_batch_size_count")
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(send, asks))
    assert together == alone
    assert _metric(tiny_server, "prism_batch_size_count") - batches_before < len(asks)  # some requests shared a batch
    again = [send(ask) for ask in asks[:3]]
    assert again == alone[:3]  # the same seed, the same text
    texts = {_ask(client, queries[1], temperature=1.5, max_tokens=8, seed=seed)[0] for seed in range(4)}
    assert len(texts) > 1  # other seeds, other samples


def test_health_models_and_metrics(tiny_server, queries, openai_client):
    client = openai_client(tiny_server)
    assert [model.id for model in client.models.list()] == ["prism", "base", "steering", "always"]
    health = httpx.get(tiny_server.url + "/health").json()
    assert health["status"] == "ok" and health["default_mode"] == "prism" and health["waiting"] == 0
    routes = {_ask(client, query, temperature=0, max_tokens=2)[1]["route"] for query in queries}
    assert routes == {"persona", "base"}
    httpx.post(tiny_server.url + "/v1/chat/completions", content=b"{")
    assert httpx.get(tiny_server.url + "/scan/me/42").json()["error"]["code"] == "not_found"
    text = httpx.get(tiny_server.url + "/metrics").text
    assert 'endpoint="other",route="none",status="404"' in text and "/scan/me" not in text
    assert re.search(
        r'^prism_requests_total\{endpoint="/v1/chat/completions",route="(persona|base)",status="200"\} \d+$',
        text,
        flags=re.M,
    )
    assert re.search(
        r'^prism_requests_total\{endpoint="/v1/chat/completions",route="none",status="400"\} \d+$', text, flags=re.M
    )
    share = _metric(tiny_server, "prism_routed_share")
    assert 0 < share < 1
    buckets = [
        float(n) for n in re.findall(r'^prism_request_duration_seconds_bucket\{le="[^"]+"\} (\d+)$', text, flags=re.M)
    ]
    assert buckets == sorted(buckets) and buckets[-1] == _metric(tiny_server, "prism_request_duration_seconds_count")
    for kind in ("counter", "gauge", "histogram"):
        assert f" {kind}\n" in text


@pytest.fixture(scope="module")
def narrow_server(tiny_prism, server_over):
    """One request at a time, one waiting, and no steering vector or ungated adapter."""
    with server_over(
        tiny_prism, max_batch_size=1, max_queue=1, batch_wait_ms=0, without=("steering", "ungated")
    ) as server:
        yield server


def test_a_full_queue_gets_503_and_clients_that_go_away_free_their_slots(narrow_server, queries, openai_client):
    client = openai_client(narrow_server)
    long = {
        "model": "prism",
        "messages": [{"role": "user", "content": queries[1]}],
        "max_tokens": 480,
        "temperature": 0.7,
        "seed": 1,
        "stream": True,
    }
    with httpx.stream("POST", narrow_server.url + "/v1/chat/completions", json=long, timeout=120) as running:
        lines = running.iter_lines()  # held: a finished iterator would close the stream
        assert next(lines).startswith("data: ")  # it runs
        waiting = socket.create_connection(("127.0.0.1", narrow_server.port))
        body = json.dumps({**long, "stream": False}).encode()
        waiting.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        _until(lambda: httpx.get(narrow_server.url + "/health").json()["waiting"] == 1)
        with pytest.raises(openai.APIStatusError, match="busy") as refused:
            _ask(client, "hi", max_tokens=2)
        assert refused.value.status_code == 503 and refused.value.body["code"] == "queue_full"
        assert refused.value.response.headers["retry-after"] == "1"
        waiting.close()  # the waiting client goes away: its place in the queue is free
        _until(
            lambda: (
                _metric(narrow_server, "prism_cancelled_total") == 1
                and _metric(narrow_server, "prism_queue_waiting") == 0
            )
        )
        assert _metric(narrow_server, "prism_running") == 1
    _until(
        lambda: _metric(narrow_server, "prism_cancelled_total") == 2 and _metric(narrow_server, "prism_running") == 0
    )
    assert _metric(narrow_server, "prism_generated_tokens_total") == 0  # neither ran to its end
    assert _ask(client, "hi", temperature=0, max_tokens=2)[1]["mode"] == "prism"
    with pytest.raises(openai.NotFoundError, match="mode 'steering' is not served here: use one of prism, base"):
        _ask(client, "hi", model="steering")
    assert [model.id for model in client.models.list()] == ["prism", "base"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_cli_serves_behind_an_api_key_that_never_reaches_the_logs(tiny_prism):
    key, port = "sk-prism-test-7f3a9c", _free_port()
    env = {**os.environ, "PRISM_TEST_KEY": key, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "prism.cli",
        "serve",
        "--out",
        str(tiny_prism),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--api-key-env",
        "PRISM_TEST_KEY",
        "--log-level",
        "debug",
        "--mode",
        "base",
        "--max-body-bytes",
        "100000",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert server.poll() is None, server.stdout.read()
            try:
                return httpx.get(url + "/health").status_code == 200
            except httpx.HTTPError:
                return False

        _until(up, timeout=300)
        refused = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert answer.model_extra["prism"]["mode"] == "base"
        large = httpx.post(
            url + "/v1/chat/completions", content=b" " * 100_001, headers={"authorization": f"Bearer {key}"}
        )
        assert large.status_code == 413 and "(--max-body-bytes)" in large.json()["error"]["message"]
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "prism serve:" in output and "POST /v1/chat/completions" in output and "401" in output
    assert key not in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--api-key-env", "PRISM_UNSET_KEY_VARIABLE"],
            "--api-key-env PRISM_UNSET_KEY_VARIABLE: that environment variable is not set",
        ),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--body-timeout", "0"], "--body-timeout must be above 0 seconds"),
        (["--gate", "missing.safetensors", "--model", "default"], "no gate file at missing.safetensors"),
    ],
)
def test_bad_serve_options_fail_in_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, argv, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli_options, "load_model", no_model)
    monkeypatch.delenv("PRISM_UNSET_KEY_VARIABLE", raising=False)
    assert main(["serve", "--out", str(tmp_path), *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert main(["serve", "--out", str(tmp_path)]) == 2
    assert "is not a PRISM directory" in capsys.readouterr().err


def test_the_server_package_surface_names_the_modules_that_define_it():
    for name in surface.__all__:
        value = getattr(surface, name)
        if not isinstance(value, dict):
            assert getattr(importlib.import_module(value.__module__), name) is value
    assert not set(surface.__all__) & {"app", "decoding", "engine", "launch", "metrics", "modes", "protocol"}


def test_the_server_answers_in_bfloat16_as_the_toolkit_generates_in_it(tiny_prism, queries, openai_client):
    model_name, files = served_files(tiny_prism)
    model, tokenizer = load_model(model_name, dtype="bfloat16")
    reference, _ = load_model(model_name, dtype="bfloat16")
    load_adapter(reference, GATED, files.adapter)
    prompts = [render(tokenizer, query, Condition("none")) for query in queries[:3]]
    with Routed(reference, Gate.load(files.gate), adapter=GATED):
        expected = [generate(reference, tokenizer, [prompt], max_new_tokens=6, progress=False)[0] for prompt in prompts]
    with ServerThread(build_app(model, tokenizer, files, model_name=model_name)) as server:
        answers = [_ask(openai_client(server), query, temperature=0, max_tokens=6)[0] for query in queries[:3]]
    assert answers == expected
