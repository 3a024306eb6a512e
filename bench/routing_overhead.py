"""What routing costs, as a fraction of answering a query, measured in one run.

Answering = prefill + 64 greedy tokens on the embedded model, one query at a time (the
latency a user sees). Routers:
- in-model probe gate: read after block 0 during the answering pass itself. Its cost is the
  probe's arithmetic (timed alone) plus the hook machinery (timed end to end: answering inside
  ``Routed`` with a zero steering vector, so nothing but routing changes);
- the same gate from a separate partial pass (blocks 0..k only), as a training-free router must;
- a separate classifier: all-MiniLM-L6-v2 embeddings + logistic regression.
Prints medians over interleaved repeats, the overhead ratios and each router's extra weights.

    python bench/routing_overhead.py [--queries 8] [--repeats 3] [--tokens 64] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from interventions.measure.generation import generate
from prism.baselines import EmbeddingRouter
from prism.gate import fit_gate, gate_features
from prism.routing import Routed, route_probabilities
from probes.core.models import load_model
from probes.core.prompts import Condition, render
from probes.intents import intent_queries
from probes.splits import Split


def timed(fn, repeats: int) -> float:
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
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
    embedding = EmbeddingRouter().fit(queries, labels)
    test = [q.item.prompt for q in intent_queries(args.queries, seed=1)][: args.queries]
    prompts = [render(tokenizer, query, Condition("none")) for query in test]
    zero = torch.zeros(model.cfg.d_model)

    def answer_all(context=None):
        for prompt in prompts:
            if context is None:
                generate(model, tokenizer, [prompt], max_new_tokens=args.tokens, progress=False)
            else:
                with context():
                    generate(model, tokenizer, [prompt], max_new_tokens=args.tokens, progress=False)

    feature = torch.as_tensor(x[:1])
    answer_all()  # warm up
    rows = {
        "answer": [],
        "answer inside Routed": [],
        "gate arithmetic": [],
        "partial pass (blocks 0..0)": [],
        "MiniLM router": [],
    }
    for _ in range(args.repeats):  # interleaved, so drift hits every row alike
        rows["answer"].append(timed(answer_all, 1) / len(prompts))
        rows["answer inside Routed"].append(
            timed(lambda: answer_all(lambda: Routed(model, gate, steering=(1, zero))), 1) / len(prompts)
        )
        rows["gate arithmetic"].append(timed(lambda: [gate.logit(feature) for _ in range(1000)], 1) / 1000)
        rows["partial pass (blocks 0..0)"].append(
            timed(lambda: [route_probabilities(model, tokenizer, gate, [q]) for q in test], 1) / len(test)
        )
        rows["MiniLM router"].append(timed(lambda: [embedding.scores([q]) for q in test], 1) / len(test))
    median = {name: statistics.median(values) for name, values in rows.items()}
    answer = median["answer"]
    print(f"answering one query (prefill + {args.tokens} tokens), median of {args.repeats}: {answer * 1000:.0f} ms")
    print(f"{'router':34s} {'ms/query':>10s} {'of answering':>13s} {'extra weights':>14s}")
    in_pass = median["answer inside Routed"] - answer
    lines = [
        ("in-model gate: probe arithmetic", median["gate arithmetic"], gate.n_parameters),
        ("in-model gate: end to end (hooks)", in_pass, gate.n_parameters),
        ("gate from a separate partial pass", median["partial pass (blocks 0..0)"], gate.n_parameters),
        ("MiniLM + logistic (separate model)", median["MiniLM router"], embedding.encoder.n_parameters + 384 + 1),
    ]  # encoder + logistic weights and bias
    for name, seconds, weights in lines:
        print(f"{name:34s} {seconds * 1000:10.3f} {seconds / answer:13.4%} {weights:14,d}")
    print("(end to end is the difference of two noisy timings: near zero it can come out negative)")


if __name__ == "__main__":
    main()
