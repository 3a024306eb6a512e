"""A client for any OpenAI-compatible chat-completions endpoint (``POST {url}/chat/completions``).

Requests run concurrently, at most ``concurrency`` in flight, and come back in request order.
Each request has an overall deadline (connecting, sending, waiting and reading, retries and
their waits included), so a server that trickles its reply cannot hold a run up; the connect
and read timeouts bound each step within it. A 5xx, a 429 (``Retry-After`` in seconds is
honoured) or a broken connection is retried with exponential backoff and jitter, at most
``retries`` times; any other 4xx is not. A request that still has no answer, or whose reply is
not UTF-8, not JSON or lacks ``choices[0].message.content``, gives a ``Reply`` without text and
with a short reason, never an exception: the caller counts it and goes on.

The API key is read from an environment variable (``OPENAI_API_KEY`` unless another is named)
and sent only as ``Authorization: Bearer``; it never appears in a reason, an error or
``repr``. A URL holding credentials (``user:password@host``) is refused; a key is never sent
over plain http except to a loopback host; redirects are not followed (one would carry the key
to another place), they count as failures. Proxies and ``.netrc`` from the environment are not
used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from probes.core.errors import ToolkitError

__all__ = ["DEFAULT_KEY_ENV", "ChatEndpoint", "Reply", "is_loopback"]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
MAX_REPLY_BYTES = 8 * 2**20
T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """One request's outcome: the message text, or ``None`` and why (``failure``); ``attempts`` made."""

    text: str | None
    failure: str | None = None
    attempts: int = 1


class _Retry(Exception):
    """A failed attempt that may be tried again (5xx, 429, a broken connection or a timeout)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ChatEndpoint:
    """An OpenAI-compatible chat endpoint and one model served there.

    Args:
        url: the endpoint's base URL, e.g. ``http://localhost:8000/v1`` or ``https://api.openai.com/v1``; a query
            string is sent with each request but left out of ``url``, the form that is shown and saved.
        model: the model name sent with every request.
        api_key_env: the environment variable holding the API key; when it is named it must be set.
            Default: ``OPENAI_API_KEY`` if set, else no key (a local server).
        concurrency: requests in flight at most.
        deadline: seconds one request may take in all, retries and their waits included.
        connect_timeout, read_timeout: seconds to connect, and to wait for each piece of the reply.
        retries: attempts after the first on a 5xx, a 429, a broken connection or a timeout.
        backoff, backoff_cap: the first retry waits about ``backoff`` seconds, each later one twice as long (a random
            half to all of it), never more than ``backoff_cap``; a longer ``Retry-After`` is waited out if the
            deadline allows.

    Raises:
        ToolkitError: a URL that is not http(s) or holds credentials, a named key variable that is not set, a key to
            be sent over plain http to another machine, or a setting out of range.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 8,
        deadline: float = 120.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
    ) -> None:
        parts = urlsplit(url or "")
        if "@" in parts.netloc or parts.username is not None:
            raise ToolkitError(
                "the judge URL holds credentials (user:password@host): remove them and put the key in "
                f"an environment variable named by --judge-api-key-env (default {DEFAULT_KEY_ENV})"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolkitError(
                "the judge URL is not http(s)://host/...: give the endpoint's base URL, e.g. http://localhost:8000/v1"
            )
        if not model:
            raise ToolkitError("the judge endpoint needs a model name (--judge-model)")
        if concurrency < 1:
            raise ToolkitError(f"the judge's concurrency must be at least 1, got {concurrency}")
        if min(deadline, connect_timeout, read_timeout) <= 0:
            raise ToolkitError(
                f"the judge's timeouts must be positive, got {min(deadline, connect_timeout, read_timeout):g}"
            )
        if retries < 0 or backoff < 0 or backoff_cap < 0:
            raise ToolkitError("the judge's retries and backoff cannot be negative")
        key = (os.environ.get(api_key_env or DEFAULT_KEY_ENV) or "").strip() or None
        if api_key_env and key is None:
            raise ToolkitError(f"the judge's API key variable {api_key_env} is not set in the environment")
        if key and not (key.isascii() and key.isprintable() and " " not in key):
            raise ToolkitError(
                f"the API key in ${api_key_env or DEFAULT_KEY_ENV} holds spaces or characters a header cannot carry"
            )
        if key and parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ToolkitError(
                f"refusing to send the API key over plain http to {parts.hostname}: use https "
                "(plain http is allowed for a server on this machine)"
            )
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))  # shown and saved: no query
        self.endpoint = urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/") + "/chat/completions", parts.query, "")
        )
        self.model, self.concurrency, self.deadline, self.retries = model, concurrency, deadline, retries
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.backoff, self.backoff_cap = backoff, backoff_cap
        self.failures: Counter[str] = Counter()  # reasons of every request that came back without text
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"ChatEndpoint({self.url!r}, {self.model!r}, concurrency={self.concurrency})"

    def complete(self, conversations: Sequence[Sequence[Mapping[str, str]]], **options: Any) -> list[Reply]:
        """One reply per conversation (a list of ``{"role", "content"}`` messages), in order.

        ``options`` join every request's JSON body (``temperature``, ``max_tokens``, ``seed``, ...). Never raises for
        what the server does: failures come back as replies without text and are counted in ``failures``.
        """
        bodies = [
            {"model": self.model, "messages": [dict(message) for message in messages], **options}
            for messages in conversations
        ]
        replies = _run(self._complete_all(bodies)) if bodies else []
        self.failures.update(reply.failure for reply in replies if reply.failure)
        return replies

    async def _complete_all(self, bodies: list[dict]) -> list[Reply]:
        gate = asyncio.Semaphore(self.concurrency)
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout, pool=None)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(
            headers=self._headers, timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
        ) as client:
            return list(await asyncio.gather(*(self._request(client, gate, body) for body in bodies)))

    async def _request(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, body: dict) -> Reply:
        async with gate:
            loop = asyncio.get_running_loop()
            end = loop.time() + self.deadline
            attempt = 0
            while True:
                attempt += 1
                try:
                    text = await asyncio.wait_for(self._attempt(client, body), max(end - loop.time(), 0.0))
                    return Reply(text, None, attempt)
                except asyncio.TimeoutError:
                    return Reply(None, f"no reply within the {self.deadline:g}s deadline", attempt)
                except _Retry as retry:
                    if attempt > self.retries:
                        return Reply(None, f"{retry.reason} (gave up after {attempt} attempts)", attempt)
                    wait = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1)) * self._random.uniform(0.5, 1.0)
                    if retry.wait is not None:  # the server's Retry-After, bounded by the deadline alone
                        wait = max(wait, retry.wait)
                    if loop.time() + wait >= end:
                        return Reply(None, f"{retry.reason} (no time left to retry within the deadline)", attempt)
                    await asyncio.sleep(wait)
                except _Failed as failed:
                    return Reply(None, str(failed), attempt)

    async def _attempt(self, client: httpx.AsyncClient, body: dict) -> str:
        try:
            async with client.stream("POST", self.endpoint, json=body) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise _Retry(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
                if 300 <= status < 400:
                    raise _Failed(f"HTTP {status} redirect (not followed)")
                if status >= 400:
                    raise _Failed(f"HTTP {status}")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_REPLY_BYTES:
                        raise _Failed(f"reply over {MAX_REPLY_BYTES // 2**20} MiB")
        except httpx.TimeoutException as error:
            raise _Retry(f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _Retry(f"connection failed ({type(error).__name__})") from None
        except httpx.HTTPError as error:  # e.g. a body that does not decode as its Content-Encoding says
            raise _Failed(f"request failed ({type(error).__name__})") from None
        return _message_text(bytes(data))


class _Failed(Exception):
    """A failed attempt not worth trying again (a 4xx, a redirect, a malformed reply)."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _message_text(data: bytes) -> str:
    try:
        reply = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Failed("reply not UTF-8") from None
    except json.JSONDecodeError:
        raise _Failed("reply not JSON") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise _Failed("reply without choices[0].message.content")
    return content


def _run(coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` to the end, in a thread of its own when an event loop already runs here (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
