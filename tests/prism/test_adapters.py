"""Saved adapters name their base model and task, so peft's Auto classes load them in one call."""

import json
import os

import pytest
import torch
from peft import AutoPeftModelForCausalLM

from prism.adapters import active_adapter, adapter_layers, attach_adapter, base_model_name, save_adapter
from probes.core.models import load_model


@pytest.fixture()
def adapted(tiny_llama_directory):
    """The tiny model with an adapter 'prism' on blocks 1..2 whose weights are not zero (so that it changes the
    logits)."""
    model, tokenizer = load_model(tiny_llama_directory)
    config = attach_adapter(model, "prism", rank=4, alpha=8, first_block=1, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model):
            weight = layer.lora_B["prism"].weight
            weight.copy_(0.05 * torch.randn(weight.shape, generator=generator))
    return model, tokenizer, config


def test_auto_peft_loads_a_saved_adapter_with_its_base_and_gives_the_same_logits(
    adapted, tiny_llama_directory, tmp_path
):
    model, tokenizer, config = adapted
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        plain = model.original_model(ids).logits
        with active_adapter(model, "prism"):
            adapter = model.original_model(ids).logits
    assert (adapter - plain).abs().max() > 1e-3  # the adapter changes the model
    directory = save_adapter(model, "prism", tmp_path / "adapter", config.to_dict())
    saved = json.loads((directory / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM"
    base = saved["base_model_name_or_path"]
    assert os.path.isabs(base) and os.path.samefile(base, tiny_llama_directory)
    loaded = AutoPeftModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, adapter, atol=1e-5)


def test_the_base_is_named_by_an_absolute_directory_even_when_loaded_by_a_relative_one(
    tiny_llama_directory, monkeypatch
):
    monkeypatch.chdir(os.path.dirname(tiny_llama_directory))
    model, _ = load_model(os.path.basename(tiny_llama_directory))
    assert base_model_name(model) == os.path.realpath(tiny_llama_directory)
