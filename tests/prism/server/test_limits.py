"""Requests that try to cost the server more than they should, against a real server on 127.0.0.1 (uvicorn with
``prism serve``'s settings, the tiny model): each is refused with its status and one-line message within a bounded
time, and a normal request still gets 200 meanwhile and afterwards."""

from __future__ import annotations

import gc
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest
from transformers import AutoTokenizer

from prism.server.limits import Limits
from prism.server.prompts import Budget, chat_prompt

CHAT = "/v1/chat/completions"
NORMAL = {
    "model": "prism",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 2,
    "temperature": 0,
}
LIMITS = Limits(body_timeout=1.5, keep_alive_timeout=1.0, max_connections=400)


@pytest.fixture(scope="module")
def server(tiny_prism, server_over):
    with server_over(tiny_prism, batch_wait_ms=0, limits=LIMITS) as running:
        yield running


def _normal(server) -> float:
    """A normal request's latency; it must get 200."""
    start = time.monotonic()
    response = httpx.post(server.url + CHAT, json=NORMAL, timeout=30)
    assert response.status_code == 200, response.text
    return time.monotonic() - start


def _refused(response: httpx.Response | tuple, status: int, message: str) -> dict:
    code, text = (response.status_code, response.text) if isinstance(response, httpx.Response) else response
    assert code == status, text
    error = json.loads(text)["error"]
    assert message in error["message"] and "\n" not in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _post(server, content: bytes, path: str = CHAT) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=60)
    return response, time.monotonic() - start


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _send_by_hand(port: int, head: bytes, chunks, timeout: float = 30.0) -> tuple[int, str, float]:
    """Send ``head`` then ``chunks`` (on a thread, stopping when the server closes) and read the answer: (status,
    body, seconds until the whole answer was read)."""
    start = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send() -> None:
        try:
            connection.sendall(head)
            for piece in chunks:
                connection.sendall(piece)
        except OSError:  # the server answered and closed: the rest is not read
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    try:
        while True:
            piece = connection.recv(65536)
            if not piece:
                break
            received += piece
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0:
                length = [
                    line for line in received[:head_end].split(b"\r\n") if line.lower().startswith(b"content-length")
                ]
                if length and len(received) >= head_end + 4 + int(length[0].split(b":")[1]):
                    break
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - start
    connection.close()
    sender.join(timeout)
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2].decode(), elapsed


def test_a_50_mb_body_gets_413_while_it_arrives_and_the_memory_comes_back(server):
    _normal(server)
    gc.collect()
    before = _rss_mb()
    piece = b"x" * 65536
    body = (piece for _ in range(50 * 1024 * 1024 // len(piece)))
    declared = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    status, text, elapsed = _send_by_hand(server.port, declared, body)
    _refused((status, text), 413, "above this server's limit of 4194304")
    assert elapsed < 2, elapsed  # refused from its Content-Length, before the body is read
    body = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(50 * 1024 * 1024 // len(piece)))
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    status, text, elapsed = _send_by_hand(server.port, chunked, body)
    _refused((status, text), 413, "above this server's limit of 4194304 bytes (--max-body-bytes)")
    assert elapsed < 5, elapsed  # refused once 4 MiB had arrived
    gc.collect()
    assert _rss_mb() - before < 200
    assert _normal(server) < 5


def test_many_messages_are_refused_before_rendering_and_long_conversations_render_in_linear_time(
    server, tiny_model_directory
):
    turns = [{"role": ("user", "assistant")[index % 2], "content": "hi"} for index in range(10_001)]
    response, elapsed = _post(server, json.dumps({"messages": turns}).encode())
    error = _refused(response, 400, "messages has 10001 entries, above this server's limit of 2048")
    assert error["param"] == "messages"
    assert elapsed < 2, elapsed
    response, elapsed = _post(server, json.dumps({"messages": turns[:2001]}).encode())
    assert _refused(response, 400, "the model's context")["code"] == "context_length_exceeded"
    assert elapsed < 2, elapsed
    long = {"messages": [{"role": "user", "content": "word " * 100_000}]}
    response, elapsed = _post(server, json.dumps(long).encode())
    assert _refused(response, 400, "characters, more than the model's context of 512 tokens can hold")
    assert elapsed < 2, elapsed
    response, _ = _post(server, json.dumps({"messages": [{"role": "user", "content": "a" * 1_000_001}]}).encode())
    _refused(response, 400, "has 1000001 characters, above this server's limit of 1000000 (--max-message-chars)")
    _normal(server)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_directory)
    budget = Budget(n_ctx=10**9, longest_token=81, limits=Limits(max_messages=20_001))

    def rendering(n: int) -> float:
        body = {
            "messages": [
                {"role": ("user", "assistant")[index % 2], "content": f"turn {index}"} for index in range(n + 1 - n % 2)
            ]
        }
        times = []
        for _ in range(3):  # the fastest of three: the machine's other work only ever adds time
            start = time.monotonic()
            assert len(chat_prompt(tokenizer, body, budget)) > 5 * n
            times.append(time.monotonic() - start)
        return min(times)

    small, large = rendering(1_000), rendering(10_000)
    assert large < 20 * small + 0.2, (small, large)  # linear: about 10x (quadratic would be 100x)


MALFORMED = [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
    (b'{"temperature": 1e999999, "messages": []}', "the number 1e999999 is out of range"),
    (b'{"seed": ' + b"9" * 5000 + b"}", "a number has too many digits"),
    (b'{"temperature": NaN}', "NaN is not a JSON number"),
    (b'{"model": "prism", "model": "base"}', 'duplicate key "model"'),
    (b'[{"model": "prism"}]', "the request body must be a JSON object"),
    (b'{"messages": [}', "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
]


@pytest.mark.parametrize("content, message", MALFORMED, ids=[message for _, message in MALFORMED])
def test_malformed_json_of_any_shape_gets_400(server, content, message):
    response, elapsed = _post(server, content)
    assert _refused(response, 400, message)["code"] == "invalid_json"
    assert elapsed < 2, elapsed
    _normal(server)


ATTACK = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
bad = [json.dumps({"messages": [{"role": ("user", "assistant")[i % 2], "content": "hi " * 40} for i in range(2047)]}),
       json.dumps({"messages": [{"role": "user", "content": "word " * 4000}]}),
       json.dumps({"messages": [{"role": "user", "content": "a" * 900_000}]}),
       "[" * 3_000_000]
end, sent = time.monotonic() + seconds, 0
with httpx.Client(timeout=60) as client:
    while time.monotonic() < end:
        assert client.post(url, content=bad[sent % len(bad)].encode()).status_code == 400
        sent += 1
print(sent)
"""


def test_a_normal_request_does_not_wait_on_bad_ones(server):
    alone = statistics.median(_normal(server) for _ in range(7))
    attacker = subprocess.Popen(
        [sys.executable, "-c", ATTACK, server.url + CHAT, "6"], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.0)
        together = statistics.median(_normal(server) for _ in range(7))
    finally:
        refused = int(attacker.communicate(timeout=60)[0])
    assert refused >= 4 and attacker.returncode == 0  # bad requests were being refused all along
    assert together < 2 * alone + 0.1, (alone, together)


def test_stalled_bodies_get_408_and_their_connections_are_closed(server):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    start = time.monotonic()
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
    for connection in stalled:
        connection.sendall(head)
    assert _normal(server) < 5  # served while 300 connections stall
    answers = []
    for connection in stalled:
        received = b""
        while piece := connection.recv(65536):
            received += piece  # until the server closes the connection
        answers.append(received)
        connection.close()
    elapsed = time.monotonic() - start
    for received in answers:
        status, _, rest = received.partition(b"\r\n")
        _refused(
            (int(status.split()[1]), rest.partition(b"\r\n\r\n")[2].decode()),
            408,
            "the request body did not arrive within 1.5 seconds (--body-timeout)",
        )
    assert elapsed < 1.5 + 5, elapsed
    _normal(server)


def _closed_within(connection: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``connection`` (reading and dropping what it sends)."""
    start = time.monotonic()
    connection.settimeout(seconds)
    while connection.recv(65536):
        pass
    return time.monotonic() - start


def test_idle_connections_and_unfinished_heads_are_closed(server):
    idle = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: te")
    kept = socket.create_connection(("127.0.0.1", server.port))
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    for connection in (idle, half, kept):
        assert _closed_within(connection, 10) < LIMITS.keep_alive_timeout + 2
        connection.close()
    _normal(server)


def test_connections_beyond_the_limit_get_503(tiny_prism, server_over):
    with server_over(tiny_prism, limits=Limits(max_connections=8, keep_alive_timeout=30)) as narrow:
        held = [socket.create_connection(("127.0.0.1", narrow.port)) for _ in range(8)]
        try:
            time.sleep(0.2)
            start = time.monotonic()
            response = httpx.post(narrow.url + CHAT, json=NORMAL, timeout=30)
            assert response.status_code == 503 and len(response.text.splitlines()) == 1
            assert time.monotonic() - start < 2
        finally:
            for connection in held:
                connection.close()
        time.sleep(0.2)
        _normal(narrow)
