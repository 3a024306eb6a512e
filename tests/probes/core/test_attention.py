"""Attention kernels: SDPA by default, eager only where attention patterns are hooked, the same numbers either way.

SDPA is observed, not assumed: ``torch.nn.functional.scaled_dot_product_attention`` is counted during a forward
pass (once per block under SDPA, never under eager), and ``hook_pattern`` fires only under eager.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interventions.causal import paired_items, persona_attention
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.models import attention_implementation, eager_attention, load_model, set_attention
from probes.core.prompts import Condition
from tests.test_devices import NAMES, _paths

TOKENS = torch.tensor([[1, 57, 300, 4000, 12, 9, 77, 5], [1, 8, 19, 2000, 3, 41, 6, 2]])


def _count_sdpa(model, monkeypatch) -> int:
    calls = []
    kernel = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        with torch.inference_mode():
            model(TOKENS)
    return len(calls)


def _patterns_fired(model) -> int:
    fired = []
    with (
        torch.inference_mode(),
        model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: fired.append(x))]),
    ):
        model(TOKENS)
    return len(fired)


@pytest.fixture(scope="module")
def tiny_attention(tiny_llama_directory):
    return load_model(tiny_llama_directory)


@pytest.mark.parametrize("directory_fixture", ["tiny_llama_directory", "tiny_gemma_directory"])
def test_models_load_with_sdpa_and_really_run_it(request, directory_fixture, monkeypatch):
    model, _ = load_model(request.getfixturevalue(directory_fixture))
    assert attention_implementation(model) == "sdpa" and precision(model)["attention"] == "sdpa"
    assert _count_sdpa(model, monkeypatch) == model.cfg.n_layers
    assert _patterns_fired(model) == 0
    with torch.inference_mode():
        sdpa_logits = model(TOKENS)
    assert set_attention(model, "eager") == "eager" and precision(model)["attention"] == "eager"
    assert _count_sdpa(model, monkeypatch) == 0
    assert _patterns_fired(model) == 1
    with torch.inference_mode():
        torch.testing.assert_close(model(TOKENS), sdpa_logits, atol=1e-4, rtol=1e-4)
    eager, _ = load_model(request.getfixturevalue(directory_fixture), attention="eager")
    assert attention_implementation(eager) == "eager" and _count_sdpa(eager, monkeypatch) == 0


def _close(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=where)
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], f"{where}[{key}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{index}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4), (where, a, b)
    else:
        assert a == b, where


def test_every_core_path_gives_the_same_numbers_under_sdpa_and_eager(tiny_llama_directory, tmp_path):
    """Recording, scoring, generation, steering, ablation, patching, the logit lens, routing (steering, given
    decisions, adapter) and distillation, run once per kernel on the same weights with the same seeds."""
    results = {}
    for attention in ("sdpa", "eager"):
        model, tokenizer = load_model(tiny_llama_directory, attention=attention)
        assert attention_implementation(model) == attention
        torch.manual_seed(0)
        paths = _paths(model, tokenizer, tmp_path / attention)
        results[attention] = {}
        for name in NAMES:
            torch.manual_seed(1)
            results[attention][name] = paths[name]()
    for name in NAMES:
        _close(results["sdpa"][name], results["eager"][name], name)


def test_eager_attention_switches_for_a_block_and_restores_also_on_errors(tiny_attention, monkeypatch):
    model, _ = tiny_attention
    assert attention_implementation(model) == "sdpa"
    with eager_attention(model):
        assert attention_implementation(model) == "eager" and _patterns_fired(model) == 1
    assert attention_implementation(model) == "sdpa" and _count_sdpa(model, monkeypatch) == model.cfg.n_layers
    with pytest.raises(RuntimeError, match="inside"), eager_attention(model):
        raise RuntimeError("inside")
    assert attention_implementation(model) == "sdpa" and _patterns_fired(model) == 0
    set_attention(model, "eager")
    with eager_attention(model):
        pass
    assert attention_implementation(model) == "eager"  # the previous kernel, whatever it was
    set_attention(model, "sdpa")


def test_persona_attention_runs_eager_on_an_sdpa_model_and_switches_back(tiny_attention):
    model, tokenizer = tiny_attention
    items = paired_items(
        tokenizer, stratified_sample(load_dataset("capitals"), 4, seed=0), Condition("random", "long", "system")
    )
    masses = persona_attention(model, tokenizer, items, batch_size=2)
    assert attention_implementation(model) == "sdpa"
    assert masses.shape == (model.cfg.n_layers, 4) and ((masses > 0) & (masses < 1)).all()
    with eager_attention(model):
        assert np.array_equal(persona_attention(model, tokenizer, items, batch_size=2), masses)


def test_attention_choices_are_checked_in_one_line(tiny_llama_directory, tiny_attention):
    with pytest.raises(ToolkitError, match="unknown attention 'flash'") as error:
        load_model(tiny_llama_directory, attention="flash")
    assert "\n" not in str(error.value)
    with pytest.raises(ToolkitError, match="unknown attention"):
        set_attention(tiny_attention[0], "fast")


@pytest.mark.slow
def test_the_embedded_model_gives_the_same_margins_and_residuals_under_sdpa_and_eager(smol, tmp_path):
    """Capital-city margins and recorded residuals of the real model, once per kernel (float32 on the CPU)."""
    from interventions.measure.scoring import score_choices
    from probes.core.rendering import render_items
    from probes.recording import record_activations

    model, tokenizer = smol
    items = stratified_sample(load_dataset("capitals"), 8, seed=0)
    prompts = render_items(tokenizer, items, Condition("none"))
    hooks = [f"blocks.{layer}.hook_out" for layer in (0, 10, 20, 28)]
    read = {}
    for attention in ("sdpa", "eager"):
        set_attention(model, attention)
        try:
            margins = [
                r.margin
                for r in score_choices(
                    model, tokenizer, prompts, [i.choices for i in items], [i.answer for i in items], progress=False
                )
            ]
            store = record_activations(
                model, tokenizer, prompts, tmp_path / attention, hooks=hooks, positions="mean", progress=False
            )
            read[attention] = (np.array(margins), {hook: store.load(hook) for hook in hooks})
        finally:
            set_attention(model, "auto")
    assert np.abs(read["sdpa"][0] - read["eager"][0]).max() < 1e-3
    for hook in hooks:
        torch.testing.assert_close(read["sdpa"][1][hook], read["eager"][1][hook], atol=2e-3, rtol=1e-3)


def test_a_bridge_that_computes_attention_its_own_way_stays_eager(tmp_path, smol_directory, monkeypatch):
    """GPT-2's joint-QKV bridge never hands attention to Hugging Face: ``auto`` keeps eager, ``sdpa`` is refused."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(
        tmp_path
    )
    AutoTokenizer.from_pretrained(smol_directory).save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path))
    assert attention_implementation(model) == "eager" and _patterns_fired(model) == 1
    with pytest.raises(ToolkitError, match="SDPA cannot be used .TransformerLens computes"):
        load_model(str(tmp_path), attention="sdpa")
