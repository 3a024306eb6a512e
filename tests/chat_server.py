"""A real OpenAI-compatible chat server on 127.0.0.1 that misbehaves on request, for the judge's tests.

The first part of the request path picks the behaviour (``http://127.0.0.1:PORT/<mode>/v1``):

- ``good``: a rating that depends on the user message, echoing it: ``Rating: [[n]]. You said '...'``
- ``slow``: the same after 0.3 s (the server counts how many requests it holds at once)
- ``flaky``: HTTP 500 on the first request, then ``good``
- ``busy``: HTTP 429 with ``Retry-After: 0.3`` on the first request, then ``good``
- ``down``: HTTP 503 always
- ``reset``: the connection closed without a reply on the first request, then ``good``
- ``unauthorised``: HTTP 401 always
- ``garbage``: 200 with a body that is not JSON; ``latin1``: 200 with bytes that are not UTF-8
- ``empty``: 200 with JSON holding no choices; ``unrated``: 200 with a message that holds no rating
- ``trickle``: a 200 reply sent one byte every 0.1 s (about 30 s in all, unless the client hangs up)
- ``redirect``: 302 to ``redirect_to`` (another server) + the same path
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANNED = {  # mode -> the status and body every request of it gets
    "unauthorised": (401, b'{"error": "bad key"}'),
    "garbage": (200, b"<html>Rating: [[7]] but not JSON</html>"),
    "latin1": (200, '{"choices": [{"message": {"content": "Bewertung: [[5]] \u00e9"}}]}'.encode("latin-1")),
    "empty": (200, b'{"choices": []}'),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FakeChatServer"

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.path.strip("/").split("/")[0]
        seen = self.server.record(mode, self.path, dict(self.headers), body)
        if mode == "slow":
            with self.server.lock:
                self.server.in_flight += 1
                self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            time.sleep(0.3)
            with self.server.lock:
                self.server.in_flight -= 1
        if mode == "flaky" and seen == 1 or mode == "down":
            return self._send(500 if mode == "flaky" else 503, b'{"error": "overloaded"}')
        if mode == "busy" and seen == 1:
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0.3"})
        if mode == "reset" and seen == 1:
            self.close_connection = True
            return
        if mode in CANNED:
            status, data = CANNED[mode]
            return self._send(status, data)
        if mode == "redirect":
            return self._send(302, b"", {"Location": self.server.redirect_to + self.path})
        if mode == "trickle":
            return self._trickle(_completion("Rating: [[6]]"))
        message = json.loads(body)["messages"][-1]["content"]
        content = (
            "I have no opinion." if mode == "unrated" else f"Rating: [[{len(message) % 9 + 1}]]. You said {message!r}"
        )
        return self._send(200, _completion(content))

    def _send(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **(headers or {}),
        }.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, data: bytes) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        try:
            for byte in (head + data)[:300]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True

    def log_message(self, *args):
        pass


def _completion(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class FakeChatServer(ThreadingHTTPServer):
    """The server, serving from a thread of its own; ``requests`` holds ``(mode, path, headers, body)`` of each."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.times: list[float] = []
        self.seen: Counter[str] = Counter()
        self.in_flight = self.most_in_flight = 0
        self.redirect_to = ""
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def record(self, mode: str, path: str, headers: dict, body: bytes) -> int:
        with self.lock:
            self.requests.append((mode, path, headers, body))
            self.times.append(time.monotonic())
            self.seen[mode] += 1
            return self.seen[mode]

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{mode}/v1"

    def __enter__(self) -> "FakeChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
