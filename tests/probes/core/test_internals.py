"""The library internals the toolkit relies on (``probes.core.internals``), pinned.

A release of TransformerLens, transformers or peft that changes one of these fails here, by name, before
anything downstream computes a wrong number with it.
"""

from importlib.metadata import version

import pytest
import torch

from interventions.measure.scoring import score_choices
from prism.adapters import active_adapter, adapter_layers, attach_adapter, lora_modules
from probes.core.internals import (
    WRAPPED,
    attention_bridges,
    attention_kernel,
    decoder,
    hand_attention_over,
    hands_over,
    lora_state,
    lora_update,
    plain_module_name,
    set_lora_state,
    take_attention_back,
)
from probes.core.models import load_model, set_attention
from probes.core.prompts import Condition, render
from probes.readouts import logits_at

VERSIONS = ", ".join(f"{package} {version(package)}" for package in ("transformer-lens", "transformers", "peft"))


@pytest.fixture
def seen(tiny):
    """Every call of the decoder, as (batch, seq, attention mask given?, cache length)."""
    model, _ = tiny
    calls = []

    def see(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        calls.append(
            (
                *ids.shape,
                kwargs.get("attention_mask") is not None,
                int(cache.get_seq_length()) if cache is not None else 0,
            )
        )

    handle = decoder(model).register_forward_pre_hook(see, with_kwargs=True)
    yield calls
    handle.remove()


def test_every_kind_of_forward_pass_runs_through_the_decoder_with_keyword_inputs(tiny, seen):
    model, tokenizer = tiny
    tokens = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.inference_mode():
        model(tokens)
        assert seen[-1][:2] == tuple(tokens.shape), f"the bridge's forward bypassed the decoder ({VERSIONS})"
        model.original_model.generate(
            input_ids=tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert [call[3] for call in seen[-3:]] == [0, tokens.shape[1], tokens.shape[1] + 1], (
            f"generate's passes do not show their cache length to the decoder ({VERSIONS})"
        )
        logits_at(model, tokens, [-1])
    prompts = [render(tokenizer, query, Condition("math")) for query in ("What is 2 + 2?", "Name a prime number.")]
    score_choices(model, tokenizer, prompts, [[" 4", " 5"], [" 7", " 8"]], [0, 0], progress=False)
    assert all(call[2] for call in seen[-3:-1]), f"the scoring passes' attention masks were not seen ({VERSIONS})"


def test_the_bridge_nests_wrapped_modules_under_the_name_the_toolkit_strips(tiny):
    model, _ = tiny
    names = [name for name, _ in model.original_model.named_modules()]
    assert any(WRAPPED in name for name in names), f"the bridge no longer nests modules under {WRAPPED} ({VERSIONS})"
    plain = {plain_module_name(name) for name in names}
    assert "model.layers.0.self_attn.q_proj" in plain and "model.layers.0.mlp.down_proj" in plain
    assert set(lora_modules(model.original_model, [0])) >= {"model.layers.0.self_attn.q_proj"}


def test_a_hook_on_the_lora_update_scales_the_update_alone(tiny_llama_directory):
    model, tokenizer = load_model(tiny_llama_directory)  # its own copy: the shared one stays without adapters
    name = "pinned"
    attach_adapter(model, name, rank=4, first_block=1)
    for layer in adapter_layers(model):
        torch.nn.init.normal_(layer.lora_B[name].weight, std=0.5)  # a non-zero update
    tokens = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.inference_mode():
        base = model(tokens)
        with active_adapter(model, name):
            adapted = model(tokens)
            handles = [
                lora_update(layer, name).register_forward_hook(lambda module, inputs, output: output * 0)
                for layer in adapter_layers(model)
                if name in layer.lora_B
            ]
            try:
                silenced = model(tokens)
            finally:
                for handle in handles:
                    handle.remove()
    assert (adapted - base).abs().max() > 1e-3, "the adapter changed nothing: the test would prove nothing"
    assert torch.allclose(silenced, base, atol=1e-5), f"lora_B's output is no longer the LoRA update alone ({VERSIONS})"


def test_a_lora_layers_state_picks_its_adapter_and_turns_it_on_and_off_touching_nothing_else(tiny_llama_directory):
    model, tokenizer = load_model(tiny_llama_directory)
    for name in ("first", "second"):
        attach_adapter(model, name, rank=4, first_block=1)
    layers = [layer for layer in adapter_layers(model) if "second" in layer.lora_B]
    for layer in layers:
        for name in ("first", "second"):
            torch.nn.init.normal_(layer.lora_B[name].weight, std=0.5)
    tokens = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.inference_mode():
        base = model(tokens)
        with active_adapter(model, "second"):
            second = model(tokens)
        saved = [lora_state(layer) for layer in layers]
        trainable = [[p.requires_grad for p in layer.parameters()] for layer in layers]
        for layer in layers:
            set_lora_state(layer, "second", True)
        on = model(tokens)
        assert all(layer.active_adapters == ["second"] and not layer.disable_adapters for layer in layers)
        for layer in layers:
            set_lora_state(layer, "second", False)
        off = model(tokens)
        assert [[p.requires_grad for p in layer.parameters()] for layer in layers] == trainable
        for layer, (active, enabled) in zip(layers, saved):
            set_lora_state(layer, active, enabled)
        assert [lora_state(layer) for layer in layers] == saved
    assert (second - base).abs().max() > 1e-3, "the adapter changed nothing: the test would prove nothing"
    assert torch.allclose(on, second, atol=1e-5), f"peft no longer reads its active adapter per call ({VERSIONS})"
    assert torch.allclose(off, base, atol=1e-5), f"peft's disable flag no longer turns the update off ({VERSIONS})"


def test_attention_handed_to_the_wrapped_module_gives_the_bridges_numbers_with_its_hooks(tiny):
    model, tokenizer = tiny
    tokens = torch.tensor([tokenizer("The capital of France is Paris")["input_ids"]])
    bridges = attention_bridges(model)
    assert bridges and all(hands_over(bridge) for bridge in bridges), f"attention bridges changed ({VERSIONS})"
    fired = []
    hook = ("blocks.0.hook_out", lambda activation, hook: fired.append(1))
    try:
        set_attention(model, "eager")
        assert attention_kernel(model.original_model) == "eager"
        with torch.inference_mode(), model.hooks(fwd_hooks=[hook]):
            own = model(tokens)
        for bridge in bridges:
            hand_attention_over(bridge)
        with torch.inference_mode(), model.hooks(fwd_hooks=[hook]):
            handed = model(tokens)
        for bridge in bridges:
            take_attention_back(bridge)
            assert "forward" not in bridge.__dict__
    finally:
        set_attention(model, "auto")
    assert fired == [1, 1]
    assert torch.allclose(own, handed, atol=1e-4), f"the wrapped module's attention differs ({VERSIONS})"
