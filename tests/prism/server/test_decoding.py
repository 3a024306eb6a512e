"""The server's decoding: per-row sampling as Hugging Face samples, batches that give each row its own text, and text
streamed as a prefix of the final answer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from interventions.measure.generation import generate
from prism.adapters import load_adapter
from prism.gate import Gate
from prism.persona_path import GATED
from prism.routing import Routed
from prism.server.decoding import BatchDecoder, Sampling, next_tokens, prefill_groups
from prism.server.text import TextStream
from probes.core.errors import ToolkitError
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render


def _hugging_face_draw(row: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    scores = TemperatureLogitsWarper(sampling.temperature)(None, row[None].clone())
    if sampling.top_p < 1:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))


def test_each_row_is_drawn_as_hugging_face_draws_it_with_its_own_generator():
    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 3
    settings = [
        Sampling(temperature=0.7, top_p=0.9, seed=1),
        Sampling(),
        Sampling(temperature=1.3, seed=2),
        Sampling(temperature=0.2, top_p=0.5, seed=3),
        Sampling(temperature=1.0, top_p=1.0, seed=4),
    ]
    for step in range(20):
        generators = [torch.Generator().manual_seed(s.seed + step) for s in settings]
        expected = [
            int(logits[row].argmax())
            if s.temperature == 0
            else _hugging_face_draw(logits[row], s, torch.Generator().manual_seed(s.seed + step))
            for row, s in enumerate(settings)
        ]
        assert next_tokens(logits, settings, generators) == expected
        alone = [
            next_tokens(logits[row : row + 1], [s], [torch.Generator().manual_seed(s.seed + step)])[0]
            for row, s in enumerate(settings)
        ]
        assert alone == expected  # a row's draw does not depend on the other rows
        logits = logits.roll(7, dims=1)


def _decode(model, tokenizer, prompts, samplings, routed=None, prefills: int | None = None) -> list[str]:
    """Every row to EOS or its max_tokens through ``BatchDecoder``, rows leaving as they finish."""
    eos = tokenizer.eos_token_id
    decoder = BatchDecoder(model.original_model, prompts, samplings, pad_id=tokenizer.pad_token_id, routed=routed)
    streams = [TextStream(tokenizer) for _ in prompts]
    tokens, shown = decoder.start(), [""] * len(prompts)
    assert prefills is None or decoder.passes == prefills
    while tokens:
        fed = {}
        for row, token in tokens.items():
            if token != eos:
                shown[row] += streams[row].push(token)[0]
                if len(streams[row].tokens) < samplings[row].max_tokens:
                    fed[row] = token
        tokens = decoder.advance(fed)
    for row, stream in enumerate(streams):
        assert shown[row] + stream.finish() == stream.text  # what streamed is the answer
    return [stream.text for stream in streams]


def test_a_routed_batch_with_mixed_settings_gives_each_row_the_text_it_gets_alone(tiny_prism, queries):
    model, tokenizer = load_model(tiny_prism.model_name())
    load_adapter(model, GATED, tiny_prism.adapter(GATED))
    gate = Gate.load(tiny_prism.gate)
    long = (
        "Explain, step by step and with an example for each step, how " + "a river carves a canyon and " * 20 + "why."
    )
    rendered = [render(tokenizer, query, Condition("none")) for query in [*queries, long]]
    prompts = [encode(tokenizer, prompt) for prompt in rendered]
    samplings = [
        Sampling(max_tokens=3 + row, temperature=0.0 if row % 2 else 0.9, top_p=0.8 if row % 3 else 1.0, seed=row)
        for row in range(len(prompts))
    ]
    groups = prefill_groups([len(ids) for ids in prompts])
    assert len(groups) == 2 and groups[1] == [len(prompts) - 1]  # the long prompt is prefilled on its own
    with Routed(model, gate, adapter=GATED) as routed:
        batched = _decode(model, tokenizer, prompts, samplings, routed, prefills=2)
    routes = [routed.decision(ids)[1] for ids in prompts]
    assert 0 < sum(routes) < len(routes)  # a mixed batch, whose rows leave at different steps
    for prompt, ids, sampling, text in zip(rendered, prompts, samplings, batched):
        with Routed(model, gate, adapter=GATED) as alone:
            reference = generate(
                model,
                tokenizer,
                [prompt],
                max_new_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                progress=False,
            )
            assert _decode(model, tokenizer, [ids], [sampling], alone) == [text]
        assert reference == [text]  # the toolkit's generate, alone, with the same seed


def test_resuming_routes_needs_a_routed_prefill(tiny_prism):
    model, _ = load_model(tiny_prism.model_name())
    load_adapter(model, GATED, tiny_prism.adapter(GATED))
    with Routed(model, Gate.load(tiny_prism.gate), adapter=GATED) as routed:
        assert routed.routes is None
        with pytest.raises(ToolkitError, match="prefill them inside the block first"):
            routed.resume(torch.tensor([1.0]))


def test_prompts_are_prefilled_in_groups_of_much_the_same_length():
    assert prefill_groups([10, 12, 11]) == [[0, 2, 1]]
    assert prefill_groups([20, 200, 22, 210, 400]) == [[0, 2], [1, 3], [4]]
    assert prefill_groups([5]) == [[0]] and prefill_groups([]) == []
    for lengths in ([3, 90, 40, 41, 7, 300, 299, 12], [50] * 9):
        groups = prefill_groups(lengths)
        assert sorted(row for group in groups for row in group) == list(range(len(lengths)))
        for group in groups:
            real = sum(lengths[row] for row in group)
            assert len(group) * max(lengths[row] for row in group) - real <= 0.25 * real + 16 * len(group)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_directory):
    return AutoTokenizer.from_pretrained(tiny_model_directory)


def _stream(tokenizer, text: str, stop=(), strip=True) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop, strip=strip)
    pieces = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            break
    pieces.append(stream.finish())
    return pieces, stream


@pytest.mark.parametrize(
    "text, stop, strip, final",
    [
        ("  Paris is the capital.  \n", (), True, "Paris is the capital."),
        ("  Paris is the capital.  \n", (), False, "  Paris is the capital.  \n"),
        ("One. Two. END three", ("END",), True, "One. Two."),
        ("a b c\n\nQuestion: next", ("\n\nQuestion:", "zzz"), True, "a b c"),
        ("Caf\u00e9 \U0001f600 ok", (), True, "Caf\u00e9 \U0001f600 ok"),
    ],
)
def test_streamed_pieces_join_into_the_final_text(tokenizer, text, stop, strip, final):
    pieces, stream = _stream(tokenizer, text, stop, strip)
    assert "".join(pieces) == stream.text == final
    assert all("\ufffd" not in piece for piece in pieces)  # an emoji's bytes are held until the character is whole


def test_text_that_could_begin_a_stop_string_is_held_back(tokenizer):
    stream = TextStream(tokenizer, ("STOP",))
    shown = ""
    for token in tokenizer("go ST", add_special_tokens=False)["input_ids"]:
        shown += stream.push(token)[0]
    assert shown == "go" and not stream.stopped  # " ST" may be the start of "STOP"
    for token in tokenizer("OP now", add_special_tokens=False)["input_ids"]:
        piece, stopped = stream.push(token)
        shown += piece
        if stopped:
            break
    assert stream.stopped and shown + stream.finish() == "go"
