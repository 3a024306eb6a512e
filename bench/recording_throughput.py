"""Recording throughput as a ratio to a bare Hugging Face forward on the same batches.

Prints cold and warm model-load times, then times `record_activations` (residual stream after
every block, last prompt token, written to a store) against a plain `AutoModelForCausalLM`
forward over exactly the same padded batches, interleaved, and reports the median ratio of
tokens per second. Target: recording >= 0.9x the bare forward.

    python bench/recording_throughput.py [--prompts 64] [--batch-size 16] [--repeats 3] [--skip-cold] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from probes.core.batching import length_sorted_batches, right_pad
from probes.core.datasets import load_mmlu, load_mtbench, stratified_sample
from probes.core.models import load_model, resolve_model_directory
from probes.core.prompts import Condition, encode, render
from probes.recording import record_activations

LOAD_SNIPPET = (
    "import time; from probes.core.models import load_model; "
    "t = time.perf_counter(); load_model(); print(time.perf_counter() - t)"
)


def timed_load(cache: str | None) -> float:
    env = dict(os.environ)
    if cache:
        env["PRISM_CACHE_DIR"] = cache
    output = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], env=env, capture_output=True, text=True, check=True)
    return float(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold load (dequantising the GGUF again)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.batch_size, args.repeats, args.skip_cold = 4, 2, 1, True
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as cache:
            print(f"cold load_model() (GGUF -> dense cache, fresh cache dir): {timed_load(cache):.1f}s")
    load_model()  # make sure the default cache exists
    print(f"warm load_model() (safetensors cache, new process, imports excluded): {timed_load(None):.2f}s")

    bridge, tokenizer = load_model()
    bare = AutoModelForCausalLM.from_pretrained(resolve_model_directory("default")[0], dtype=torch.float32).eval()
    items = stratified_sample(load_mmlu(), args.prompts // 2, seed=0) + stratified_sample(
        load_mtbench(), args.prompts // 2, seed=0
    )
    prompts = [render(tokenizer, item.prompt, Condition("stem", "short", "system")) for item in items]
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    n_tokens = sum(len(ids) for ids in encoded)
    batches = [
        right_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
        for batch in length_sorted_batches([len(ids) for ids in encoded], args.batch_size)
    ]
    print(
        f"workload: {len(prompts)} prompts, {n_tokens} tokens, batch size {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )

    def bare_forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for tokens in batches:
                bare(tokens)
        return time.perf_counter() - start

    def recording() -> float:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            record_activations(
                bridge, tokenizer, prompts, Path(out) / "store", batch_size=args.batch_size, progress=False
            )
            return time.perf_counter() - start

    bare_forward(), recording()  # warm-up
    ratios = []
    for repeat in range(args.repeats):
        hf_seconds, record_seconds = bare_forward(), recording()
        ratios.append(hf_seconds / record_seconds)
        print(
            f"  repeat {repeat}: bare HF {n_tokens / hf_seconds:.0f} tok/s, recording "
            f"{n_tokens / record_seconds:.0f} tok/s, ratio {ratios[-1]:.2f}"
        )
    print(
        f"recording throughput / bare HF forward: {statistics.median(ratios):.2f}x (median of {args.repeats}; "
        "target >= 0.9)"
    )


if __name__ == "__main__":
    main()
