"""The server's counters in the Prometheus text format (version 0.0.4), written by hand.

``GET /metrics`` serves ``Metrics.render()``:

- ``prism_requests_total{endpoint, route, status}``: answered requests (``endpoint``: the path, or
  ``other`` for an unknown one; ``route``: ``persona``, ``base``, or ``none`` for a request refused
  before it was routed);
- ``prism_routed_share``: the share of routed requests that took the persona path;
- ``prism_request_duration_seconds``: latency from arrival to the last byte (histogram);
- ``prism_batch_size``: requests per batch (histogram);
- ``prism_generated_tokens_total``, ``prism_cancelled_total``;
- ``prism_queue_waiting`` (requests waiting for a batch), ``prism_running`` (rows in the running batch).

Every update takes one lock, so the worker thread and the event loop may both count.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, bounds) -> None:
        self.bounds, self.counts, self.sum, self.n = tuple(bounds), [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.sum += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        rows = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(self.bounds, self.counts)]
        return rows + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.n}"]


class Metrics:
    """The server's counters (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, int]] = Counter()
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._batches = _Histogram(BATCH_BUCKETS)
        self._tokens = self._cancelled = self._waiting = self._running = 0

    def request(self, endpoint: str, route: str | None, status: int, seconds: float | None = None) -> None:
        """One answered request (``route`` None: refused before routing)."""
        with self._lock:
            self._requests[(endpoint, route or "none", status)] += 1
            if seconds is not None:
                self._latency.observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self._batches.observe(size)

    def tokens(self, n: int) -> None:
        with self._lock:
            self._tokens += n

    def cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def queue(self, waiting: int) -> None:
        with self._lock:
            self._waiting = waiting

    def running(self, rows: int) -> None:
        with self._lock:
            self._running = rows

    def count(self, endpoint: str | None = None, route: str | None = None, status: int | None = None) -> int:
        """Requests counted so far, optionally of one endpoint, route and status."""
        with self._lock:
            return sum(
                n
                for (e, r, s), n in self._requests.items()
                if endpoint in (None, e) and route in (None, r) and status in (None, s)
            )

    def render(self) -> str:
        """Everything, in the Prometheus text format."""
        with self._lock:
            persona = sum(n for (_, route, _), n in self._requests.items() if route == "persona")
            routed = persona + sum(n for (_, route, _), n in self._requests.items() if route == "base")
            lines = [
                "# HELP prism_requests_total Requests answered, by endpoint, route and HTTP status.",
                "# TYPE prism_requests_total counter",
            ]
            lines += [
                f'prism_requests_total{{endpoint="{e}",route="{r}",status="{s}"}} {n}'
                for (e, r, s), n in sorted(self._requests.items())
            ]
            lines += [
                "# HELP prism_routed_share Share of routed requests that took the persona path.",
                "# TYPE prism_routed_share gauge",
                f"prism_routed_share {persona / routed if routed else 0:.6f}",
                "# HELP prism_request_duration_seconds Seconds from a request's arrival to its last byte.",
                "# TYPE prism_request_duration_seconds histogram",
                *self._latency.lines("prism_request_duration_seconds"),
                "# HELP prism_batch_size Requests decoded together in one batch.",
                "# TYPE prism_batch_size histogram",
                *self._batches.lines("prism_batch_size"),
                "# HELP prism_generated_tokens_total Tokens generated for answers.",
                "# TYPE prism_generated_tokens_total counter",
                f"prism_generated_tokens_total {self._tokens}",
                "# HELP prism_cancelled_total Requests whose client went away before the answer ended.",
                "# TYPE prism_cancelled_total counter",
                f"prism_cancelled_total {self._cancelled}",
                "# HELP prism_queue_waiting Requests waiting for a batch.",
                "# TYPE prism_queue_waiting gauge",
                f"prism_queue_waiting {self._waiting}",
                "# HELP prism_running Requests in the batch the model is decoding.",
                "# TYPE prism_running gauge",
                f"prism_running {self._running}",
            ]
        return "\n".join(lines) + "\n"
