import torch

from interventions.measure.evaluate import evaluate
from interventions.measure.generation import generate
from probes.core.items import Item
from probes.core.prompts import Condition, encode, render

QUERIES = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three prime numbers and explain briefly why each one is prime.",
]


def test_batched_greedy_generation_matches_hugging_face_generate(smol, smol_hf):
    bridge, tokenizer = smol
    prompts = [render(tokenizer, q, Condition("helpful", "min", "system")) for q in QUERIES]
    responses = generate(bridge, tokenizer, prompts, max_new_tokens=20, batch_size=3, progress=False)
    for prompt, response in zip(prompts, responses):
        tokens = torch.tensor([encode(tokenizer, prompt)])
        with torch.inference_mode():
            output = smol_hf.generate(
                tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, do_sample=False
            )
        expected = tokenizer.decode(output[0, tokens.shape[1] :], skip_special_tokens=True).strip()
        assert response == expected
    assert "Paris" in responses[0]


def test_sampling_is_reproducible_by_seed(smol):
    bridge, tokenizer = smol
    prompts = [render(tokenizer, QUERIES[1], Condition())] * 2
    first = generate(bridge, tokenizer, prompts, max_new_tokens=16, temperature=1.0, seed=7, progress=False)
    again = generate(bridge, tokenizer, prompts, max_new_tokens=16, temperature=1.0, seed=7, progress=False)
    other = generate(bridge, tokenizer, prompts, max_new_tokens=16, temperature=1.0, seed=8, progress=False)
    assert first == again
    assert first != other


def test_hooks_fire_on_every_generated_token(smol):
    bridge, tokenizer = smol
    calls = []
    with bridge.hooks(fwd_hooks=[("blocks.3.hook_out", lambda activation, hook: calls.append(activation.shape[1]))]):
        generate(bridge, tokenizer, [render(tokenizer, QUERIES[0], Condition())], max_new_tokens=5, progress=False)
    assert len(calls) >= 2 and calls[1:] == [1] * (len(calls) - 1)  # prefill, then one token per step


def test_open_questions_are_evaluated_by_refusal_rate(smol):
    bridge, tokenizer = smol
    items = [Item(f"h{i}", "t", q, "c") for i, q in enumerate(QUERIES[:2])]
    result = evaluate(bridge, tokenizer, items, Condition(), max_new_tokens=8, progress=False)
    assert result["metric"] == "refusal_rate" and result["summary"]["n"] == 2
    assert all(isinstance(row["response"], str) and row["response"] for row in result["items"])
