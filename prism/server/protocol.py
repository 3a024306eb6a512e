"""The OpenAI wire format of ``prism serve``: requests checked into prompts and settings, answers and chunks built.

Every bad request raises ``ApiError``, which the app sends as OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``) with its status; the message is one line
naming the parameter. Chat messages are rendered with the toolkit's own chat-template
rendering (``render_messages``, ``render_conversation``): a conversation without a system
message gets the empty one the gate was trained with (``Condition("none")``), so a lone user
message becomes exactly the prompt ``prism route`` answers. A conversation alternates user and
assistant turns after an optional system message and ends with a user turn.

No request costs more than its size allows (``Budget``): the body is parsed as strict JSON (a
duplicate key, a non-finite number or nesting too deep is a 400, never a 500); the number of
messages and the characters of each are checked before anything is rendered; a prompt longer, in
characters, than the context could hold at the tokenizer's longest token is refused before it is
tokenised; the rest is rendered in one pass of the chat template (linear in its length) and
tokenised in growing prefixes, stopping as soon as a prefix is over the context.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prism.server.limits import Limits
from probes.core.errors import ToolkitError
from probes.core.prompts import continue_conversation, render_messages

__all__ = ["ApiError", "Budget", "Settings", "answer", "chat_prompt", "chunk", "completion_prompt", "encode_within",
           "fit_context", "new_id", "parse_body", "settings"]

ROLES = ("system", "developer", "user", "assistant")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
# parameters this server cannot honour, with the value that asks for nothing
UNSUPPORTED = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "logprobs": False, "top_logprobs": 0,
               "tools": [], "functions": [], "best_of": 1, "echo": False, "suffix": ""}


class ApiError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
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
        raise _bad(f"the request body is not valid JSON: {error}", None, "invalid_json") from None
    except RecursionError:
        raise _bad("the request body is not valid JSON: it is nested too deeply", None, "invalid_json") from None
    except UnicodeDecodeError:
        raise _bad("the request body is not valid JSON: it is not UTF-8 text", None, "invalid_json") from None
    except ValueError as error:
        reason = str(error) if isinstance(error, json.JSONDecodeError) else "a number has too many digits"
        raise _bad(f"the request body is not valid JSON: {reason}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    return body


@dataclass(frozen=True)
class Budget:
    """What a prompt may be: the model's context, the tokenizer's longest token and the server's limits.

    Attributes:
        n_ctx: the model's context in tokens.
        longest_token: the most characters one token stands for (its longest vocabulary entry).
        limits: the server's limits (messages per request, characters per message).
    """

    n_ctx: int
    longest_token: int
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def of(cls, tokenizer, n_ctx: int, limits: Limits | None = None) -> "Budget":
        """The budget of ``tokenizer`` over a context of ``n_ctx`` tokens."""
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        return cls(n_ctx, max(1, longest), limits or Limits())

    @property
    def max_chars(self) -> int:
        """Characters beyond which a text cannot fit the context, whatever its tokens."""
        return self.n_ctx * self.longest_token


def _too_long(what: str, param: str) -> ApiError:
    return ApiError(400, f"{what}: shorten the {param}", param=param, code="context_length_exceeded")


def _cut(text: str, at: int) -> int:
    """A place at or before ``at`` where a whitespace run begins after other text (a boundary every pre-tokenizer
    that splits on whitespace keeps), or ``at`` when the second half of ``text[:at]`` holds none."""
    space = max(text.rfind(" ", at // 2, at), text.rfind("\n", at // 2, at))
    if space <= 0:
        return at
    while space > at // 2 and text[space - 1].isspace():
        space -= 1
    return space if space > 0 else at


def encode_within(tokenizer, text: str, budget: Budget, *, add_special_tokens: bool, param: str) -> list[int]:
    """The token ids of ``text``, tokenised only as far as needed to see whether it fits the context.

    A text longer than ``budget.max_chars`` is refused untokenised; a longer one than the first window (eight
    characters per context token) is tokenised in prefixes that double, cut where a whitespace run begins, and refused
    as soon as a prefix is over the context; the text that fits is tokenised whole.

    Raises:
        ApiError: 400 (``context_length_exceeded``) when the text has more tokens than the context.
    """
    n_ctx = budget.n_ctx
    if len(text) > budget.max_chars:
        raise _too_long(f"the prompt has {len(text)} characters, more than the model's context of {n_ctx} tokens can "
                        "hold", param)
    window = 8 * (n_ctx + 1)
    while len(text) > window:
        prefix = text[:_cut(text, window)]
        if len(tokenizer(prefix, add_special_tokens=add_special_tokens)["input_ids"]) > n_ctx:
            raise _too_long(f"the prompt has more than {n_ctx} tokens, the model's context", param)
        window *= 2
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


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


def _number(body: dict, name: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{name} must be a number, got {json.dumps(value)}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise _bad(f"{name} must be in {bracket}{low:g}, {high:g}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _bad(f"{name} must be an integer, got {json.dumps(value)}", name, "invalid_type")
    return value


def settings(body: dict) -> Settings:
    """The generation settings of a chat or completion request.

    Raises:
        ApiError: 400 for a temperature outside [0, 2], top_p outside (0, 1], max_tokens below 1, n other than 1, a
            seed out of range, a stop that is not a string or a list of at most 4 non-empty strings, a model or
            stream of the wrong type, or a parameter this server cannot honour (penalties, logprobs, tools, ...).
    """
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model", "invalid_type")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name)
    if max_tokens is not None and max_tokens < 1:
        raise _bad(f"{name} must be at least 1, got {max_tokens}", name)
    n = _integer(body, "n")
    if n not in (None, 1):
        raise _bad(f"n must be 1 (one answer per request), got {n}", "n")
    seed = _integer(body, "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise _bad(f"seed must be a 64-bit integer, got {seed}", "seed")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None else None
    if stops is None or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise _bad("stop must be a non-empty string or a list of at most 4 non-empty strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream must be true or false", "stream", "invalid_type")
    for name, default in UNSUPPORTED.items():
        if body.get(name) not in (None, default):
            raise _bad(f"{name} is not supported by this server: leave it out", name, "unsupported_parameter")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options", "invalid_type")
    return Settings(model=model, max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                    top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), stop=stops, seed=seed,
                    stream=bool(stream), include_usage=bool(options.get("include_usage", False)))


def _content(message: Any, index: int, max_chars: int) -> tuple[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _bad(f"{where} must be an object with a role and a content", where, "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise _bad(f"{where}.content may only hold text parts", f"{where}.content")
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str) or (role != "system" and role != "developer" and not content.strip()):
        raise _bad(f"{where}.content must be a non-empty string", f"{where}.content")
    if len(content) > max_chars:
        raise _bad(f"{where}.content has {len(content)} characters, above this server's limit of {max_chars} "
                   "(--max-message-chars)", f"{where}.content", "string_above_max_length")
    return ("system" if role == "developer" else role), content


def chat_prompt(tokenizer, body: dict, budget: Budget | None = None) -> list[int]:
    """The token ids of a chat request's messages, rendered through the chat template (see the module docstring);
    ``budget`` bounds them (default: the tokenizer's ``model_max_length`` as the context, and the default limits).

    Raises:
        ApiError: 400 for missing, empty or too many messages, an unknown role, empty or too long content, turns out of
            order, or messages that cannot fit the context.
    """
    budget = budget or Budget.of(tokenizer, tokenizer.model_max_length)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages",
                   "missing_required_parameter" if messages is None else "invalid_value")
    limit = budget.limits.max_messages
    if len(messages) > limit:
        raise _bad(f"messages has {len(messages)} entries, above this server's limit of {limit} (--max-messages)",
                   "messages", "array_above_max_length")
    turns = [_content(message, index, budget.limits.max_message_chars) for index, message in enumerate(messages)]
    system = turns[0][1] if turns[0][0] == "system" else ""
    turns = turns[1:] if turns[0][0] == "system" else turns
    roles = [role for role, _ in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        shown = ", ".join(roles[:8]) + (f", ... ({len(roles)} in all)" if len(roles) > 8 else "")
        raise _bad("after an optional system message, messages must alternate user and assistant and end with a user "
                   f"message, got roles {shown or 'none'}", "messages")
    chars = len(system) + sum(len(content) for _, content in turns)
    if chars > budget.max_chars:
        raise _too_long(f"the messages have {chars} characters, more than the model's context of {budget.n_ctx} "
                        "tokens can hold", "messages")
    try:
        prompt = render_messages(tokenizer, system, turns[0][1])
        if len(turns) > 1:
            prompt = continue_conversation(tokenizer, prompt, [(reply, follow_up) for (_, reply), (_, follow_up)
                                                               in zip(turns[1::2], turns[2::2])])
    except ToolkitError as error:
        raise _bad(str(error), "messages") from None
    return encode_within(tokenizer, prompt.text, budget, add_special_tokens=prompt.add_special_tokens, param="messages")


def completion_prompt(tokenizer, body: dict, budget: Budget | None = None) -> list[int]:
    """The token ids of a completion request's prompt: the text as it is, no chat template (``budget`` as
    ``chat_prompt``'s).

    Raises:
        ApiError: 400 for a missing, empty or non-text prompt, more than one prompt, or one that cannot fit the context.
    """
    budget = budget or Budget.of(tokenizer, tokenizer.model_max_length)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt must be one non-empty string", "prompt",
                   "missing_required_parameter" if prompt is None else "invalid_value")
    limit = budget.limits.max_message_chars
    if len(prompt) > limit:
        raise _bad(f"prompt has {len(prompt)} characters, above this server's limit of {limit} (--max-message-chars)",
                   "prompt", "string_above_max_length")
    return encode_within(tokenizer, prompt, budget, add_special_tokens=True, param="prompt")


def fit_context(n_prompt: int, max_tokens: int | None, default: int, n_ctx: int) -> int:
    """The tokens to generate: ``max_tokens``, or ``default`` cut to what the context leaves.

    Raises:
        ApiError: 400 (``context_length_exceeded``) when the prompt and ``max_tokens`` do not fit the context.
    """
    room = n_ctx - n_prompt
    if max_tokens is None and room >= 1:
        return min(default, room)
    if max_tokens is None or max_tokens > room:
        asked = f" plus max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ApiError(400, f"the prompt has {n_prompt} tokens{asked} but the model's context is {n_ctx} tokens: "
                            "shorten the messages or lower max_tokens", param="messages", code="context_length_exceeded")
    return max_tokens


def _usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def new_id(chat: bool) -> str:
    """A fresh answer id, as OpenAI's look: ``chatcmpl-...`` or ``cmpl-...``."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def answer(chat: bool, ident: str, model: str, text: str, finish: str, n_prompt: int, n_completion: int,
           prism: dict) -> dict:
    """A whole answer: a chat completion or a text completion, with the ``prism`` route field."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(n_prompt, n_completion), "prism": prism}


def chunk(chat: bool, ident: str, model: str, *, text: str | None = None, first: bool = False, finish: str | None = None,
          prism: dict | None = None, usage: tuple[int, int] | None = None) -> dict:
    """One streamed chunk: the role (``first``), a piece of text, the finish reason, or (no choices) the usage."""
    if chat:
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    body = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [] if usage is not None else [choice]}
    if prism is not None:
        body["prism"] = prism
    if usage is not None:
        body["usage"] = _usage(*usage)
    return body
