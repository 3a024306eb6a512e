"""A streamed answer: server-sent events in OpenAI's chunk format ending with ``data: [DONE]``, and the response that
sends them and takes its request out of the engine however it ends."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from prism.server.engine import Engine, Job
from prism.server.protocol import chunk, failure

__all__ = ["EventStream", "sse_lines"]


async def sse_lines(
    events: asyncio.Queue, chat: bool, ident: str, mode: str, prism: dict, usage: bool, finished: Callable[[int], None]
) -> AsyncIterator[str]:
    """A streamed answer's server-sent events from its job's events (after the route): the role (chat), each piece of
    text, the finish reason with the ``prism`` route, the usage (``usage``), then ``data: [DONE]``; ``finished`` gets
    the status (499 when the client went away first)."""
    status = 499  # the client went away, unless the answer ends
    try:
        if chat:
            yield _sse(chunk(chat, ident, mode, first=True, prism=prism))
        while True:
            kind, *rest = await events.get()
            if kind == "delta":
                yield _sse(chunk(chat, ident, mode, text=rest[0]))
                continue
            if kind in ("error", "unavailable"):
                error = failure(kind, rest[0])
                status = error.status
                yield _sse(error.body())
            else:
                status = 200
                yield _sse(chunk(chat, ident, mode, finish=rest[0], prism=prism))
                if usage:
                    yield _sse(chunk(chat, ident, mode, usage=(rest[1], rest[2])))
            yield "data: [DONE]\n\n"
            return
    finally:
        finished(status)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A streamed answer whose request leaves the engine whenever the response ends (a client that went away too)."""

    def __init__(self, content, engine: Engine, job: Job, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.engine, self.job = engine, job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)
