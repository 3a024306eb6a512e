"""The HTTP face of ``prism serve``: an OpenAI-compatible FastAPI app over one ``Engine``.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (whole answers or, with
``stream: true``, server-sent events in OpenAI's chunk format ending with ``data: [DONE]``),
``GET /v1/models`` (the modes served), ``GET /health`` and ``GET /metrics`` (Prometheus text).

A request's ``model`` picks the mode when it names one (``prism``, ``steering``, ``base``,
``always``); any other name gets the server's default mode. Every answer carries the route in
an extra field, ``"prism": {"mode", "route", "gate_probability", "seed"}`` (``route``:
``persona`` or ``base``, the path the answer took; ``seed``: the one used, drawn when the request
gave none), and in the headers ``X-Prism-Route``, ``X-Prism-Mode`` and
``X-Prism-Gate-Probability``. The route is known once the prefill has run, so even a stream's
headers carry it.

Errors are OpenAI's error body with the status: 400 bad input (``protocol``), 401 a missing or
wrong API key (only with one set; ``/health`` and ``/metrics`` need none), 404 an unknown path or
a mode not served, 503 a full queue or an inference engine not ready (with ``Retry-After``), 500 a failure inside
the model. The
tokenizer given here is the app's own copy (the engine's worker owns the model's), so requests
are checked and tokenised on the event loop while the worker decodes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
except ModuleNotFoundError as missing:  # an optional dependency: say which extra brings it
    raise ModuleNotFoundError(f"prism serve needs {missing.name}: pip install 'prism-toolkit[serve]'",
                              name=missing.name) from None

from prism.server.decoding import Sampling
from prism.server.engine import Engine, Job, Overloaded
from prism.server.modes import MODES
from prism.server.protocol import (
    ApiError,
    answer,
    chat_prompt,
    chunk,
    completion_prompt,
    fit_context,
    new_id,
    parse_body,
    settings,
)

__all__ = ["ServerConfig", "create_app"]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


@dataclass(frozen=True)
class ServerConfig:
    """What the app says and enforces besides the engine's work.

    Attributes:
        model_name: the served model (its name in ``prism.json``, or as given).
        default_mode: the mode of requests that name none.
        max_tokens: tokens generated when a request gives no ``max_tokens`` (cut to what the context leaves).
        api_key: the key requests must send as ``Authorization: Bearer KEY`` (None: no key).
    """

    model_name: str
    default_mode: str = "prism"
    max_tokens: int = 256
    api_key: str | None = None


def create_app(engine: Engine, tokenizer, config: ServerConfig) -> FastAPI:
    """The FastAPI app (see the module docstring); it starts the engine's worker on startup and stops it on shutdown.

    Args:
        engine: the engine (not started yet).
        tokenizer: the app's own copy of the model's tokenizer.
        config: names, defaults and the API key.
    """
    metrics, modes, n_ctx = engine.metrics, engine.modes, engine.model.cfg.n_ctx

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = FastAPI(title="PRISM", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

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
        return refuse(request, ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                                        code=kind))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return refuse(request, ApiError(500, f"internal error: {type(error).__name__}", type="server_error"))

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if engine.alive else "stopped", "model": config.model_name, "modes": modes.available,
                "default_mode": config.default_mode, "waiting": engine.waiting}
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        served = [config.default_mode] + [mode for mode in modes.available if mode != config.default_mode]
        return JSONResponse({"object": "list", "data": [
            {"id": mode, "object": "model", "created": 0, "owned_by": "prism-toolkit", "description": MODES[mode],
             "root": config.model_name} for mode in served]})

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
        body = parse_body(await request.body())
        asked = settings(body)
        mode = asked.model if asked.model in MODES else config.default_mode
        if mode not in modes.available:
            raise ApiError(404, f"mode {mode!r} is not served here: use one of {', '.join(modes.available)}",
                           param="model", code="model_not_found")
        ids = chat_prompt(tokenizer, body) if chat else completion_prompt(tokenizer, body)
        seed = asked.seed if asked.seed is not None else secrets.randbits(63)
        sampling = Sampling(fit_context(len(ids), asked.max_tokens, config.max_tokens, n_ctx), asked.temperature,
                            asked.top_p, seed, asked.stop)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = Job(ids, sampling, mode, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), strip=chat)
        try:
            engine.submit(job)
        except Overloaded as error:
            raise ApiError(503, f"the server is busy: {error}; retry shortly", type="server_overloaded",
                           code="queue_full") from None
        kind, *routing = await next_event(events, request, job, None)
        if kind in ("error", "unavailable"):
            raise _failure(kind, routing[0])
        probability, route = routing
        prism = {"mode": mode, "route": route, "seed": seed,
                 "gate_probability": None if probability is None else round(probability, 6)}
        headers = {"X-Prism-Route": route, "X-Prism-Mode": mode}
        if probability is not None:
            headers["X-Prism-Gate-Probability"] = f"{probability:.6f}"
        ident = new_id(chat)

        def finished(status: int) -> None:
            metrics.request(endpoint, route, status, time.monotonic() - start)

        if asked.stream:
            lines = stream(events, chat, ident, mode, prism, asked.include_usage, finished)
            return _EventStream(lines, engine, job, headers=headers, media_type="text/event-stream")
        pieces = []
        while True:
            kind, *rest = await next_event(events, request, job, route)
            if kind == "delta":
                pieces.append(rest[0])
            elif kind in ("error", "unavailable"):
                finished(503 if kind == "unavailable" else 500)
                raise _failure(kind, rest[0])
            else:
                finished(200)
                return JSONResponse(answer(chat, ident, mode, "".join(pieces), rest[0], rest[1], rest[2], prism),
                                    headers=headers)

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

    async def stream(events: asyncio.Queue, chat: bool, ident: str, mode: str, prism: dict, usage: bool, finished):
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
                    status = 503 if kind == "unavailable" else 500
                    yield _sse(_failure(kind, rest[0]).body())
                else:
                    status = 200
                    yield _sse(chunk(chat, ident, mode, finish=rest[0], prism=prism))
                    if usage:
                        yield _sse(chunk(chat, ident, mode, usage=(rest[1], rest[2])))
                yield "data: [DONE]\n\n"
                return
        finally:
            finished(status)

    return app


class _ClientGone(Exception):
    """The client of a whole (not streamed) answer went away; its job was cancelled."""

    def __init__(self, route: str | None) -> None:
        super().__init__(route)
        self.route = route


def _failure(kind: str, message: str) -> ApiError:
    """An ``error`` event as a 500; ``unavailable`` (an inference engine down or not ready) as a 503."""
    if kind == "unavailable":
        return ApiError(503, message, type="server_overloaded", code="engine_unavailable")
    return ApiError(500, message, type="server_error")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _EventStream(StreamingResponse):
    """A streamed answer whose request leaves the engine whenever the response ends (a client that went away too)."""

    def __init__(self, content, engine: Engine, job: Job, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.engine, self.job = engine, job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)
