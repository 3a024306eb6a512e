"""The model's one worker thread: requests queue up, and those that arrive together share forward passes.

The worker waits for a request, then up to ``batch_wait_ms`` (from that request's arrival) for
more of the same mode, up to ``max_batch_size``, and decodes them as one batch
(``BatchDecoder`` inside the mode's ``Routed``): one prefill in which the gate routes each row,
then one pass per token. Each row's events go to its own ``Job`` only (``route``, then ``delta``
pieces of text, then ``done`` or ``error``; with log-probabilities, ``prompt`` after the route and
a ``token`` before each generated token's text), so no request can get another's text. Requests that
come while a batch runs wait for the next one; a batch with rows of several sampling settings
and seeds is fine (each row samples on its own: ``prism.server.decoding``), one of several
modes is not (the oldest request's mode goes first, the others keep their place).

A request whose client went away (``cancel``) leaves the queue at once, or its batch at the next
step. More than ``max_queue`` waiting requests are refused (``Overloaded``); an error inside a
batch answers that batch's requests with an error and the worker goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Collection

from prism.server.decoding import BatchDecoder, Sampling
from prism.server.metrics import Metrics
from prism.server.modes import Modes
from prism.server.text import TextStream

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Answer", "Engine", "Job", "Overloaded"]

log = logging.getLogger("prism.serve")
SHUTDOWN = "the server is shutting down"


class Overloaded(Exception):
    """The queue is full (or the engine is shutting down): the request was not taken."""


@dataclass(eq=False)
class Job:
    """One request for the worker.

    Attributes:
        ids: the prompt's token ids.
        sampling: its decoding settings.
        mode: the mode it is answered in (``prism.server.modes``).
        deliver: called from the worker thread with each event: ``("route", probability | None, routed)``,
            ``("prompt", [None, (id, logprob, top), ...])`` (with ``sampling.echo``),
            ``("token", (id, logprob, top))`` (with ``sampling.logprobs``, for every generated token, an
            end-of-sequence one included), ``("delta", text)``, ``("done", finish_reason, prompt_tokens,
            completion_tokens)`` or ``("error", message)``. A request with ``max_tokens`` 0 (an echo) is done after
            its prefill.
        strip: strip whitespace around the text (chat) or keep it (completions).
    """

    ids: list[int]
    sampling: Sampling
    mode: str
    deliver: Callable[[tuple], None]
    strip: bool = True
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)

    def send(self, event: tuple) -> None:
        """``deliver(event)``; dropped when the request's event loop is gone (shutdown): nobody is listening."""
        try:
            self.deliver(event)
        except RuntimeError:
            pass


class Engine:
    """The worker thread that owns the model (see the module docstring).

    Args:
        model, tokenizer: the bridged model and its tokenizer (the worker's own: nothing else may use them).
        modes: the modes loaded onto the model.
        max_batch_size: the most requests in one batch.
        batch_wait_ms: how long the worker waits, from a request's arrival, for others to join its batch.
        max_queue: the most requests waiting for a batch; more are refused.
        metrics: where batch sizes, tokens and cancellations are counted.
    """

    def __init__(
        self,
        model: TransformerBridge,
        tokenizer,
        modes: Modes,
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 10.0,
        max_queue: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or batch_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be at least 1, batch_wait_ms at least 0")
        self.model, self.tokenizer, self.modes = model, tokenizer, modes
        self.max_batch_size, self.batch_wait, self.max_queue = max_batch_size, batch_wait_ms / 1000, max_queue
        self.metrics = metrics or Metrics()
        eos = model.original_model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="prism-model", daemon=True)

    # --- the request side (any thread) --------------------------------------------------------

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests and answer the waiting and running ones with an error; the running batch stops."""
        with self._wake:
            self._closed = True
            waiting, self._pending = list(self._pending), deque()
            for job in self._running:  # the worker answers them at its next step
                job.cancelled = True
            self._wake.notify_all()
        for job in waiting:
            job.send(("error", SHUTDOWN))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``Overloaded`` when ``max_queue`` requests already wait or the engine is closed."""
        with self._wake:
            if self._closed:
                raise Overloaded(SHUTDOWN)
            if len(self._pending) >= self.max_queue:
                raise Overloaded(f"{len(self._pending)} requests are already waiting (--max-queue {self.max_queue})")
            self._pending.append(job)
            self.metrics.queue(len(self._pending))
            self._wake.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: ``job`` leaves the queue now, or its batch at the next step."""
        job.cancelled = True
        with self._wake:
            if job in self._pending:
                self._pending.remove(job)
                self.metrics.queue(len(self._pending))
                self.metrics.cancelled()

    # --- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as error:  # the batch fails, the server goes on
                log.exception("a batch of %d requests failed", len(batch))
                for job in batch:
                    job.send(("error", f"the model failed on this batch: {type(error).__name__}: {error}"))
            finally:
                self._running = []
                self.metrics.running(0)

    def _next_batch(self) -> list[Job] | None:
        with self._wake:
            while True:
                if self._closed:
                    return None
                if not self._pending:
                    self._wake.wait()
                    continue
                mode = self._pending[0].mode
                same = [job for job in self._pending if job.mode == mode][: self.max_batch_size]
                left = self._pending[0].arrived + self.batch_wait - time.monotonic()
                if len(same) >= self.max_batch_size or left <= 0:
                    for job in same:
                        self._pending.remove(job)
                    self.metrics.queue(len(self._pending))
                    self._running = same
                    return same
                self._wake.wait(left)

    def _run(self, jobs: list[Job]) -> None:
        self.metrics.batch(len(jobs))
        self.metrics.running(len(jobs))
        mode = jobs[0].mode
        answers = [Answer(job, TextStream(self.tokenizer, job.sampling.stop, strip=job.strip)) for job in jobs]
        with self.modes.routing(mode) as routed:
            decoder = BatchDecoder(
                self.model.original_model,
                [job.ids for job in jobs],
                [job.sampling for job in jobs],
                pad_id=self.pad_id,
                routed=routed,
            )
            tokens = decoder.start()
            self._after_prefill(jobs, decoder, routed, mode)
            while tokens:
                fed = {row: token for row, token in tokens.items() if self._emit(answers[row], token, decoder, row)}
                tokens = decoder.advance(fed)
                self.metrics.running(len(tokens))

    def _after_prefill(self, jobs: list[Job], decoder: BatchDecoder, routed, mode: str) -> None:
        """Each job's route, its prompt's log-probabilities (with ``echo``), and the end of a ``max_tokens`` 0 job."""
        for row, job in enumerate(jobs):
            probability, routes = routed.decision(job.ids) if routed is not None else (None, False)
            job.send(("route", probability, self.modes.route(mode, routes)))
            if job.sampling.echo:
                job.send(("prompt", decoder.prompt_logprobs[row]))
            if job.sampling.max_tokens == 0 and not job.cancelled:
                job.send(("done", "length", len(job.ids), 0))

    def _emit(self, answer: Answer, token: int, decoder: BatchDecoder, row: int) -> bool:
        """Send ``token``, row's new token, to its job (its log-probabilities, its text, or the end); True if the row
        goes on."""
        job = answer.job
        if job.cancelled:
            self.metrics.cancelled()
            if self._closed:
                job.send(("error", SHUTDOWN))
            return False
        if job.sampling.max_tokens == 0:
            return False  # answered after the prefill
        if job.sampling.logprobs is not None:
            job.send(("token", decoder.logprobs[row]))
        if answer.push(token, self.eos):
            finish = "stop"
        elif answer.generated >= job.sampling.max_tokens:
            finish = "length"
        else:
            return True
        answer.finish(finish)
        self.metrics.tokens(answer.generated)
        return False


@dataclass
class Answer:
    """One job's answer in progress (either engine's): its text so far and how many tokens it was given."""

    job: Job
    stream: TextStream
    generated: int = 0

    def push(self, token: int, eos: Collection[int]) -> bool:
        """Give the answer ``token``, its text to the job; True if the answer ends there (at an end-of-sequence token,
        not counted, or a stop string)."""
        if token in eos:
            return True
        self.generated += 1
        delta, stopped = self.stream.push(token)
        if delta:
            self.job.send(("delta", delta))
        return stopped

    def finish(self, reason: str) -> None:
        """The answer's last text, then its end with the prompt's and answer's token counts."""
        rest = self.stream.finish()
        if rest:
            self.job.send(("delta", rest))
        self.job.send(("done", reason, len(self.job.ids), self.generated))
