"""The toolkit's core paths on one device and in one precision, as ratios to the bare model, in one run.

Builds a random-weight Llama-style model of a named shape on the chosen device and dtype (no
weights travel: ``LlamaConfig`` -> ``LlamaForCausalLM`` -> ``save_pretrained`` with the embedded
SmolLM2 tokenizer into a temporary directory -> ``load_model``), then prints:
- bare Hugging Face forward tokens/s (``model.original_model`` on right-padded batches);
- recording every block's residual (last token, into a store) over the same prompts and batches,
  as a ratio to the bare forward (target >= 0.9x); recording stops after the last block, the bare
  forward also unembeds, so on ``tiny`` (d=64, vocab 49152) the ratio is far above 1;
- multiple-choice scoring items/s on capital-city items under a long persona, with and without
  the shared prefix run once per batch;
- greedy generation new tokens/s (EOS suppressed, so every row makes ``--new-tokens``), and the
  same inside ``Routed`` (a random logistic gate after block 0, a zero steering vector at a middle
  block: nothing but routing changes), as a ratio (target >= 0.97x);
- LoRA distillation samples/s (``DistillConfig(epochs=1, first_block=1, batch_size=--batch)``, teacher pass
  included) in padded batches, and as a ratio to one sample per forward pass (``micro_batch_size=1``);
- peak memory: ``torch.cuda.max_memory_allocated`` on CUDA (also per section), max RSS on the CPU.
Ratios are medians over interleaved repeats; a section that fails prints its error and the run goes on.

    python bench/devices.py [--shape tiny|1b|8b] [--device auto] [--dtype auto] [--batch N] [--tokens N]
                            [--prompts N] [--items N] [--new-tokens N] [--samples N] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from interventions.measure.generation import generate
from interventions.measure.scoring import score_choices
from interventions.measure.tasks import TASKS
from prism.distill import DistillConfig, distill
from prism.gate import Gate
from prism.routing import Routed
from prism.samples import Sample
from probes.core.batching import length_sorted_batches, right_pad
from probes.core.devices import dtype_name, resolve_device, resolve_dtype
from probes.core.errors import ToolkitError
from probes.core.models import load_model, resolve_model_directory
from probes.core.prompts import Condition, encode, render
from probes.recording import record_activations

# shape -> (LlamaConfig fields, workload defaults: batch, tokens, prompts, items, new tokens, samples)
SHAPES = {
    "tiny": (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
            tie_word_embeddings=True,
        ),
        dict(batch=8, tokens=128, prompts=16, items=16, new_tokens=32, samples=8),
    ),
    "1b": (
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
            rope_theta=500000.0,
        ),
        dict(batch=16, tokens=440, prompts=64, items=64, new_tokens=64, samples=16),
    ),
    "8b": (
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
            rope_theta=500000.0,
        ),
        dict(batch=16, tokens=440, prompts=64, items=64, new_tokens=64, samples=16),
    ),
}
WORDS = (
    "the river city north market light stone garden people water history music country winter paper "
    "table window mountain story science village morning language number system family doctor"
).split()
PEAKS: list[float] = []  # CUDA peaks (GiB) of the load and of each section


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(shape: str, device: torch.device, dtype: torch.dtype, directory: Path):
    """A random-weight model of ``shape`` saved with the embedded tokenizer, then loaded through the toolkit."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_directory("default")[0])
    config = LlamaConfig(
        **SHAPES[shape][0],
        max_position_embeddings=4096,
        architectures=["LlamaForCausalLM"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    assert config.vocab_size >= len(tokenizer), "the tokenizer's ids must fit the model's vocabulary"
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return load_model(str(directory), device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` interleaved rounds, after one warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def workload(tokenizer, n: int, tokens: int) -> list:
    """``n`` rendered prompts of about ``tokens`` tokens each (0.9x to 1.1x), from repeated words."""
    rng = random.Random(0)
    overhead = len(encode(tokenizer, render(tokenizer, "x", Condition("none")))) - 1
    return [
        render(
            tokenizer,
            " ".join(rng.choice(WORDS) for _ in range(max(1, int(tokens * rng.uniform(0.9, 1.1)) - overhead))),
            Condition("none"),
        )
        for _ in range(n)
    ]


def forward_and_recording(model, tokenizer, prompts, args, device) -> None:
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    n_tokens = sum(len(ids) for ids in encoded)
    batches = [
        right_pad([encoded[i] for i in batch], tokenizer.pad_token_id).to(device)
        for batch in length_sorted_batches([len(ids) for ids in encoded], args.batch)
    ]

    def bare() -> None:
        with torch.inference_mode():
            for tokens in batches:
                model.original_model(tokens)

    def recording() -> None:
        with tempfile.TemporaryDirectory() as out:
            record_activations(
                model, tokenizer, prompts, Path(out) / "store", positions="last", batch_size=args.batch, progress=False
            )

    seconds = interleaved({"bare": bare, "recording": recording}, args.repeats, device)
    print(
        f"  workload: {len(prompts)} prompts, {n_tokens} tokens ({n_tokens / len(prompts):.0f} per prompt), "
        f"batches of {args.batch}"
    )
    print(f"  bare HF forward: {n_tokens / seconds['bare']:,.0f} tokens/s")
    print(
        f"  recording every block's residual: {n_tokens / seconds['recording']:,.0f} tokens/s, "
        f"{seconds['bare'] / seconds['recording']:.2f}x bare forward (target >= 0.9x)"
    )


def scoring(model, tokenizer, args, device) -> None:
    task = TASKS["capitals"]
    items = task.load_items(args.items, seed=0)
    prompts = task.render(tokenizer, items, Condition("humanities", "long", "system"))
    options = [task.options(item) for item in items]
    answers = [item.answer for item in items]

    def run(share: bool):
        return lambda: score_choices(
            model,
            tokenizer,
            prompts,
            options,
            answers,
            normalise=task.normalise,
            batch_size=args.batch,
            share_prefix=share,
            progress=False,
        )

    seconds = interleaved({"whole": run(False), "shared": run(True)}, args.repeats, device)
    print(f"  {len(items)} capital-city items, {sum(map(len, options))} options, long persona as system prompt")
    print(f"  without prefix reuse: {len(items) / seconds['whole']:,.1f} items/s")
    print(
        f"  with prefix reuse: {len(items) / seconds['shared']:,.1f} items/s, "
        f"{seconds['whole'] / seconds['shared']:.2f}x without"
    )


def generation(model, tokenizer, prompts, args, device) -> None:
    prompts = prompts[: args.batch]
    model.original_model.generation_config.min_new_tokens = args.new_tokens  # no early EOS: every row is full length
    torch.manual_seed(0)
    d = model.cfg.d_model
    gate = Gate("logistic", 0, "last", {"weight": torch.randn(d) / d**0.5, "bias": torch.tensor(0.0)})
    zero = torch.zeros(d, device=device, dtype=next(model.parameters()).dtype)
    middle = max(1, model.cfg.n_layers // 2)

    def plain() -> None:
        generate(model, tokenizer, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch, progress=False)

    def routed() -> None:
        with Routed(model, gate, steering=(middle, zero)):
            plain()

    seconds = interleaved({"plain": plain, "routed": routed}, args.repeats, device)
    n_new = len(prompts) * args.new_tokens
    print(f"  {len(prompts)} prompts in one batch, {args.new_tokens} new tokens each, greedy")
    print(f"  plain generation: {n_new / seconds['plain']:,.1f} new tokens/s")
    print(
        f"  routed generation (gate after block 0, zero steering after block {middle}): "
        f"{n_new / seconds['routed']:,.1f} new tokens/s, {seconds['plain'] / seconds['routed']:.3f}x plain "
        "(target >= 0.97x)"
    )


def distillation(model, tokenizer, args, device) -> None:
    samples = [
        Sample(
            f"math-{i:04d}",
            "math",
            f"What is {i + 2} times {i + 7}?",
            f"{(i + 2) * (i + 7)}.",
            f"As a mathematician: {i + 2} x {i + 7} = {(i + 2) * (i + 7)}, since multiplication distributes.",
            True,
            True,
            (1.0, 1.0),
        )
        for i in range(args.samples)
    ]
    batched = DistillConfig(epochs=1, first_block=1, batch_size=args.batch)
    configs = {"per-sample": replace(batched, micro_batch_size=1), "batched": batched}
    names = iter(f"bench{i}" for i in range(len(configs) * (args.repeats + 1)))
    seconds = interleaved(
        {
            kind: lambda config=config: distill(model, tokenizer, samples, next(names), config, progress=False)
            for kind, config in configs.items()
        },
        args.repeats,
        device,
    )
    autocast = device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    print(
        f"  {len(samples)} samples, LoRA rank {batched.rank} on blocks {batched.first_block}.., steps of "
        f"{batched.batch_size}, "
        f"one epoch (teacher pass included), a fresh adapter each round{', bfloat16 autocast' if autocast else ''}"
    )
    print(f"  distillation one sample per forward pass: {len(samples) / seconds['per-sample']:,.2f} samples/s")
    print(
        f"  distillation in padded batches of {batched.batch_size}: {len(samples) / seconds['batched']:,.2f} "
        f"samples/s, {seconds['per-sample'] / seconds['batched']:.2f}x one sample at a time"
    )


def section(title: str, fn, device: torch.device) -> None:
    print(f"{title}:", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - a failed section is reported, the others still run
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(f"  FAILED: {type(error).__name__}: {message}")
    if device.type == "cuda":
        PEAKS.append(torch.cuda.max_memory_allocated(device) / 2**30)
        print(f"  peak GPU memory in this section: {PEAKS[-1]:.2f} GiB")
    sys.stdout.flush()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{max(PEAKS, default=0.0):.2f} GiB allocated on {device} (torch.cuda.max_memory_allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    gib = rss / 2**30 if sys.platform == "darwin" else rss / 2**20
    return f"{gib:.2f} GiB max RSS of this process (CPU run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16"
    )
    for name in ("batch", "tokens", "prompts", "items", "new-tokens", "samples"):
        parser.add_argument(f"--{name}", type=int, default=None, help="default: the shape's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:  # the tiny shape at its smallest sizes
        args.shape, args.repeats = "tiny", 1
        args.batch, args.tokens, args.prompts, args.items, args.new_tokens, args.samples = 2, 16, 2, 2, 2, 2
    for name, value in SHAPES[args.shape][1].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except ToolkitError as error:
        parser.error(str(error))

    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model, tokenizer = build(args.shape, device, dtype, Path(directory))
        if device.type == "cuda":
            PEAKS.append(torch.cuda.max_memory_allocated(device) / 2**30)
        n_parameters = sum(p.numel() for p in model.original_model.parameters())
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
        print(
            f"shape {args.shape}: {n_parameters / 1e6:,.1f}M parameters, d_model {model.cfg.d_model}, "
            f"{model.cfg.n_layers} blocks, on {device} ({name}) in {dtype_name(dtype)}; "
            f"built, saved and loaded in {time.perf_counter() - start:.1f}s; medians of {args.repeats} interleaved "
            "repeats"
        )
        prompts = workload(tokenizer, args.prompts, args.tokens)
        section("forward and recording", lambda: forward_and_recording(model, tokenizer, prompts, args, device), device)
        section("multiple-choice scoring", lambda: scoring(model, tokenizer, args, device), device)
        section("generation", lambda: generation(model, tokenizer, prompts, args, device), device)
        section("distillation", lambda: distillation(model, tokenizer, args, device), device)  # last: it adds adapters
    print(f"peak memory: {peak_memory(device)}")


if __name__ == "__main__":
    main()
