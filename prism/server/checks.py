"""The request side's work, off the event loop: parsing, checking, rendering and tokenising requests, and formatting
answers' log-probabilities.

``Checks`` runs it in a small pool of threads (``run``), each with its own copy of the app's
tokenizer (fast tokenizers are not safe to share between threads), so that neither the event loop
nor the model's worker waits while a large or bad request is looked at: a request's cost is
bounded by ``prism.server.prompts``' budget, and what it costs is paid here.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Sequence

from prism.server.logprobs import chat_logprobs, completion_logprobs
from prism.server.modes import MODES
from prism.server.prompts import Budget, chat_prompt, completion_prompts
from prism.server.protocol import ApiError, Settings, choice, parse_body, settings

__all__ = ["Checks"]

THREADS = 4  # threads that parse, check, render and tokenise requests


class Checks:
    """The request side's work in its own threads (see the module docstring).

    Args:
        tokenizer: the app's copy of the model's tokenizer (each thread copies it again).
        budget: what a prompt may be (the context, the longest token, the server's limits).
        available: the modes served.
        default_mode: the mode of requests that name none.
    """

    def __init__(self, tokenizer, budget: Budget, available: Sequence[str], default_mode: str) -> None:
        self.budget, self.available, self.default_mode = budget, list(available), default_mode
        self._tokenizer, self._own = tokenizer, threading.local()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="prism-check")

    def run(self, function, *args) -> asyncio.Future:
        """``function(*args)`` in one of the threads, awaitable from the event loop."""
        return asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def tokenizer(self):
        """The calling thread's own copy of the tokenizer."""
        if not hasattr(self._own, "tokenizer"):
            self._own.tokenizer = copy.deepcopy(self._tokenizer)
        return self._own.tokenizer

    def request(self, raw: bytes, chat: bool) -> tuple[Settings, str, list[tuple[list[int], str | None]]]:
        """A chat or completion request's settings, mode and prompts as ``(ids, text)``.

        Raises:
            ApiError: 400 for bad input (``protocol``, ``prompts``), 404 for a mode not served.
        """
        body = parse_body(raw)
        asked = settings(body, chat)
        mode = asked.model if asked.model in MODES else self.default_mode
        if mode not in self.available:
            raise ApiError(
                404,
                f"mode {mode!r} is not served here: use one of {', '.join(self.available)}",
                param="model",
                code="model_not_found",
            )
        if chat:
            prompts = [(chat_prompt(self.tokenizer, body, self.budget), None)]
        else:
            prompts = completion_prompts(self.tokenizer, body, self.budget)
        if asked.stream and len(prompts) > 1:
            raise ApiError(
                400,
                "stream takes one prompt: send a batch of prompts without stream",
                param="stream",
                code="unsupported_parameter",
            )
        return asked, mode, prompts

    def choices(
        self, chat: bool, prompts: list, outcomes: list[dict], prisms: list[dict], asked: Settings
    ) -> list[dict]:
        """An answer's choices, one per prompt, with their log-probabilities formatted (each token decoded)."""
        made = []
        for index, ((ids, text), outcome, prism) in enumerate(zip(prompts, outcomes, prisms)):
            logprobs = None
            if asked.logprobs is not None and chat:
                logprobs = chat_logprobs(self.tokenizer, outcome["tokens"])
            elif asked.logprobs is not None:
                logprobs = completion_logprobs(
                    self.tokenizer, ids if asked.echo else None, outcome["prompt"], outcome["tokens"]
                )
            shown = outcome["text"]
            if asked.echo:
                shown = (text if text is not None else self.tokenizer.decode(ids)) + shown
            made.append(choice(chat, index, shown, outcome["finish"], logprobs, None if chat else prism))
        return made

    def tokenize(self, raw: bytes) -> list[int]:
        """``/tokenize``: a text's token ids (``add_special_tokens``, default true), or ``messages`` rendered as the
        chat endpoint renders them; a text up to ``--max-message-chars``, whatever the context."""
        body = parse_body(raw)
        if "messages" in body:
            return chat_prompt(self.tokenizer, body, replace(self.budget, n_ctx=max(self.budget.n_ctx, 2**31)))
        prompt, special = body.get("prompt"), body.get("add_special_tokens", True)
        if not isinstance(prompt, str) or not isinstance(special, bool):
            raise ApiError(
                400, "send a prompt (a string, with add_special_tokens true or false) or messages", param="prompt"
            )
        limit = self.budget.limits.max_message_chars
        if len(prompt) > limit:
            raise ApiError(
                400,
                f"prompt has {len(prompt)} characters, above this server's limit of {limit} (--max-message-chars)",
                param="prompt",
                code="string_above_max_length",
            )
        return self.tokenizer(prompt, add_special_tokens=special)["input_ids"]

    def detokenize(self, raw: bytes) -> str:
        """``/detokenize``: the text of ``tokens``."""
        tokens, vocabulary = parse_body(raw).get("tokens"), len(self._tokenizer)
        if not isinstance(tokens, list) or not all(type(token) is int and 0 <= token < vocabulary for token in tokens):
            raise ApiError(400, f"tokens must be a list of token ids in [0, {vocabulary})", param="tokens")
        return self.tokenizer.decode(tokens)
