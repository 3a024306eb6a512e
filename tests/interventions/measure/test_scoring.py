import pytest
import torch
from transformers import AutoModelForCausalLM

import interventions.measure.scoring as scoring
from interventions.measure.evaluate import evaluate
from interventions.measure.scoring import score_choices
from probes.core.datasets import load_dataset
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render
from probes.core.rendering import continuations, question_text


def _hf_continuation_logprob(model, context, continuation):
    tokens = torch.tensor([context + continuation])
    with torch.inference_mode():
        logprobs = model(tokens).logits[0].log_softmax(-1)
    return sum(float(logprobs[len(context) - 1 + i, token]) for i, token in enumerate(continuation))


ITEMS = [
    Item(
        "q1",
        "test",
        "Which planet is known as the red planet?",
        "space",
        choices=("Mars", "Venus", "Jupiter", "Saturn"),
        answer=0,
    ),
    Item("q2", "test", "What do bees make?", "nature", choices=("Honey", "Silk thread", "Milk"), answer=0),
    Item("q3", "test", "Which is a primary colour?", "art", choices=("Blue", "Pink", "Brown", "Grey"), answer=0),
]


@pytest.mark.parametrize("mode", ["letter", "cloze"])
def test_choice_logprobs_equal_a_direct_hugging_face_computation(tiny, tiny_llama_directory, mode):
    bridge, tokenizer = tiny
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_directory).eval()
    prompts = [
        render(tokenizer, question_text(item, mode), Condition("stem"), answer_prefix="Answer:") for item in ITEMS
    ]
    options = [continuations(item, mode) for item in ITEMS]
    results = score_choices(bridge, tokenizer, prompts, options, [0, 0, 0], batch_size=2, progress=False)
    for prompt, texts, result in zip(prompts, options, results):
        context = encode(tokenizer, prompt)
        expected = [
            _hf_continuation_logprob(reference, context, tokenizer(t, add_special_tokens=False)["input_ids"])
            for t in texts
        ]
        assert result.logprobs == pytest.approx(expected, abs=1e-3)
        assert result.predicted == max(range(len(expected)), key=expected.__getitem__)


def test_scores_do_not_depend_on_batch_size(tiny):
    bridge, tokenizer = tiny
    prompts = [render(tokenizer, question_text(item, "cloze"), Condition()) for item in ITEMS]
    options = [continuations(item, "cloze") for item in ITEMS]
    one = score_choices(bridge, tokenizer, prompts, options, [0] * 3, batch_size=1, progress=False)
    many = score_choices(bridge, tokenizer, prompts, options, [0] * 3, batch_size=8, progress=False)
    for a, b in zip(one, many):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_normalisation_and_margin(tiny):
    bridge, tokenizer = tiny
    prompts = [render(tokenizer, question_text(ITEMS[1], "cloze"), Condition())]
    options = [continuations(ITEMS[1], "cloze")]
    (raw,) = score_choices(bridge, tokenizer, prompts, options, [0], normalise="none", progress=False)
    (per_token,) = score_choices(bridge, tokenizer, prompts, options, [0], normalise="tokens", progress=False)
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in options[0]]
    assert per_token.scores == pytest.approx([lp / n for lp, n in zip(raw.logprobs, counts)])
    assert raw.margin == pytest.approx(raw.scores[0] - max(raw.scores[1:]))
    with pytest.raises(ToolkitError, match="unknown normalisation"):
        score_choices(bridge, tokenizer, prompts, options, [0], normalise="bytes", progress=False)


def test_embedded_model_knows_an_easy_fact(smol):
    bridge, tokenizer = smol
    item = Item(
        "paris",
        "test",
        "What is the capital of France?",
        "geo",
        choices=("Berlin", "Madrid", "Paris", "Rome"),
        answer=2,
    )
    prompt = render(tokenizer, item.prompt, Condition(), answer_prefix="The capital of France is")
    (result,) = score_choices(bridge, tokenizer, [prompt], [continuations(item, "cloze")], [2], progress=False)
    assert result.correct and result.margin > 1.0


def test_letter_mode_lists_the_options():
    assert question_text(ITEMS[0], "letter").endswith("\nA. Mars\nB. Venus\nC. Jupiter\nD. Saturn")
    assert continuations(ITEMS[0], "letter") == [" A", " B", " C", " D"]
    with pytest.raises(ToolkitError, match="cannot be scored"):
        question_text(Item("x", "t", "Write a poem.", "w"), "letter")


def test_evaluate_reports_chance_margin_and_confidence_interval(tiny):
    bridge, tokenizer = tiny
    result = evaluate(bridge, tokenizer, ITEMS, Condition("math", "min"), scoring="cloze", progress=False)
    assert result["task"] == "multiple_choice" and result["metric"] == "accuracy"
    assert result["chance"] == pytest.approx((0.25 + 1 / 3 + 0.25) / 3)
    summary = result["summary"]
    assert summary["n"] == 3 and summary["low"] <= summary["mean"] <= summary["high"]
    assert [row["persona"] for row in result["items"]] == ["math"] * 3
    assert set(result["by_category"]) == {"space", "nature", "art"}


def test_text_longer_than_the_context_is_refused(tiny):
    bridge, tokenizer = tiny
    long_item = Item("long", "t", "word " * 600, "x", choices=("a", "b"), answer=0)
    prompt = render(tokenizer, long_item.prompt, Condition())
    with pytest.raises(ToolkitError, match="the model's context is 512"):
        score_choices(bridge, tokenizer, [prompt], [[" a", " b"]], [0], progress=False)


def test_shared_context_scoring_matches_full_sequences_with_a_sliding_window(tiny_gemma_directory):
    """Gemma-3 keeps sliding-window layers in its cache; options scored after the cached
    context must equal scoring each full sequence, also past the window (32 tokens here)."""

    bridge, tokenizer = load_model(tiny_gemma_directory)
    reference = AutoModelForCausalLM.from_pretrained(tiny_gemma_directory).eval()
    prompts = [render(tokenizer, item.prompt, Condition("stem", "long", "user")) for item in ITEMS]
    options = [continuations(item, "cloze") for item in ITEMS]
    results = score_choices(bridge, tokenizer, prompts, options, [0, 0, 0], batch_size=3, progress=False)
    for prompt, texts, result in zip(prompts, options, results):
        context = encode(tokenizer, prompt)
        assert len(context) > 32
        expected = [
            _hf_continuation_logprob(reference, context, tokenizer(t, add_special_tokens=False)["input_ids"])
            for t in texts
        ]
        assert result.logprobs == pytest.approx(expected, abs=1e-3)


def test_shared_persona_prefix_runs_once_and_changes_no_score(smol, monkeypatch):
    bridge, tokenizer = smol
    items = load_dataset("capitals")[:6]
    prompts = [
        render(
            tokenizer, item.prompt, Condition("humanities", "long", "system"), answer_prefix=item.meta["answer_stem"]
        )
        for item in items
    ]
    options = [continuations(item, "cloze") for item in items]
    answers = [item.answer for item in items]
    contexts = [encode(tokenizer, prompt) for prompt in prompts]
    assert scoring._shared_prefix_length(contexts) > 100  # template + long persona
    shared = score_choices(bridge, tokenizer, prompts, options, answers, batch_size=6, progress=False)
    monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 10**9)
    separate = score_choices(bridge, tokenizer, prompts, options, answers, batch_size=6, progress=False)
    for a, b in zip(shared, separate):
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
