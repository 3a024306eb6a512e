"""What routing costs, as a share of answering a query, measured in one run.

Answering = prefill + 64 greedy tokens on the embedded model, one query at a time (the
latency a user sees). Routers:
- in-model probe gate, read after block 0 during the answering pass itself (``Routed``). Its hooks
  run only while a row needs them: the gate's in the prefill, the steering or adapter hooks only
  while a routed row is in the batch. Measured two ways:
  - *inside the hooks*: the time spent in ``Routed``'s hooks while answering, plus entering and
    leaving the block, per query. It is what routing adds to the answering pass, to the microsecond,
    whatever the machine's drift;
  - *end to end*: the same query answered with and without ``Routed``, in pairs (order alternating),
    the mean relative difference over pairs with its 95% CI. Noisy on a shared CPU: it checks that
    nothing outside the hooks (a slower path, a lost kernel) adds cost.
  Three cases: steering a routed query (a zero vector, so the answer is the plain one), and a LoRA
  adapter from block 1 on a query the gate sends to base, and on one it routes (there the adapter's
  own arithmetic, not the routing, is the rest of the difference).
- the same gate from a separate partial pass (blocks 0..k only), as a training-free router must;
- a separate classifier: all-MiniLM-L6-v2 embeddings + logistic regression.

    python bench/routing_overhead.py [--queries 8] [--repeats 2] [--tokens 64] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

from interventions.measure.generation import generate
from prism.adapters import attach_adapter
from prism.baselines import EmbeddingRouter
from prism.gate import fit_gate, gate_features
from prism.routing import Routed, route_probabilities
from probes.core.models import load_model
from probes.core.prompts import Condition, render
from probes.core.stats import bootstrap_mean
from probes.intents import intent_queries
from probes.splits import Split

HOOKS = ("_see_inputs", "_read_gate", "_steer", "_scale_update")  # every function Routed runs inside a pass


def timed(fn, repeats: int) -> float:
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


@contextmanager
def clocked(routed: Routed, spent: list[float]):
    """``routed`` entered with each of its hooks timed; the seconds inside them, and entering and leaving, go to
    ``spent``."""

    def timing(function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        return run

    for name in HOOKS:  # the instance's own attributes: Routed registers what it finds there
        setattr(routed, name, timing(getattr(routed, name)))
    start = time.perf_counter()
    routed.__enter__()
    spent.append(time.perf_counter() - start)
    try:
        yield routed
    finally:
        start = time.perf_counter()
        routed.__exit__(None, None, None)
        spent.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.repeats, args.tokens = 2, 1, 4

    model, tokenizer = load_model("default")
    labelled = intent_queries(24, seed=0)
    queries = [q.item.prompt for q in labelled]
    labels = np.array([int(q.intent != "knowledge") for q in labelled])
    with tempfile.TemporaryDirectory() as scratch:
        x = gate_features(model, tokenizer, queries, [0], "mean", scratch, progress=False)[0]
    everything = Split(np.arange(len(queries)), np.arange(len(queries)))
    gate, _ = fit_gate(x, labels, everything, layer=0, position="mean")
    attach_adapter(model, "bench", first_block=1)  # an untrained adapter: its arithmetic runs all the same
    embedding = EmbeddingRouter().fit(queries, labels)
    test = [q.item.prompt for q in intent_queries(args.queries, seed=1)][: args.queries]
    plain, inside, relative = in_pass(model, tokenizer, gate, test, args.repeats, args.tokens)
    answering = statistics.median(plain)
    feature = torch.as_tensor(x[:1])
    arithmetic = timed(lambda: [gate.logit(feature) for _ in range(1000)], 3) / 1000
    partial = timed(lambda: [route_probabilities(model, tokenizer, gate, [q]) for q in test], args.repeats) / len(test)
    minilm = timed(lambda: [embedding.scores([q]) for q in test], args.repeats) / len(test)

    print(f"answering one query (prefill + {args.tokens} tokens), median of {len(plain)}: {answering * 1000:.0f} ms")
    print(f"{'router':44s} {'ms/query':>10s} {'of answering':>13s} {'extra weights':>14s}")
    rows = [("in-model gate: probe arithmetic", arithmetic, gate.n_parameters)]
    rows += [
        (f"in-model gate, {case}: inside the hooks", statistics.median(seconds), gate.n_parameters)
        for case, seconds in inside.items()
    ]
    rows += [
        ("gate from a separate partial pass", partial, gate.n_parameters),
        ("MiniLM + logistic (separate model)", minilm, embedding.encoder.n_parameters + 384 + 1),
    ]  # encoder + logistic weights and bias
    for name, seconds, weights in rows:
        print(f"{name:44s} {seconds * 1000:10.3f} {seconds / answering:13.4%} {weights:14,d}")
    print(f"end to end, answering inside Routed vs alone (mean over {len(plain) // len(inside)} pairs, 95% CI):")
    for case, differences in relative.items():
        estimate = bootstrap_mean(differences)
        print(f"  {case:30s} {estimate.mean:+.2%} [{estimate.low:+.2%}, {estimate.high:+.2%}]")


def in_pass(model, tokenizer, gate, queries: list[str], repeats: int, tokens: int) -> tuple[list, dict, dict]:
    """Each query answered alone and inside ``Routed`` for each case, in pairs whose order alternates: the plain
    answers' seconds, and per case the seconds inside routing and the relative difference of each pair."""
    prompts = [render(tokenizer, query, Condition("none")) for query in queries]
    always, never = dataclasses.replace(gate, threshold=0.0), dataclasses.replace(gate, threshold=1.01)
    zero = torch.zeros(model.cfg.d_model)
    cases = {
        "steering, query routed": lambda: Routed(model, always, steering=(1, zero)),
        "adapter, query sent to base": lambda: Routed(model, never, adapter="bench"),
        "adapter, query routed": lambda: Routed(model, always, adapter="bench"),
    }

    def answer(prompt) -> float:
        start = time.perf_counter()
        generate(model, tokenizer, [prompt], max_new_tokens=tokens, progress=False)
        return time.perf_counter() - start

    answer(prompts[0])  # warm up, and build what the first routed block builds once (the hook names)
    for make in cases.values():
        with make():
            pass
    plain, inside, relative = [], {case: [] for case in cases}, {case: [] for case in cases}
    for repeat in range(repeats):
        for number, prompt in enumerate(prompts):
            for case, make in cases.items():
                spent: list[float] = []
                first_plain = (repeat + number) % 2 == 0  # alternate the order, so drift hits both alike
                alone = answer(prompt) if first_plain else None
                with clocked(make(), spent):
                    routed = answer(prompt)
                alone = answer(prompt) if alone is None else alone
                plain.append(alone)
                inside[case].append(sum(spent))
                relative[case].append(routed / alone - 1)
    return plain, inside, relative


if __name__ == "__main__":
    main()
