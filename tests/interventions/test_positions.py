"""Positions of an intervention are positions of each sequence, whatever passes the consumer makes.

The reference for every batched run is each item run alone, with the edit at its own positions: a shared
prefix, several batches, left padding and cached generation must not change which tokens are edited.
"""

import pytest
import torch

from interventions.hooks import AblateDirection, AddDirection
from interventions.measure.evaluate import evaluate
from interventions.measure.generation import generate
from interventions.measure.scoring import score_choices
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, render
from probes.positions import PassTracker, prompts

QUERIES = [
    "What is the capital of France?",
    "Name a prime number.",
    "Which ocean is the largest on Earth?",
    "Who wrote Hamlet?",
    "What is two plus two?",
    "Say hello.",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "What is the boiling point of water at sea level in Celsius?",
    "Name a planet.",
]
OPTIONS = [[" Paris is the answer", " Lyon"], [" seven", " eight or nine"]] * 5


def _rendered(tokenizer, condition=Condition("math", length="min")):
    return [render(tokenizer, query, condition) for query in QUERIES]


def _steer(model, positions, scale=40.0):
    torch.manual_seed(1)
    return AddDirection(model, torch.randn(model.cfg.d_model), scale=scale, layers=[1], positions=positions)


def _logprobs(results):
    return torch.tensor([result.logprobs for result in results])


@pytest.mark.parametrize("positions", [[-1], [-3, 0], "prompt", "generated", "all"])
def test_scoring_in_batches_edits_what_each_item_alone_would(tiny, positions):
    model, tokenizer = tiny
    prompts_ = _rendered(tokenizer)
    answers = [0] * len(prompts_)
    clean = _logprobs(score_choices(model, tokenizer, prompts_, OPTIONS, answers, batch_size=3, progress=False))
    with _steer(model, positions) as steer:  # 4 batches, each with a shared persona prefix
        batched = _logprobs(score_choices(model, tokenizer, prompts_, OPTIONS, answers, batch_size=3, progress=False))
    alone = []
    for prompt, options in zip(prompts_, OPTIONS):
        with _steer(model, positions):
            alone.append(_logprobs(score_choices(model, tokenizer, [prompt], [options], [0], progress=False))[0])
    assert torch.allclose(batched, torch.stack(alone), atol=1e-4)
    assert ((batched - clean).abs().amax(1) > 1e-3).all()  # every item moved
    if positions == [-1]:
        assert steer.record()["hooks"]["blocks.1.hook_out"]["positions_changed"] == len(prompts_)


def test_a_position_inside_the_shared_prefix_for_some_sequences_only_is_refused(tiny):
    model, tokenizer = tiny
    prompts_ = _rendered(tokenizer)
    shortest = min(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in prompts_)
    with pytest.raises(ToolkitError, match="share_prefix=False"), _steer(model, [-(shortest - 2)]):
        score_choices(model, tokenizer, prompts_, OPTIONS, [0] * len(prompts_), batch_size=10, progress=False)
    with _steer(model, [-(shortest - 2)]):  # the same positions without a shared prefix are fine
        score_choices(model, tokenizer, prompts_[:2], OPTIONS[:2], [0, 0], share_prefix=False, progress=False)


def test_a_position_outside_a_prompt_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ToolkitError, match="outside a prompt of"), _steer(model, [500]):
        score_choices(model, tokenizer, _rendered(tokenizer)[:2], OPTIONS[:2], [0, 0], progress=False)


@pytest.mark.parametrize("positions", [[-1], "prompt", "generated"])
def test_generation_in_two_left_padded_batches_edits_what_each_prompt_alone_would(tiny, positions):
    model, tokenizer = tiny
    prompts_ = _rendered(tokenizer, Condition("none"))[:4]
    kwargs = dict(max_new_tokens=6, batch_size=2, progress=False)
    clean = generate(model, tokenizer, prompts_, **kwargs)
    with _steer(model, positions, scale=8.0) as steer:
        batched = generate(model, tokenizer, prompts_, **kwargs)
    alone = []
    for prompt in prompts_:
        with _steer(model, positions, scale=8.0):
            alone += generate(model, tokenizer, [prompt], **kwargs)
    assert batched == alone
    assert batched != clean
    changed = steer.record()["hooks"]["blocks.1.hook_out"]["positions_changed"]
    if positions == [-1]:
        assert changed == len(prompts_)


def test_an_undeclared_cached_loop_continues_the_prompt_of_its_first_pass(tiny):
    """A hand-written decoding loop on the Hugging Face module: the uncached pass is the prompt, later passes
    are generated tokens, with no declaration."""
    model, tokenizer = tiny
    hf = model.original_model
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    torch.manual_seed(0)
    direction = torch.randn(model.cfg.d_model)
    with torch.inference_mode(), AblateDirection(model, direction, layers=[0], positions="generated") as ablate:
        past = hf(input_ids=ids, use_cache=True).past_key_values
        for step in range(3):
            past = hf(input_ids=ids[:, -1:], past_key_values=past, use_cache=True).past_key_values
    assert ablate.record()["hooks"]["blocks.0.hook_out"] == {"calls": 4, "positions_changed": 3}


def test_a_pass_of_another_batch_size_than_declared_is_refused(tiny):
    model, tokenizer = tiny
    tokens = torch.tensor([tokenizer("a b c d")["input_ids"]] * 3)
    with pytest.raises(ToolkitError, match="declared for 2 sequences"), PassTracker(model), prompts([4, 4]):
        with torch.inference_mode():
            model.original_model(input_ids=tokens)


def test_the_package_example_steers_each_items_last_prompt_token(smol):
    """``interventions``' docstring example, as written there, against each item alone."""
    model, tokenizer = smol
    items = stratified_sample(load_dataset("capitals"), 24, seed=0)
    torch.manual_seed(0)
    direction = torch.randn(model.cfg.d_model)

    def margins(chosen):
        result = evaluate(model, tokenizer, chosen, Condition("none"), scoring="cloze", progress=False)
        return torch.tensor([row["margin"] for row in result["items"]])

    clean = margins(items)
    with AddDirection(model, direction, scale=200.0, layers=[12], positions=[-1]) as steering:
        result = evaluate(model, tokenizer, items, Condition("none"), scoring="cloze", progress=False)
    print(steering.record())
    batched = torch.tensor([row["margin"] for row in result["items"]])
    alone = []
    for item in items:
        with AddDirection(model, direction, scale=200.0, layers=[12], positions=[-1]):
            alone.append(margins([item])[0])
    assert torch.allclose(batched, torch.stack(alone), atol=1e-3)
    assert ((batched - clean).abs() > 1e-3).all()  # every item's margin moved
    assert steering.record()["hooks"]["blocks.12.hook_out"]["positions_changed"] == len(items)
