"""How much multiple-choice scoring saves by reusing work, measured in one run.

Three ways to score the same capital-city items under a long persona (system prompt):
- every option as its own full sequence (context + option) through the model, unembedding only
  the positions that predict the option;
- each context once, its cache serving the four options;
- as above, and the persona prefix every context shares run once per batch (the default).
Prints seconds per item and the speed-up over full sequences, and checks that the scores agree.

    python bench/scoring_reuse.py [--items 32] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import time

import torch

import interventions.measure.scoring as scoring
from interventions.measure.scoring import score_choices
from probes.core.batching import length_sorted_batches, right_pad
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.models import load_model
from probes.core.prompts import Condition, encode
from probes.core.rendering import continuations, render_items


@torch.inference_mode()
def full_sequences(model, tokenizer, prompts, options, batch_size=8) -> list[list[float]]:
    jobs = []
    for p, (prompt, texts) in enumerate(zip(prompts, options)):
        context = encode(tokenizer, prompt)
        for o, text in enumerate(texts):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            jobs.append((p, o, context, ids))
    scores = [[0.0] * len(texts) for texts in options]
    for batch in length_sorted_batches([len(c) + len(i) for _, _, c, i in jobs], batch_size):
        tokens = right_pad([jobs[j][2] + jobs[j][3] for j in batch], tokenizer.pad_token_id)
        hidden = model.original_model.model(input_ids=tokens).last_hidden_state
        for row, j in enumerate(batch):
            p, o, context, ids = jobs[j]
            # unembed only the positions that predict the option's tokens
            steps = model.original_model.lm_head(hidden[row, len(context) - 1 : len(context) - 1 + len(ids)])
            steps = steps.float().log_softmax(-1)
            scores[p][o] = float(steps.gather(-1, torch.tensor(ids)[:, None]).sum())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="a few items, one repeat: checks that it runs; no real numbers"
    )
    args = parser.parse_args()
    if args.smoke:
        args.items, args.repeats = 2, 1
    torch.set_num_threads(2)
    model, tokenizer = load_model("default")
    items = stratified_sample(load_dataset("capitals"), args.items, seed=0)
    prompts = render_items(tokenizer, items, Condition("humanities", "long", "system"), scoring="cloze")
    options = [continuations(item, "cloze") for item in items]
    answers = [item.answer for item in items]

    def cached(share: bool):
        scoring.MIN_SHARED_PREFIX = 8 if share else 10**9
        return [list(r.logprobs) for r in score_choices(model, tokenizer, prompts, options, answers, progress=False)]

    methods = {
        "full sequences": lambda: full_sequences(model, tokenizer, prompts, options),
        "context cache": lambda: cached(False),
        "context cache + shared prefix": lambda: cached(True),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    results = {}
    for _ in range(args.repeats):
        for name, run in methods.items():  # interleaved, so machine noise hits all three alike
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    reference = torch.tensor(results["full sequences"])
    print(
        f"{args.items} capital-city items x 4 options, long persona in the system prompt, 2 threads, "
        f"best of {args.repeats}"
    )
    for name in methods:
        best = min(times[name])
        error = float((torch.tensor(results[name]) - reference).abs().max())
        print(
            f"  {name:<32} {best / args.items * 1000:7.1f} ms/item   x{min(times['full sequences']) / best:4.2f}"
            f"   max |Δ logprob| vs full {error:.1e}"
        )


if __name__ == "__main__":
    main()
