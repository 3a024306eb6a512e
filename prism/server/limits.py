"""What one request or connection may cost the server, and the two pieces that enforce it below the endpoints.

``Limits`` holds every bound (each a ``prism serve`` option). Two of them are enforced by uvicorn
itself: ``max_connections`` (``limit_concurrency``: beyond it uvicorn answers 503) and
``keep_alive_timeout`` (``timeout_keep_alive``: an idle connection between requests is closed).
Two need a little more than uvicorn offers:

- ``BodyLimit``, an ASGI middleware, reads a request's body before the endpoint sees it: a
  ``Content-Length`` above ``max_body_bytes`` gets 413 before a byte is read, a body that grows
  past it while it arrives gets 413 at once (the server never holds more than the limit), and a
  body that has not all arrived within ``body_timeout`` seconds gets 408; each closes the connection.
- ``HeadDeadline``, uvicorn's h11 protocol with one more timer: a connection that has not sent a
  whole request head within ``keep_alive_timeout`` seconds of opening (or of its last answer) is
  closed. uvicorn times idle connections only after a first answer, so a client could otherwise
  hold a connection (and a place under ``max_connections``) by sending nothing, or half a head.

The checks on a request's content (messages, characters, prompt tokens) are ``prism.server.protocol``'s.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BodyLimit", "HeadDeadline", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one request or connection can cause (see the module docstring).

    Attributes:
        max_body_bytes: the largest request body (413 above it).
        body_timeout: seconds a request's body may take to arrive once its head has (408 after it).
        keep_alive_timeout: seconds a connection may stay idle, or take to send a request's head, before it is closed.
        max_connections: open connections (and requests in progress) at most; uvicorn answers 503 beyond.
        max_messages: chat messages in one request at most (400 above it).
        max_message_chars: characters in one message's content, or one completion prompt, at most (400 above it).
    """

    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512
    max_messages: int = 2048
    max_message_chars: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_connections", "max_messages", "max_message_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0 seconds, got {getattr(self, name)}")


def _error(status: int, message: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()


class BodyLimit:
    """ASGI middleware: a request's body, bounded in size and time, read before the app sees it (module docstring).

    Args:
        app: the ASGI app it wraps.
        max_bytes: the largest body.
        timeout: seconds the body may take to arrive.
        refused: called with ``(path, status)`` for each request refused here (for the metrics).
    """

    def __init__(
        self, app, *, max_bytes: int, timeout: float, refused: Callable[[str, int], None] | None = None
    ) -> None:
        self.app, self.max_bytes, self.timeout, self.refused = app, max_bytes, timeout, refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(
                scope,
                send,
                413,
                f"the request body has {int(declared)} bytes, above this server's "
                f"limit of {self.max_bytes} (--max-body-bytes)",
                "body_too_large",
            )
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client went away before its body was complete
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        chunks.clear()
                        await self._refuse(
                            scope,
                            send,
                            413,
                            f"the request body is above this server's limit of "
                            f"{self.max_bytes} bytes (--max-body-bytes)",
                            "body_too_large",
                        )
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            chunks.clear()
            await self._refuse(
                scope,
                send,
                408,
                f"the request body did not arrive within {self.timeout:g} seconds (--body-timeout)",
                "request_timeout",
            )
            return
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        chunks.clear()
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return whole
            return await receive()  # after the body: the disconnect, when the client goes away

        await self.app(scope, replay, send)

    async def _refuse(self, scope, send, status: int, message: str, code: str) -> None:
        if self.refused is not None:
            self.refused(scope.get("path", ""), status)
        content = _error(status, message, code)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol that closes a connection which has not sent a whole request head within
    ``timeout_keep_alive`` seconds of opening or of its last answer (see the module docstring)."""

    _deadline: asyncio.TimerHandle | None = None
    _waiting_after = None  # the request cycle that was current when the timer was armed

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._waiting_after:
            self._disarm()  # a request head arrived: its body has its own deadline (BodyLimit)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        pipelined = self.cycle is not None and not self.cycle.response_complete
        if not self.transport.is_closing() and not pipelined:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_after = self.cycle
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
