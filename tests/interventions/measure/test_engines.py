"""The engine boundary without vLLM: options, the install hint, and the vLLM client's recovery against a fake server
that dies on request (the real server's tests are in ``test_vllm_engine.py``)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from transformers import AutoTokenizer

from interventions.measure import vllm_process
from interventions.measure.engines import EngineDown, EngineSpec, VllmEngine
from prism.cli import main
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, render


class _Completions(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        server = self.server
        with server.lock:
            server.requests += 1
            dead = server.dead or server.requests == server.die_at
            server.dead = dead
        if dead:
            self.close_connection = True  # an engine that died: the connection drops without a reply
            return
        choice = {"text": "x", "token_ids": body["prompt"][-2:]}
        if body.get("echo"):
            choice["logprobs"] = {"token_logprobs": [None] + [-0.5] * len(body["prompt"])}
        self._send(200, json.dumps({"choices": [choice]}).encode())

    def do_GET(self):  # noqa: N802
        self._send(200, json.dumps({"data": [{"id": "fake"}], "version": "0.0"}).encode())

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class _Restartable:
    """Stands in for ``VllmProcess``: ``restart`` brings the fake engine back."""

    def __init__(self, server):
        self.server, self.restarts, self.log = server, 0, "fake.log"
        self.url, self.served_name, self.version = f"http://127.0.0.1:{server.server_port}/v1", "fake", "0.0"

    def start(self):
        return self

    def restart(self):
        self.restarts += 1
        self.server.dead = False

    def stop(self):
        pass


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    server.lock, server.requests, server.dead, server.die_at = threading.Lock(), 0, False, 3
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_directory):
    return AutoTokenizer.from_pretrained(tiny_llama_directory)


def test_a_dead_engine_the_toolkit_started_is_restarted_and_every_request_answered_once(fake, tokenizer):
    process = _Restartable(fake)
    engine = VllmEngine(tokenizer, process=process, concurrency=4)
    prompts = [render(tokenizer, f"question {i}", Condition("none")) for i in range(8)]
    texts = engine.generate(prompts, max_new_tokens=2)
    assert len(texts) == 8 and process.restarts == 1
    assert engine.option_logprobs(prompts[:2], [[" A", " B"]] * 2) == [[-0.5, -0.5], [-0.5, -0.5]]


def test_a_dead_engine_at_a_url_ends_the_run_in_one_line(fake, tokenizer):
    engine = VllmEngine(tokenizer, url=f"http://127.0.0.1:{fake.server_port}/v1")
    fake.die_at = 1
    with pytest.raises(EngineDown, match="stopped answering") as caught:
        engine.generate([render(tokenizer, "hello", Condition("none"))], max_new_tokens=2)
    assert "\n" not in str(caught.value)


def test_vllm_missing_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.delenv("PRISM_VLLM_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vllm_process, "CHECKOUT", tmp_path)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    (tmp_path / "vllm").mkdir()  # a folder named vllm (a study's output, say) is no vLLM
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolkitError, match="pip install vllm"):
        EngineSpec("vllm").check()


def test_engine_options_are_checked_before_any_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PRISM_VLLM_PYTHON", str(tmp_path / "missing-python"))
    assert main(["bootstrap", "--out", str(tmp_path / "prism"), "--engine", "vllm"]) == 2
    assert main(["bootstrap", "--out", str(tmp_path / "prism"), "--tensor-parallel-size", "2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "PRISM_VLLM_PYTHON" in errors[0] and "--engine vllm" in errors[-1]
    with pytest.raises(ToolkitError, match="--engine-url"):
        EngineSpec("hf", url="http://127.0.0.1:1/v1")
