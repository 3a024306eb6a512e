"""A request's prompt: chat messages rendered through the chat template, or a completion's text, as token ids, at a
cost bounded by the request's size.

Chat messages are rendered with the toolkit's own chat-template rendering (``render_messages``,
``render_conversation``): a conversation without a system message gets the empty one the gate
was trained with (``Condition("none")``), so a lone user message becomes exactly the prompt
``prism route`` answers. A conversation alternates user and assistant turns after an optional
system message and ends with a user turn.

No prompt costs more than its size allows (``Budget``): the number of messages and the characters
of each are checked before anything is rendered; a prompt longer, in characters, than the context
could hold at the tokenizer's longest token is refused before it is tokenised; the rest is
rendered in one pass of the chat template (linear in its length) and tokenised in growing
prefixes, stopping as soon as a prefix is over the context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from prism.server.limits import Limits
from prism.server.protocol import ApiError, bad
from probes.core.errors import ToolkitError
from probes.core.prompts import render_conversation, render_messages

__all__ = ["Budget", "chat_prompt", "completion_prompts", "encode_within", "fit_context"]

ROLES = ("system", "developer", "user", "assistant")


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
    as soon as a prefix is over the context; otherwise the text is tokenised whole (``fit_context`` then checks its
    exact length).

    Raises:
        ApiError: 400 (``context_length_exceeded``) when the text has more tokens than the context.
    """
    n_ctx = budget.n_ctx
    if len(text) > budget.max_chars:
        raise _too_long(
            f"the prompt has {len(text)} characters, more than the model's context of {n_ctx} tokens can hold", param
        )
    window = 8 * (n_ctx + 1)
    while len(text) > window:
        prefix = text[: _cut(text, window)]
        if len(tokenizer(prefix, add_special_tokens=add_special_tokens)["input_ids"]) > n_ctx:
            raise _too_long(f"the prompt has more than {n_ctx} tokens, the model's context", param)
        window *= 2
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def _content(message: Any, index: int, max_chars: int) -> tuple[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(f"{where} must be an object with a role and a content", where, "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            raise bad(f"{where}.content may only hold text parts", f"{where}.content")
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str) or (role != "system" and role != "developer" and not content.strip()):
        raise bad(f"{where}.content must be a non-empty string", f"{where}.content")
    if len(content) > max_chars:
        raise bad(
            f"{where}.content has {len(content)} characters, above this server's limit of {max_chars} "
            "(--max-message-chars)",
            f"{where}.content",
            "string_above_max_length",
        )
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
        raise bad(
            "messages must be a non-empty list of {role, content} objects",
            "messages",
            "missing_required_parameter" if messages is None else "invalid_value",
        )
    limit = budget.limits.max_messages
    if len(messages) > limit:
        raise bad(
            f"messages has {len(messages)} entries, above this server's limit of {limit} (--max-messages)",
            "messages",
            "array_above_max_length",
        )
    turns = [_content(message, index, budget.limits.max_message_chars) for index, message in enumerate(messages)]
    system = turns[0][1] if turns[0][0] == "system" else ""
    turns = turns[1:] if turns[0][0] == "system" else turns
    roles = [role for role, _ in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        shown = ", ".join(roles[:8]) + (f", ... ({len(roles)} in all)" if len(roles) > 8 else "")
        raise bad(
            "after an optional system message, messages must alternate user and assistant and end with a user "
            f"message, got roles {shown or 'none'}",
            "messages",
        )
    chars = len(system) + sum(len(content) for _, content in turns)
    if chars > budget.max_chars:
        raise _too_long(
            f"the messages have {chars} characters, more than the model's context of {budget.n_ctx} tokens can hold",
            "messages",
        )
    try:
        prompt = render_messages(tokenizer, system, turns[0][1])
        if len(turns) > 1:
            exchanges = [(reply, follow_up) for (_, reply), (_, follow_up) in zip(turns[1::2], turns[2::2])]
            prompt = render_conversation(tokenizer, prompt, *exchanges[0], more=exchanges[1:])
    except ToolkitError as error:
        raise bad(str(error), "messages") from None
    return encode_within(tokenizer, prompt.text, budget, add_special_tokens=prompt.add_special_tokens, param="messages")


def completion_prompts(tokenizer, body: dict, budget: Budget | None = None) -> list[tuple[list[int], str | None]]:
    """The prompts of a completion request, each as ``(token ids, text)``: a text as it is (no chat template; its
    ``text``), or token ids as given (``text`` None). ``prompt`` is a text, a list of texts, a list of token ids or a
    list of token-id lists (a batch: one choice per prompt, in order); ``budget`` as ``chat_prompt``'s, and its
    ``--max-messages`` also bounds the prompts of one request.

    Raises:
        ApiError: 400 for a missing or empty prompt, one of another shape, a token id outside the vocabulary, too many
            prompts, or one that cannot fit the context.
    """
    budget = budget or Budget.of(tokenizer, tokenizer.model_max_length)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and isinstance(prompt[0], int) and not isinstance(prompt[0], bool)
    ):
        prompt = [prompt]
    shape = "prompt must be a non-empty string, a list of them, a list of token ids or a list of token-id lists"
    if not isinstance(prompt, list) or not prompt:
        raise bad(shape, "prompt", "missing_required_parameter" if prompt is None else "invalid_value")
    limit = budget.limits.max_messages
    if len(prompt) > limit:
        raise bad(
            f"prompt has {len(prompt)} prompts, above this server's limit of {limit} (--max-messages)",
            "prompt",
            "array_above_max_length",
        )
    vocabulary, prompts = len(tokenizer), []
    for index, one in enumerate(prompt):
        where = f"prompt[{index}]" if len(prompt) > 1 else "prompt"
        if isinstance(one, str) and one.strip():
            if len(one) > budget.limits.max_message_chars:
                raise bad(
                    f"{where} has {len(one)} characters, above this server's limit of "
                    f"{budget.limits.max_message_chars} (--max-message-chars)",
                    where,
                    "string_above_max_length",
                )
            prompts.append((encode_within(tokenizer, one, budget, add_special_tokens=True, param="prompt"), one))
        elif isinstance(one, list) and one and all(type(token) is int for token in one):
            if not all(0 <= token < vocabulary for token in one):
                raise bad(f"{where} holds a token id outside the vocabulary [0, {vocabulary})", where)
            prompts.append((list(one), None))
        else:
            raise bad(shape, where)
    return prompts


def fit_context(n_prompt: int, max_tokens: int | None, default: int, n_ctx: int, param: str = "messages") -> int:
    """The tokens to generate: ``max_tokens``, or ``default`` cut to what the context leaves.

    Raises:
        ApiError: 400 (``context_length_exceeded``) when the prompt and ``max_tokens`` do not fit the context.
    """
    room = n_ctx - n_prompt
    if max_tokens is None and room >= 1:
        return min(default, room)
    if max_tokens is None or max_tokens > room:
        asked = f" plus max_tokens {max_tokens}" if max_tokens is not None else ""
        raise ApiError(
            400,
            f"the prompt has {n_prompt} tokens{asked} but the model's context is {n_ctx} tokens: "
            f"shorten the {param} or lower max_tokens",
            param=param,
            code="context_length_exceeded",
        )
    return max_tokens
