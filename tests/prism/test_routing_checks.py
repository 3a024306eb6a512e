"""A gate that cannot read the model is refused in one line before any pass runs."""

import pytest
import torch

from prism.gate import Gate
from prism.routing import Routed, route_probabilities
from probes.core.errors import ToolkitError


def _gate(width: int, layer: int = 0) -> Gate:
    return Gate("logistic", layer, "last", {"weight": torch.zeros(width, dtype=torch.float64), "bias": torch.tensor(0.0)},
                0.5, {"model": "SomeOther-7B"})


def test_a_gate_from_a_wider_model_is_refused_with_one_line(tiny):
    model, tokenizer = tiny
    gate = _gate(model.cfg.d_model + 64)
    for attempt in (lambda: route_probabilities(model, tokenizer, gate, ["What is two plus two?"]),
                    lambda: Routed(model, gate, adapter="prism")):
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
