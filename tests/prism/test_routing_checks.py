"""The gate's separate partial pass: a gate that cannot read the model is refused in one line before any pass runs;
one that can is read in memory, exactly as a full pass reads it."""

import numpy as np
import pytest
import torch

import probes.recording as recording
from prism.gate import Gate, template_tokens
from prism.routing import Routed, route_probabilities
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, encode, render

QUERIES = [
    "What is two plus two?",
    "Write a poem about the sea and the ships that sail on it at night.",
    "Hi",
    "Name the capital of France.",
    "Explain, step by step, why the sky looks blue on a clear day.",
]


def _gate(width: int, layer: int = 0) -> Gate:
    return Gate(
        "logistic",
        layer,
        "last",
        {"weight": torch.zeros(width, dtype=torch.float64), "bias": torch.tensor(0.0)},
        0.5,
        {"model": "SomeOther-7B"},
    )


def test_a_gate_from_a_wider_model_is_refused_with_one_line(tiny):
    model, tokenizer = tiny
    gate = _gate(model.cfg.d_model + 64)
    for attempt in (
        lambda: route_probabilities(model, tokenizer, gate, ["What is two plus two?"]),
        lambda: Routed(model, gate, adapter="prism"),
    ):
        with pytest.raises(ToolkitError, match=f"{model.cfg.d_model + 64}-wide residuals .*SomeOther-7B") as caught:
            attempt()
        assert "\n" not in str(caught.value)


def test_a_gate_reading_a_block_the_model_lacks_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ToolkitError, match="has 3 blocks"):
        route_probabilities(model, tokenizer, _gate(model.cfg.d_model, layer=9), ["What is two plus two?"])


def test_a_gate_of_the_right_shape_reads_the_model(tiny):
    model, tokenizer = tiny
    assert route_probabilities(model, tokenizer, _gate(model.cfg.d_model), ["What is two plus two?"]).tolist() == [0.5]


def _reference(model, tokenizer, gate: Gate, queries) -> np.ndarray:
    """Gate probabilities from a full, unbatched pass per query: the residual after the gate's block from the cache."""
    before, after = template_tokens(tokenizer)
    rows = []
    for query in queries:
        tokens = torch.tensor([encode(tokenizer, render(tokenizer, query, Condition("none")))])
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens)
        residual = cache[f"blocks.{gate.layer}.hook_out"][0].double()
        picked = {
            "last": residual[-1],
            "mean": residual.mean(0),
            "query": residual[before : max(before + 1, residual.shape[0] - after)].mean(0),
        }[gate.position]
        rows.append(picked.numpy())
    return gate.probability(np.stack(rows))


@pytest.mark.parametrize(
    "layer", [0, 1, 2]
)  # 0, 1: the bridge's stop_at_layer; 2, the last block: a hook ends the pass
@pytest.mark.parametrize("position", ["last", "mean", "query"])
def test_the_partial_pass_gives_the_probabilities_of_a_full_pass_and_writes_nothing(tiny, monkeypatch, layer, position):
    model, tokenizer = tiny
    weight = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(layer), dtype=torch.float64)
    gate = Gate("logistic", layer, position, {"weight": weight, "bias": torch.tensor(0.2)}, 0.5, {})
    expected = _reference(model, tokenizer, gate, QUERIES)
    assert expected.std() > 1e-3  # the queries get different probabilities: a wrong row or block would show

    def no_files(*args, **kwargs):
        raise AssertionError("the gate's pass wrote a file")

    for name in ("save_file", "write_json", "record_activations"):
        monkeypatch.setattr(recording, name, no_files)
    monkeypatch.setattr("prism.gate.record_activations", no_files)
    got = route_probabilities(model, tokenizer, gate, QUERIES, batch_size=2)  # right-padded batches of mixed lengths
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
