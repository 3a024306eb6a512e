"""The OpenAI wire format of ``prism serve``: requests checked into prompts and settings, answers and chunks built.

Every bad request raises ``ApiError``, which the app sends as OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``) with its status; the message is one line
naming the parameter. The body is parsed as strict JSON: a duplicate key, a non-finite number or
nesting too deep is a 400, never a 500. A request's prompt is ``prism.server.prompts``'.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiError",
    "MAX_LOGPROBS",
    "Settings",
    "answer",
    "bad",
    "choice",
    "chunk",
    "new_id",
    "parse_body",
    "settings",
]

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
# parameters this server cannot honour, with the value that asks for nothing
UNSUPPORTED = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logit_bias": {},
    "tools": [],
    "functions": [],
    "best_of": 1,
    "suffix": "",
}
MAX_LOGPROBS = 20  # most likely tokens reported per position at most (OpenAI's and vLLM's default bound)


def failure(kind: str, message: str) -> "ApiError":
    """A worker's ``error`` event as a 500; ``unavailable`` (an inference engine down or not ready) as a 503, which the
    app answers with ``Retry-After``."""
    if kind == "unavailable":
        return ApiError(503, message, type="server_overloaded", code="engine_unavailable")
    return ApiError(500, message, type="server_error")


class ApiError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


class _Malformed(ValueError):
    """A JSON text that parses but is not what a request may be: a duplicate key or a non-finite number."""


def _object(pairs: list[tuple[str, Any]]) -> dict:
    body = {}
    for key, value in pairs:
        if key in body:
            raise _Malformed(f"duplicate key {json.dumps(key)[:80]}")
        body[key] = value
    return body


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Malformed(f"the number {text[:40]} is out of range")
    return value


def _constant(name: str) -> float:
    raise _Malformed(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict:
    """The request's JSON object, parsed strictly (see the module docstring)."""
    try:
        body = json.loads(raw, object_pairs_hook=_object, parse_float=_finite, parse_constant=_constant)
    except _Malformed as error:
        raise bad(f"the request body is not valid JSON: {error}", None, "invalid_json") from None
    except RecursionError:
        raise bad("the request body is not valid JSON: it is nested too deeply", None, "invalid_json") from None
    except UnicodeDecodeError:
        raise bad("the request body is not valid JSON: it is not UTF-8 text", None, "invalid_json") from None
    except ValueError as error:
        reason = str(error) if isinstance(error, json.JSONDecodeError) else "a number has too many digits"
        raise bad(f"the request body is not valid JSON: {reason}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    return body


@dataclass(frozen=True)
class Settings:
    """A request's generation settings, checked (``max_tokens`` and ``seed`` None where not given)."""

    model: str | None
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: int | None = None
    echo: bool = False


def _number(body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{name} must be a number, got {json.dumps(value)}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise bad(f"{name} must be in {bracket}{low:g}, {high:g}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad(f"{name} must be an integer, got {json.dumps(value)}", name, "invalid_type")
    return value


def _logprobs(body: dict, chat: bool) -> tuple[int | None, bool]:
    """``(logprobs, echo)``: how many most likely tokens to report per token (None: no log-probabilities), and
    whether a completion's prompt is echoed with its log-probabilities. Chat takes ``logprobs: true`` and
    ``top_logprobs``; completions an integer ``logprobs`` and ``echo``."""
    if chat:
        wanted, top = body.get("logprobs"), _integer(body, "top_logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise bad(f"logprobs must be true or false, got {json.dumps(wanted)[:40]}", "logprobs", "invalid_type")
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise bad(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {top}", "top_logprobs")
        if top and not wanted:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        return (top or 0) if wanted else None, False
    top, echo = _integer(body, "logprobs"), body.get("echo", False)
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise bad(f"logprobs must be in [0, {MAX_LOGPROBS}], got {top}", "logprobs")
    if echo is not None and not isinstance(echo, bool):
        raise bad("echo must be true or false", "echo", "invalid_type")
    return top, bool(echo)


def settings(body: dict, chat: bool = True) -> Settings:
    """The generation settings of a chat (``chat``) or completion request.

    Raises:
        ApiError: 400 for a temperature outside [0, 2], top_p outside (0, 1], max_tokens below 1 (0 is an echo's
            prompt alone), n other than 1, a seed out of range, a stop that is not a string or a list of at most 4
            non-empty strings, a model or stream of the wrong type, logprobs out of range or with a stream, or a
            parameter this server cannot honour (penalties, tools, ...).
    """
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model must be a string", "model", "invalid_type")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name)
    logprobs, echo = _logprobs(body, chat)
    if max_tokens is not None and max_tokens < (0 if echo else 1):
        raise bad(f"{name} must be at least 1 (0 only with echo), got {max_tokens}", name)
    n = _integer(body, "n")
    if n not in (None, 1):
        raise bad(f"n must be 1 (one answer per request), got {n}", "n")
    seed = _integer(body, "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise bad(f"seed must be a 64-bit integer, got {seed}", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("stream must be true or false", "stream", "invalid_type")
    for name, default in UNSUPPORTED.items():
        if body.get(name) not in (None, default):
            raise bad(f"{name} is not supported by this server: leave it out", name, "unsupported_parameter")
    if stream and (logprobs is not None or echo):
        raise bad(
            "logprobs and echo are not supported with stream: leave stream out", "stream", "unsupported_parameter"
        )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options", "invalid_type")
    return Settings(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stops(body.get("stop")),
        seed=seed,
        stream=bool(stream),
        include_usage=bool(options.get("include_usage", False)),
        logprobs=logprobs,
        echo=echo,
    )


def _stops(stop: object) -> tuple[str, ...]:
    """A request's ``stop``: a string or a list of at most 4 non-empty strings (400 otherwise)."""
    stops = (
        (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None else None
    )
    if stops is None or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop")
    return stops


def _usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def new_id(chat: bool) -> str:
    """A fresh answer id, as OpenAI's look: ``chatcmpl-...`` or ``cmpl-...``."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def choice(
    chat: bool, index: int, text: str, finish: str, logprobs: dict | None = None, prism: dict | None = None
) -> dict:
    """One choice of a whole answer: the chat message or the completion's text, its log-probabilities (or None) and,
    for a completion, its prompt's ``prism`` route."""
    if chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish} | (
        {"prism": prism} if prism is not None else {}
    )


def answer(
    chat: bool, ident: str, model: str, choices: list[dict], n_prompt: int, n_completion: int, prism: dict
) -> dict:
    """A whole answer: a chat completion or a text completion (one choice per prompt), with the ``prism`` route field
    (a batch of prompts: the first one's; each choice has its own)."""
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(n_prompt, n_completion),
        "prism": prism,
    }


def chunk(
    chat: bool,
    ident: str,
    model: str,
    *,
    text: str | None = None,
    first: bool = False,
    finish: str | None = None,
    prism: dict | None = None,
    usage: tuple[int, int] | None = None,
) -> dict:
    """One streamed chunk: the role (``first``), a piece of text, the finish reason, or (no choices) the usage."""
    if chat:
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    body = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage is not None else [choice],
    }
    if prism is not None:
        body["prism"] = prism
    if usage is not None:
        body["usage"] = _usage(*usage)
    return body
