"""Load on a local ``prism serve``: concurrent clients for a bounded time, and batched serving against one at a time.

Starts ``prism serve`` (a subprocess on 127.0.0.1, the embedded model) over a PRISM working
directory: ``--out`` if given, else a quick one made here (a logistic gate fitted on block 0 to
intent labels, and an untrained LoRA adapter on the later blocks: the arithmetic of a trained
one). Then, each phase for ``--duration`` seconds of closed-loop clients (each sends its next
chat request when its answer is in; requests in flight at the end are waited for and counted):

1. ``--clients`` clients (default 32) against batched serving (``--max-batch-size``);
2. ``--compare-clients`` clients (default 16) against batched serving, and against a server
   that answers one request at a time (``--max-batch-size 1``).

With ``--engine vllm`` (or ``both``), one more pair of phases: ``--compare-clients`` clients against
``prism serve --engine hf`` (batched) and against ``prism serve --engine vllm`` (vLLM decodes, the gate is read in
the server process), on the same prompts; it prints both engines' tokens/s and p50/p95 and the ratio vLLM / hf, and
the gate pass's cost as a share of answering (its time per prompt against one client's latency on vLLM). ``--engine
vllm`` skips the hf-only phases 1 and 2.

Prints for each phase: requests sent and answered (each exactly once: the count of answers, of
distinct answer ids and the server's own count must all equal the requests sent), 5xx and other
errors, p50/p95 latency, generated tokens/s; then the throughput ratio of batched serving to
one at a time. Greedy answers (temperature 0) are compared across phases per prompt: a prompt
with two different answers means either a near-tie flipped by batched rounding or a mix-up.

    python bench/serve_load.py [--clients 32] [--duration 20] [--max-tokens 24] [--threads 1] [--out runs/prism]
                               [--engine hf|vllm|both] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from prism.adapters import attach_adapter, save_adapter
from prism.gate import fit_gate, gate_features
from prism.persona_path import GATED
from prism.server.launch import served_files
from prism.server.vllm_engine import VllmServeEngine
from prism.server.vllm_modes import VllmModes
from prism.workdir import PrismDirectory
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render
from probes.intents import intent_queries
from probes.splits import Split

ROOT = Path(__file__).resolve().parents[1]


def quick_directory(out: Path, queries: list[str], labels: np.ndarray) -> PrismDirectory:
    """A PRISM working directory on the embedded model: a gate on block 0 and an untrained adapter on blocks 1..L-1."""
    work = PrismDirectory(out)
    work.record_model(work.model_name("default", create=True))
    model, tokenizer = load_model("default")
    x = gate_features(model, tokenizer, queries, [0], "last", work.gate_features, progress=False)[0]
    gate, _ = fit_gate(x, labels, Split(np.arange(len(queries)), np.arange(len(queries))), layer=0, position="last")
    gate.save(work.gate)
    config = attach_adapter(model, GATED, first_block=1)
    save_adapter(model, GATED, work.adapter(GATED), config.to_dict())
    return work


class Server:
    """``prism serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(
        self, out: Path, max_batch_size: int, batch_wait_ms: float, threads: int | None, engine: str = "hf"
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "prism.cli",
            "serve",
            "--out",
            str(out),
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--max-batch-size",
            str(max_batch_size),
            "--batch-wait-ms",
            str(batch_wait_ms),
            "--max-queue",
            "1024",
            "--log-level",
            "warning",
            "--engine",
            engine,
        ]
        command += ["--threads", str(threads)] if threads else []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server stopped: {self.process.stderr.read()}")
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start in 10 minutes")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.communicate(timeout=120)

    def answered(self) -> int:
        text = httpx.get(self.url + "/metrics").text
        return sum(
            int(n)
            for n in re.findall(
                r'^prism_requests_total\{endpoint="/v1/chat/completions"[^}]*\} (\d+)$', text, flags=re.M
            )
        )


async def load(url: str, clients: int, duration: float, queries: list[str], max_tokens: int) -> dict:
    """``clients`` closed-loop clients for ``duration`` seconds; every request's outcome."""
    sent, results = [0], []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.monotonic()

        async def client(number: int) -> None:
            turn = 0
            while time.monotonic() - start < duration:
                query = queries[(number * 7 + turn) % len(queries)]
                turn += 1
                sent[0] += 1
                began = time.monotonic()
                body = {
                    "model": "prism",
                    "messages": [{"role": "user", "content": query}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                try:
                    response = await http.post("/v1/chat/completions", json=body)
                    answer = response.json() if response.status_code == 200 else None
                    results.append((query, response.status_code, time.monotonic() - began, answer))
                except httpx.HTTPError as error:
                    results.append((query, type(error).__name__, time.monotonic() - began, None))

        await asyncio.gather(*(client(number) for number in range(clients)))
        wall = time.monotonic() - start
    return {"sent": sent[0], "results": results, "wall": wall}


def gate_share(out: Path, queries: list[str], latency: float) -> str:
    """The gate pass (blocks 0..k in the server process) per prompt, and its share of one client's answer latency."""
    name, files = served_files(out)
    model, tokenizer = load_model(name)
    engine = VllmServeEngine(model, tokenizer, VllmModes.from_files(files, "prism"), url="http://127.0.0.1:1/v1")
    prompts = [encode(tokenizer, render(tokenizer, query, Condition("none"))) for query in queries]
    engine.decide(prompts[0])  # warm up
    start = time.perf_counter()
    for ids in prompts:
        engine.decide(ids)
    each = (time.perf_counter() - start) / len(prompts)
    return f"gate pass {each * 1000:.1f} ms per prompt = {100 * each / latency:.1f}% of answering (1 client, vLLM)"


def report(name: str, run: dict, server_count: int) -> tuple[float, float, float]:
    results = run["results"]
    good = [r for r in results if r[1] == 200]
    ids = {r[3]["id"] for r in good}
    server_errors = sum(1 for r in results if isinstance(r[1], int) and r[1] >= 500)
    other = len(results) - len(good) - server_errors
    latencies = sorted(r[2] for r in good)
    tokens = sum(r[3]["usage"]["completion_tokens"] for r in good)
    throughput = tokens / run["wall"]
    once = len(results) == run["sent"] == len(ids) == server_count
    p50, p95 = (
        (statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))])
        if latencies
        else (0, 0)
    )
    print(
        f"{name}: sent {run['sent']}, answered {len(good)} ({len(ids)} distinct ids, server counted {server_count}; "
        f"each exactly once: {'yes' if once else 'NO'}), 5xx {server_errors}, other errors {other}; "
        f"latency p50 {p50:.2f}s p95 {p95:.2f}s; {tokens} tokens in {run['wall']:.1f}s = {throughput:.1f} tokens/s",
        flush=True,
    )
    return throughput, p50, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--compare-clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase (default: 20)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, help="the server's CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="a trained PRISM working directory (default: a quick one, made here)")
    parser.add_argument(
        "--engine",
        default="hf",
        choices=("hf", "vllm", "both"),
        help="hf: the batching phases only; vllm: prism serve --engine hf against --engine vllm; "
        "both: all of them (default: hf)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.compare_clients, args.duration, args.max_tokens = 2, 2, 2.0, 4

    labelled = intent_queries(24, seed=0)
    queries = [q.item.prompt for q in labelled]
    with tempfile.TemporaryDirectory() as scratch:
        out = (
            args.out
            or quick_directory(
                Path(scratch) / "prism", queries, np.array([int(q.intent != "knowledge") for q in labelled])
            ).root
        )
        threads = args.threads or "torch's default"
        print(
            f"{os.cpu_count()} CPU cores (shared with whatever else runs here), server threads: {threads}; "
            f"{len(queries)} prompts, {args.max_tokens} tokens each at most, greedy; {args.duration:.0f}s per phase",
            flush=True,
        )
        answers: dict[str, set[str]] = {}
        throughput = {}
        phases = (
            [
                (args.max_batch_size, "hf", [("batched", args.clients), ("batched", args.compare_clients)]),
                (1, "hf", [("one at a time", args.compare_clients)]),
            ]
            if args.engine != "vllm"
            else []
        )
        if args.engine != "hf":
            phases += [
                (args.max_batch_size, "hf", [("engine hf", args.compare_clients)]),
                (args.max_batch_size, "vllm", [("engine vllm", args.compare_clients), ("engine vllm", 1)]),
            ]
        for max_batch, engine, runs in phases:
            with Server(out, max_batch, args.batch_wait_ms, args.threads, engine) as server:
                asyncio.run(load(server.url, 2, 3, queries, 4))  # warm up
                for name, clients in runs:
                    before = server.answered()
                    run = asyncio.run(load(server.url, clients, args.duration, queries, args.max_tokens))
                    label = f"{name} (max batch {max_batch}), {clients} clients"
                    throughput[(name, clients)] = report(label, run, server.answered() - before)
                    for query, status, _, answer in run["results"]:
                        if status == 200:
                            answers.setdefault(query, set()).add(answer["choices"][0]["message"]["content"])
        if args.engine != "vllm":
            ratio = (
                throughput[("batched", args.compare_clients)][0]
                / throughput[("one at a time", args.compare_clients)][0]
            )
            print(f"throughput at {args.compare_clients} clients, batched / one at a time: {ratio:.2f}x (target >= 3x)")
        if args.engine != "hf":
            (hf, hf50, hf95), (vl, vl50, vl95) = (
                throughput[(f"engine {e}", args.compare_clients)] for e in ("hf", "vllm")
            )
            print(
                f"{args.compare_clients} clients: hf {hf:.1f} tokens/s (p50 {hf50:.2f}s, p95 {hf95:.2f}s), vllm "
                f"{vl:.1f} tokens/s (p50 {vl50:.2f}s, p95 {vl95:.2f}s); vllm / hf {vl / hf:.2f}x"
            )
            print(gate_share(Path(out), queries, throughput[("engine vllm", 1)][1]))
        differing = sum(1 for texts in answers.values() if len(texts) > 1)
        print(f"prompts with more than one greedy answer across phases: {differing} of {len(answers)}")


if __name__ == "__main__":
    main()
