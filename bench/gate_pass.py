"""The gate's partial pass in memory against the same pass through a temporary on-disk store, in one run.

``route_probabilities`` reads the gate's block into memory (``read_activations``); before, it
recorded into a temporary activation store (manifest, provenance, safetensors shards) and read
it back. Both stop after the gate's block and give the same probabilities, which this checks.
Prints medians over interleaved repeats on the embedded model, for one query and for a batch.

    python bench/gate_pass.py [--repeats 9] [--layer 2] [--position last] [--threads 1] [--queries 16] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from prism.gate import Gate, gate_features
from prism.routing import route_probabilities
from probes.core.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--position", default="last", choices=("last", "mean", "query"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own); 1 on shared cores"
    )
    parser.add_argument("--queries", type=int, default=16, help="the batch's size (default: 16)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.queries = 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model("default")
    width = model.cfg.d_model
    weight = torch.randn(width, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / width**0.5
    gate = Gate("logistic", args.layer, args.position, {"weight": weight, "bias": torch.tensor(0.1)}, 0.5, {})
    queries = [f"What is the capital of country number {i}? Answer in one word." for i in range(args.queries)]

    def through_store(batch: list[str]) -> np.ndarray:
        with tempfile.TemporaryDirectory() as scratch:
            x = gate_features(model, tokenizer, batch, [gate.layer], gate.position, scratch, progress=False)[gate.layer]
        return gate.probability(x)

    def in_memory(batch: list[str]) -> np.ndarray:
        return route_probabilities(model, tokenizer, gate, batch)

    assert np.array_equal(through_store(queries), in_memory(queries)), "the two passes disagree"
    print(
        f"gate on block {args.layer} ({args.position}), {model.cfg.n_layers} blocks, torch threads "
        f"{torch.get_num_threads()}"
    )
    for label, batch in (("1 query", queries[:1]), (f"{args.queries} queries", queries)):
        times: dict[str, list[float]] = {"store": [], "memory": []}
        for _ in range(args.repeats):  # interleaved, so both see the same load on the machine
            for name, fn in (("store", through_store), ("memory", in_memory)):
                start = time.perf_counter()
                fn(batch)
                times[name].append(time.perf_counter() - start)
        store, memory = (statistics.median(times[name]) * 1000 for name in ("store", "memory"))
        print(
            f"{label:>10}: on-disk store {store:7.1f} ms   in memory {memory:7.1f} ms   {store / memory:4.1f}x faster"
        )


if __name__ == "__main__":
    main()
