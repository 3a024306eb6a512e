"""The worker thread: requests batched by mode, oldest first; each answered once; a full queue refused; shutdown."""

from __future__ import annotations

import re
import threading
import time

import pytest

from prism.server.decoding import Sampling
from prism.server.engine import Engine, Job, Overloaded
from prism.server.launch import served_files
from prism.server.modes import Modes
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render


class Inbox:
    """A job's events, as the worker delivers them."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.done = threading.Event()

    def __call__(self, event: tuple) -> None:
        self.events.append(event)
        if event[0] in ("done", "error"):
            self.done.set()


@pytest.fixture()
def engine_parts(tiny_prism):
    model_name, files = served_files(tiny_prism)
    model, tokenizer = load_model(model_name)
    return model, tokenizer, Modes(model, files)


def _batch_sizes(engine: Engine) -> tuple[int, float]:
    text = engine.metrics.render()
    count = re.search(r"^prism_batch_size_count (\d+)$", text, flags=re.M).group(1)
    total = re.search(r"^prism_batch_size_sum ([0-9.]+)$", text, flags=re.M).group(1)
    return int(count), float(total)


def test_requests_are_batched_by_mode_oldest_first_and_each_is_answered_once(engine_parts, queries):
    model, tokenizer, modes = engine_parts
    engine = Engine(model, tokenizer, modes, max_batch_size=3, batch_wait_ms=0, max_queue=7)
    order = ["prism", "base", "prism", "prism", "base", "prism", "prism"]
    inboxes = [Inbox() for _ in order]
    for index, (mode, inbox) in enumerate(zip(order, inboxes)):  # all queued before the worker starts
        ids = encode(tokenizer, render(tokenizer, queries[index % len(queries)], Condition("none")))
        engine.submit(Job(ids, Sampling(max_tokens=2 + index % 3, temperature=0.0), mode, inbox))
    with pytest.raises(Overloaded, match="7 requests are already waiting"):
        engine.submit(Job([1, 2], Sampling(), "prism", Inbox()))
    engine.start()
    try:
        for inbox in inboxes:
            assert inbox.done.wait(120)
    finally:
        engine.close()
    assert _batch_sizes(engine) == (3, 7.0)  # prism x3 (the oldest's mode), then base x2, then prism x2
    for mode, inbox in zip(order, inboxes):
        kinds = [event[0] for event in inbox.events]
        assert kinds[0] == "route" and kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds
        assert set(kinds[1:-1]) <= {"delta"}
        assert inbox.events[0][2] == "base" if mode == "base" else inbox.events[0][2] in ("persona", "base")
    assert not engine.alive


def test_closing_answers_waiting_and_running_requests_and_stops_the_worker(engine_parts, queries):
    model, tokenizer, modes = engine_parts
    engine = Engine(model, tokenizer, modes, max_batch_size=1, batch_wait_ms=0).start()
    ids = encode(tokenizer, render(tokenizer, queries[1], Condition("none")))
    running, waiting = Inbox(), Inbox()
    engine.submit(Job(ids, Sampling(max_tokens=480, temperature=0.7, seed=1), "prism", running))
    deadline = time.monotonic() + 60
    while not any(event[0] == "delta" for event in running.events):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.submit(Job(ids, Sampling(max_tokens=4), "prism", waiting))
    engine.close()
    assert not engine.alive
    assert waiting.events == [("error", "the server is shutting down")]
    assert running.events[-1] == ("error", "the server is shutting down")
    assert sum(event[0] == "delta" for event in running.events) < 480  # the running batch stopped
    with pytest.raises(Overloaded, match="shutting down"):
        engine.submit(Job(ids, Sampling(), "prism", Inbox()))
