"""The HTTP face of ``prism serve``: an OpenAI-compatible FastAPI app over one ``Engine``.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (whole answers or, with
``stream: true``, server-sent events in OpenAI's chunk format ending with ``data: [DONE]``; a
completion takes a batch of prompts, texts or token ids, and both give log-probabilities, a
completion's with ``echo`` its prompt's too: ``prism.server.logprobs``), ``GET /v1/models`` (the
modes served), ``GET /health``, ``GET /metrics`` (Prometheus text) and, in vLLM's shapes, ``GET
/tokenizer_info``, ``POST /tokenize`` and ``POST /detokenize`` (what lm-evaluation-harness's
remote tokenizer reads).

A request's ``model`` picks the mode when it names one (``prism``, ``steering``, ``base``,
``always``); any other name gets the server's default mode. Every answer carries the route in
an extra field, ``"prism": {"mode", "route", "gate_probability", "seed"}`` (``route``:
``persona`` or ``base``, the path the answer took; ``seed``: the one used, drawn when the request
gave none), and in the headers ``X-Prism-Route``, ``X-Prism-Mode`` and
``X-Prism-Gate-Probability``. The route is known once the prefill has run, so even a stream's
headers carry it.

Errors are OpenAI's error body with the status: 400 bad input (``protocol``), 401 a missing or
wrong API key (only with one set; ``/health`` and ``/metrics`` need none), 404 an unknown path or
a mode not served, 408 a body that did not arrive in time and 413 one too large (``limits``), 503
a full queue or an inference engine not ready (with ``Retry-After``), 500 a failure inside the model. Requests are
parsed, checked, rendered and tokenised, and answers' log-probabilities formatted, in ``checks``' threads with
their own copies of the tokenizer given here (the engine's worker owns the model's): neither the
event loop nor the model's worker waits while a large or bad request is looked at.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException
except ModuleNotFoundError as missing:  # an optional dependency: say which extra brings it
    raise ModuleNotFoundError(
        f"prism serve needs {missing.name}: pip install 'prism-toolkit[serve]'", name=missing.name
    ) from None

from prism.server.checks import Checks
from prism.server.decoding import Sampling
from prism.server.engine import Engine, Job, Overloaded
from prism.server.limits import BodyLimit, Limits
from prism.server.modes import MODES
from prism.server.prompts import Budget, fit_context
from prism.server.protocol import ApiError, Settings, answer, failure, new_id
from prism.server.streaming import EventStream, sse_lines

__all__ = ["ServerConfig", "create_app"]

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/tokenizer_info",
    "/tokenize",
    "/detokenize",
)
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


@dataclass(frozen=True)
class ServerConfig:
    """What the app says and enforces besides the engine's work.

    Attributes:
        model_name: the served model (its name in ``prism.json``, or as given).
        default_mode: the mode of requests that name none.
        max_tokens: tokens generated when a request gives no ``max_tokens`` (cut to what the context leaves).
        api_key: the key requests must send as ``Authorization: Bearer KEY`` (None: no key).
        limits: what one request or connection may cost (``prism.server.limits``).
    """

    model_name: str
    default_mode: str = "prism"
    max_tokens: int = 256
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)


def create_app(engine: Engine, tokenizer, config: ServerConfig) -> FastAPI:
    """The FastAPI app (see the module docstring); it starts the engine's worker on startup and stops it on shutdown.

    Args:
        engine: the engine (not started yet).
        tokenizer: the app's own copy of the model's tokenizer.
        config: names, defaults and the API key.
    """
    service = _Service(engine, tokenizer, config)
    app = FastAPI(
        title="PRISM", lifespan=asynccontextmanager(service.lifespan), docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.limits = config.limits  # the connection limits uvicorn enforces (``prism.server.launch``)
    app.add_middleware(
        BodyLimit,
        max_bytes=config.limits.max_body_bytes,
        timeout=config.limits.body_timeout,
        refused=lambda path, status: service.metrics.request(path if path in ENDPOINTS else "other", None, status),
    )
    app.exception_handler(ApiError)(service.api_error)
    app.exception_handler(HTTPException)(service.http_error)
    app.exception_handler(Exception)(service.server_error)
    app.get("/health")(service.health)
    app.get("/metrics")(service.prometheus)
    app.get("/v1/models")(service.models)
    app.get("/tokenizer_info")(service.tokenizer_info)
    app.post("/tokenize")(service.tokenize)
    app.post("/detokenize")(service.detokenize)
    app.post("/v1/chat/completions")(service.chat_completions)
    app.post("/v1/completions")(service.completions)
    return app


class _Service:
    """The app's handlers over one engine; ``create_app`` gives each its path."""

    def __init__(self, engine: Engine, tokenizer, config: ServerConfig) -> None:
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        self.metrics, self.modes, self.n_ctx = engine.metrics, engine.modes, engine.model.cfg.n_ctx
        self.checks = Checks(
            tokenizer, Budget.of(tokenizer, self.n_ctx, config.limits), self.modes.available, config.default_mode
        )

    async def lifespan(self, app: FastAPI):
        self.engine.start()
        yield
        self.checks.close()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)

    # -- errors and the API key

    def refuse(self, request: Request, error: ApiError) -> JSONResponse:
        path = request.url.path
        self.metrics.request(path if path in ENDPOINTS else "other", None, error.status)  # bounded labels
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    async def api_error(self, request: Request, error: ApiError) -> JSONResponse:
        return self.refuse(request, error)

    async def http_error(self, request: Request, error: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return self.refuse(
            request, ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", code=kind)
        )

    async def server_error(self, request: Request, error: Exception) -> JSONResponse:
        return self.refuse(request, ApiError(500, f"internal error: {type(error).__name__}", type="server_error"))

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    # -- what the server is and serves

    async def health(self) -> JSONResponse:
        alive = self.engine.alive
        body = {
            "status": "ok" if alive else "stopped",
            "model": self.config.model_name,
            "modes": self.modes.available,
            "default_mode": self.config.default_mode,
            "waiting": self.engine.waiting,
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    async def prometheus(self) -> PlainTextResponse:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> JSONResponse:
        self.authorize(request)
        default = self.config.default_mode
        served = [default] + [mode for mode in self.modes.available if mode != default]
        entries = [
            {
                "id": mode,
                "object": "model",
                "created": 0,
                "owned_by": "prism-toolkit",
                "description": MODES[mode],
                "root": self.config.model_name,
            }
            for mode in served
        ]
        return JSONResponse({"object": "list", "data": entries})

    async def tokenizer_info(self, request: Request) -> JSONResponse:
        self.authorize(request)
        tokenizer = self.tokenizer
        return JSONResponse(
            {
                "tokenizer_class": type(tokenizer).__name__,
                "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token,
                "pad_token": tokenizer.pad_token,
                "chat_template": getattr(tokenizer, "chat_template", None),
                "model_max_length": self.n_ctx,
                "vocab_size": len(tokenizer),
            }
        )

    async def tokenize(self, request: Request) -> JSONResponse:
        self.authorize(request)
        ids = await self.checks.run(self.checks.tokenize, await request.body())
        self.metrics.request("/tokenize", None, 200)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": self.n_ctx})

    async def detokenize(self, request: Request) -> JSONResponse:
        self.authorize(request)
        text = await self.checks.run(self.checks.detokenize, await request.body())
        self.metrics.request("/detokenize", None, 200)
        return JSONResponse({"prompt": text})

    # -- completions

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, chat=False)

    async def generate(self, request: Request, chat: bool) -> Response:
        """One completion request: checked, submitted (one job per prompt), answered whole or streamed."""
        start = time.monotonic()
        try:
            self.authorize(request)
            asked, mode, prompts = await self.checks.run(self.checks.request, await request.body(), chat)
            seed = asked.seed if asked.seed is not None else secrets.randbits(63)
            call = _Call(request, chat, asked, mode, seed, prompts, start)
            jobs, queues = self.submit(call)
            if asked.stream:
                return await self.stream(call, jobs[0], queues[0])
            return await self.whole(call, jobs, queues)
        except _ClientGone as gone:
            self.metrics.request(request.url.path, gone.route, 499)
            return Response(status_code=499)

    def submit(self, call: _Call) -> tuple[list[Job], list[asyncio.Queue]]:
        """One job per prompt on the engine's queue, each with the queue its events arrive on; a full queue is 503."""
        asked, param = call.asked, "messages" if call.chat else "prompt"
        loop = asyncio.get_running_loop()
        jobs, queues = [], []
        for ids, _ in call.prompts:
            sampling = Sampling(
                fit_context(len(ids), asked.max_tokens, self.config.max_tokens, self.n_ctx, param),
                asked.temperature,
                asked.top_p,
                call.seed,
                asked.stop,
                asked.logprobs,
                asked.echo,
            )
            events: asyncio.Queue = asyncio.Queue()
            deliver = lambda event, events=events: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731
            jobs.append(Job(ids, sampling, call.mode, deliver, strip=call.chat))
            queues.append(events)
        try:
            for job in jobs:
                self.engine.submit(job)
        except Overloaded as error:
            for job in jobs:
                self.engine.cancel(job)
            raise ApiError(
                503, f"the server is busy: {error}; retry shortly", type="server_overloaded", code="queue_full"
            ) from None
        return jobs, queues

    async def stream(self, call: _Call, job: Job, events: asyncio.Queue) -> Response:
        """Server-sent events of one prompt's answer, once its route is known (so the headers carry it)."""
        kind, *routing = await self.next_event(events, call.request, job, None)
        if kind in ("error", "unavailable"):
            raise failure(kind, routing[0])
        prism, headers = _route(call.mode, call.seed, *routing)
        lines = sse_lines(
            events,
            call.chat,
            new_id(call.chat),
            call.mode,
            prism,
            call.asked.include_usage,
            lambda status: self.count(call, prism["route"], status),
        )
        return EventStream(lines, self.engine, job, headers=headers, media_type="text/event-stream")

    async def whole(self, call: _Call, jobs: list[Job], queues: list[asyncio.Queue]) -> JSONResponse:
        """Every prompt's whole answer in one body (the first prompt's route in the headers)."""
        try:
            outcomes = await asyncio.gather(*(self.collect(q, call.request, job) for q, job in zip(queues, jobs)))
        except BaseException:
            for job in jobs:
                self.engine.cancel(job)
            raise
        prisms = [_route(call.mode, call.seed, outcome["probability"], outcome["route"]) for outcome in outcomes]
        failed = next((outcome["error"] for outcome in outcomes if outcome["error"] is not None), None)
        route = prisms[0][0]["route"] if prisms[0][0] is not None else None
        if failed is not None:
            error = failure(*failed)
            self.count(call, route, error.status)
            raise error
        routes = [prism for prism, _ in prisms]
        choices = await self.checks.run(self.checks.choices, call.chat, call.prompts, outcomes, routes, call.asked)
        self.count(call, route, 200)
        n_prompt = sum(outcome["n_prompt"] for outcome in outcomes)
        n_completion = sum(outcome["n_completion"] for outcome in outcomes)
        body = answer(call.chat, new_id(call.chat), call.mode, choices, n_prompt, n_completion, prisms[0][0])
        return JSONResponse(body, headers=prisms[0][1])

    def count(self, call: _Call, route: str | None, status: int) -> None:
        """One finished request in the metrics, with its time since it arrived."""
        self.metrics.request(call.request.url.path, route, status, time.monotonic() - call.start)

    async def collect(self, events: asyncio.Queue, request: Request, job: Job) -> dict:
        """Everything the worker sends about ``job`` until it is done (``error``: (kind, message) if it failed)."""
        outcome = {"route": None, "probability": None, "prompt": None, "tokens": [], "error": None}
        pieces = []
        while True:
            kind, *rest = await self.next_event(events, request, job, outcome["route"])
            if kind == "route":
                outcome["probability"], outcome["route"] = rest
            elif kind == "prompt":
                outcome["prompt"] = rest[0]
            elif kind == "token":
                outcome["tokens"].append(rest[0])
            elif kind == "delta":
                pieces.append(rest[0])
            elif kind in ("error", "unavailable"):
                return outcome | {"error": (kind, rest[0])}
            else:
                finish, n_prompt, n_completion = rest
                text = "".join(pieces)
                return outcome | {"text": text, "finish": finish, "n_prompt": n_prompt, "n_completion": n_completion}

    async def next_event(self, events: asyncio.Queue, request: Request, job: Job, route: str | None) -> tuple:
        """The job's next event; if the client goes away meanwhile, the job is cancelled (``_ClientGone``)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.engine.cancel(job)
                    raise _ClientGone(route) from None
            except asyncio.CancelledError:
                self.engine.cancel(job)
                raise


def _route(mode: str, seed: int, probability: float | None, route: str | None) -> tuple[dict | None, dict]:
    """The ``prism`` field and the ``X-Prism-*`` headers of an answer's route (None before the route was read)."""
    if route is None:
        return None, {}
    prism = {
        "mode": mode,
        "route": route,
        "seed": seed,
        "gate_probability": None if probability is None else round(probability, 6),
    }
    headers = {"X-Prism-Route": route, "X-Prism-Mode": mode}
    if probability is not None:
        headers["X-Prism-Gate-Probability"] = f"{probability:.6f}"
    return prism, headers


@dataclass(frozen=True)
class _Call:
    """One completion request, checked: what it asked, its mode and seed, its tokenised prompts, when it arrived."""

    request: Request
    chat: bool
    asked: Settings
    mode: str
    seed: int
    prompts: list
    start: float


class _ClientGone(Exception):
    """The client of a whole (not streamed) answer went away; its job was cancelled."""

    def __init__(self, route: str | None) -> None:
        super().__init__(route)
        self.route = route
