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
from prism.server.protocol import ApiError, answer, failure, new_id
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
    metrics, modes, n_ctx = engine.metrics, engine.modes, engine.model.cfg.n_ctx
    checks = Checks(tokenizer, Budget.of(tokenizer, n_ctx, config.limits), modes.available, config.default_mode)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        checks.close()
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = FastAPI(title="PRISM", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.limits = config.limits  # the connection limits uvicorn enforces (``prism.server.launch``)
    app.add_middleware(
        BodyLimit,
        max_bytes=config.limits.max_body_bytes,
        timeout=config.limits.body_timeout,
        refused=lambda path, status: metrics.request(path if path in ENDPOINTS else "other", None, status),
    )

    def refuse(request: Request, error: ApiError) -> JSONResponse:
        path = request.url.path
        metrics.request(path if path in ENDPOINTS else "other", None, error.status)  # bounded labels, whatever is asked
        headers = {"Retry-After": "1"} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return refuse(request, error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
        return refuse(
            request, ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", code=kind)
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return refuse(request, ApiError(500, f"internal error: {type(error).__name__}", type="server_error"))

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "ok" if engine.alive else "stopped",
            "model": config.model_name,
            "modes": modes.available,
            "default_mode": config.default_mode,
            "waiting": engine.waiting,
        }
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        served = [config.default_mode] + [mode for mode in modes.available if mode != config.default_mode]
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": mode,
                        "object": "model",
                        "created": 0,
                        "owned_by": "prism-toolkit",
                        "description": MODES[mode],
                        "root": config.model_name,
                    }
                    for mode in served
                ],
            }
        )

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse(
            {
                "tokenizer_class": type(tokenizer).__name__,
                "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token,
                "pad_token": tokenizer.pad_token,
                "chat_template": getattr(tokenizer, "chat_template", None),
                "model_max_length": n_ctx,
                "vocab_size": len(tokenizer),
            }
        )

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        authorize(request)
        ids = await checks.run(checks.tokenize, await request.body())
        metrics.request("/tokenize", None, 200)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": n_ctx})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        authorize(request)
        text = await checks.run(checks.detokenize, await request.body())
        metrics.request("/detokenize", None, 200)
        return JSONResponse({"prompt": text})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def generate(request: Request, chat: bool) -> Response:
        try:
            return await answer_request(request, chat)
        except _ClientGone as gone:
            metrics.request(request.url.path, gone.route, 499)
            return Response(status_code=499)

    async def answer_request(request: Request, chat: bool) -> Response:
        start, endpoint = time.monotonic(), request.url.path
        authorize(request)
        asked, mode, prompts = await checks.run(checks.request, await request.body(), chat)
        seed = asked.seed if asked.seed is not None else secrets.randbits(63)
        param = "messages" if chat else "prompt"
        samplings = [
            Sampling(
                fit_context(len(ids), asked.max_tokens, config.max_tokens, n_ctx, param),
                asked.temperature,
                asked.top_p,
                seed,
                asked.stop,
                asked.logprobs,
                asked.echo,
            )
            for ids, _ in prompts
        ]
        loop = asyncio.get_running_loop()
        jobs, queues = [], []
        for (ids, _), sampling in zip(prompts, samplings):
            events: asyncio.Queue = asyncio.Queue()
            jobs.append(
                Job(
                    ids,
                    sampling,
                    mode,
                    lambda event, events=events: loop.call_soon_threadsafe(events.put_nowait, event),
                    strip=chat,
                )
            )
            queues.append(events)
        try:
            for job in jobs:
                engine.submit(job)
        except Overloaded as error:
            for job in jobs:
                engine.cancel(job)
            raise ApiError(
                503, f"the server is busy: {error}; retry shortly", type="server_overloaded", code="queue_full"
            ) from None
        ident = new_id(chat)
        if asked.stream:
            kind, *routing = await next_event(queues[0], request, jobs[0], None)
            if kind in ("error", "unavailable"):
                raise failure(kind, routing[0])
            prism, headers = _route(mode, seed, *routing)
            lines = sse_lines(
                queues[0],
                chat,
                ident,
                mode,
                prism,
                asked.include_usage,
                lambda status: metrics.request(endpoint, prism["route"], status, time.monotonic() - start),
            )
            return EventStream(lines, engine, jobs[0], headers=headers, media_type="text/event-stream")
        try:
            outcomes = await asyncio.gather(*(collect(events, request, job) for events, job in zip(queues, jobs)))
        except BaseException:
            for job in jobs:
                engine.cancel(job)
            raise
        prisms = [_route(mode, seed, outcome["probability"], outcome["route"]) for outcome in outcomes]
        failed = next((outcome["error"] for outcome in outcomes if outcome["error"] is not None), None)
        route = prisms[0][0]["route"] if prisms[0][0] is not None else None
        if failed is not None:
            error = failure(*failed)
            metrics.request(endpoint, route, error.status, time.monotonic() - start)
            raise error
        choices = await checks.run(checks.choices, chat, prompts, outcomes, [prism for prism, _ in prisms], asked)
        metrics.request(endpoint, route, 200, time.monotonic() - start)
        body = answer(
            chat,
            ident,
            mode,
            choices,
            sum(outcome["n_prompt"] for outcome in outcomes),
            sum(outcome["n_completion"] for outcome in outcomes),
            prisms[0][0],
        )
        return JSONResponse(body, headers=prisms[0][1])

    async def collect(events: asyncio.Queue, request: Request, job: Job) -> dict:
        """Everything the worker sends about ``job`` until it is done (``error``: (kind, message) if it failed)."""
        outcome = {"route": None, "probability": None, "prompt": None, "tokens": [], "error": None}
        pieces = []
        while True:
            kind, *rest = await next_event(events, request, job, outcome["route"])
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
                return outcome | {
                    "text": "".join(pieces),
                    "finish": rest[0],
                    "n_prompt": rest[1],
                    "n_completion": rest[2],
                }

    async def next_event(events: asyncio.Queue, request: Request, job: Job, route: str | None) -> tuple:
        """The job's next event; if the client goes away meanwhile, the job is cancelled (``_ClientGone``)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    engine.cancel(job)
                    raise _ClientGone(route) from None
            except asyncio.CancelledError:
                engine.cancel(job)
                raise

    return app


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


class _ClientGone(Exception):
    """The client of a whole (not streamed) answer went away; its job was cancelled."""

    def __init__(self, route: str | None) -> None:
        super().__init__(route)
        self.route = route
