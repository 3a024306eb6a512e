"""Distillation in padded batches on a tiny random model: the same logits, losses and adapter as one sample at a
time; gradient checkpointing gives the same gradients and is switched off afterwards; a bfloat16 model's adapter
trains in float32."""

from dataclasses import replace

import pytest
import torch
from peft import get_peft_model_state_dict
from torch.testing import assert_close

from prism.adapters import active_adapter, attach_adapter
from prism.distill import DistillConfig, _checkpointing, _kl, _teacher_targets, _with_rest, distill
from prism.fidelity import adapter_fidelity
from prism.pairs import answer_logits, distillation_pair, retain_pair
from prism.persona_path import held_out_samples
from prism.samples import Sample
from probes.core.errors import ToolkitError
from probes.core.models import load_model

# queries and answers of different lengths, so that every padded batch pads
SAMPLES = [
    Sample(f"s{i}", persona, query, "It is.", answer, True, True, (1.0, 1.0))
    for i, (persona, query, answer) in enumerate(
        [
            ("math", "What is 2 plus 3?", "The sum is 5."),
            (
                "math",
                "Explain why the square root of two is irrational, in a few steps.",
                "Suppose it were a ratio p/q in lowest terms; then p squared is twice q squared, so p is even, and "
                "then q is too.",
            ),
            ("humanities", "Who wrote Hamlet?", "Shakespeare wrote it, around 1600."),
            (
                "humanities",
                "Summarise the causes of the French Revolution.",
                "Debt, bread prices and a rigid estate system; the Enlightenment gave the grievances a language.",
            ),
            ("math", "Is 91 prime?", "No: 91 is 7 times 13."),
            ("humanities", "Name a Roman poet.", "Virgil, who wrote the Aeneid."),
        ]
    )
]


@pytest.fixture()
def tiny_model(tiny_llama_directory):
    """A fresh tiny model per test: adapters and checkpointing flags stay within the test."""
    return load_model(tiny_llama_directory)


def _lora(model, name: str) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().clone()
        for key, value in get_peft_model_state_dict(model.original_model, adapter_name=name).items()
    }


def test_a_padded_batch_gives_each_sequence_its_unpadded_logits(tiny_model):
    model, tokenizer = tiny_model
    pairs = [distillation_pair(tokenizer, sample) for sample in SAMPLES]
    sequences, n_answers = [pair.student for pair in pairs], [pair.n_answer for pair in pairs]
    assert len(set(map(len, sequences))) > 1
    with torch.no_grad():
        batched = answer_logits(model, sequences, n_answers)
        alone = torch.cat([answer_logits(model, [sequence], [n]) for sequence, n in zip(sequences, n_answers)])
    assert batched.dtype == torch.float32 and batched.shape == (sum(n_answers), model.cfg.d_vocab)
    assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_batched_training_gives_the_per_sample_adapter_and_losses(tiny_model):
    model, tokenizer = tiny_model
    runs = {}
    for name, micro in (("one", 1), ("two", 2), ("whole", None)):
        config = DistillConfig(epochs=3, batch_size=4, micro_batch_size=micro, learning_rate=2e-3)
        runs[name] = distill(model, tokenizer, SAMPLES, name, config, progress=False)["losses"], _lora(model, name)
    losses, weights = runs["one"]
    assert len(losses) == 3 * 2 and losses[-1] < losses[0]
    for name in ("two", "whole"):
        assert_close(runs[name][0], losses, atol=1e-6, rtol=1e-4)
        assert runs[name][1].keys() == weights.keys()
        assert_close(runs[name][1], weights, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients_and_is_switched_off_after(tiny_model):
    model, tokenizer = tiny_model
    hf = model.original_model
    config = DistillConfig()
    attach_adapter(model, "probe", first_block=1)
    with torch.no_grad():  # a random lora_B, so that every LoRA weight gets a gradient
        for name, parameter in hf.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    pairs = [distillation_pair(tokenizer, sample, config.persona_length) for sample in SAMPLES]
    with active_adapter(model, None):
        targets = _teacher_targets(model, pairs, config, progress=False)
    calls = []
    # a pre-hook: the recomputation stops early, once the tensors the backward pass needs are back
    hook = hf.model.layers[1].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    results, flags = {}, [module.training for module in hf.modules()]
    with active_adapter(model, "probe"):
        for checkpointing in (False, True):
            calls.clear()
            with _checkpointing(hf, checkpointing):
                loss = _kl(model, pairs, targets, config).mean()
                trainable = [p for p in hf.parameters() if p.requires_grad]
                results[checkpointing] = loss.detach(), torch.autograd.grad(loss, trainable), len(calls)
    hook.remove()
    assert_close(results[True][0], results[False][0], atol=1e-6, rtol=1e-6)
    assert_close(results[True][1], results[False][1], atol=1e-6, rtol=1e-5)
    assert results[False][2] == 1 and results[True][2] == 2  # the block ran again in the backward pass
    assert not any(getattr(module, "gradient_checkpointing", False) for module in hf.modules())
    assert [module.training for module in hf.modules()] == flags
    assert not getattr(hf, "_require_grads_hooks", None)


def test_distillation_with_checkpointing_trains_the_same_adapter(tiny_model):
    model, tokenizer = tiny_model
    plain = distill(model, tokenizer, SAMPLES, "plain", DistillConfig(epochs=1), progress=False)["losses"]
    checkpointed = distill(
        model, tokenizer, SAMPLES, "checkpointed", DistillConfig(epochs=1, gradient_checkpointing=True), progress=False
    )["losses"]
    assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)
    assert_close(_lora(model, "checkpointed"), _lora(model, "plain"), atol=1e-6, rtol=1e-5)


def test_a_bfloat16_model_trains_a_float32_adapter(tiny_llama_directory):
    model, tokenizer = load_model(tiny_llama_directory, dtype=torch.bfloat16)
    info = distill(model, tokenizer, SAMPLES[:3], "prism", DistillConfig(epochs=1, micro_batch_size=2), progress=False)
    assert all(torch.isfinite(torch.tensor(info["losses"])))
    weights = _lora(model, "prism")
    assert weights and all(value.dtype == torch.float32 for value in weights.values())
    assert next(model.original_model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("sizes", [dict(batch_size=0), dict(micro_batch_size=0)])
def test_batch_sizes_below_one_are_refused(sizes):
    with pytest.raises(ToolkitError, match="at least 1"):
        DistillConfig(**sizes)


def test_fidelity_is_zero_for_an_untrained_adapter_and_grows_with_distillation(tiny_model):
    model, tokenizer = tiny_model
    attach_adapter(model, "fresh", rank=4, alpha=8, first_block=1, seed=0)  # LoRA B starts at zero: no change
    untrained = adapter_fidelity(model, tokenizer, SAMPLES, "fresh")
    assert untrained.persona_effect.mean > 0 and untrained.share.mean == pytest.approx(0.0, abs=1e-6)
    assert untrained.remaining.mean == pytest.approx(untrained.persona_effect.mean, rel=1e-5)
    distill(
        model,
        tokenizer,
        SAMPLES,
        "trained",
        DistillConfig(epochs=6, learning_rate=5e-3, temperature=1.0),
        progress=False,
    )
    trained = adapter_fidelity(model, tokenizer, SAMPLES, "trained")
    assert (
        trained.share.n == len(SAMPLES)
        and trained.share.low > 0
        and trained.remaining.mean < trained.persona_effect.mean
    )
    assert set(trained.to_dict()) >= {"fidelity", "fidelity_low", "fidelity_high", "n", "kl_teacher_base"}


def test_the_other_persona_control_is_the_share_the_other_personas_prompt_reproduces(tiny_model):
    model, tokenizer = tiny_model
    attach_adapter(model, "fresh", rank=4, alpha=8, first_block=1, seed=0)
    measured = adapter_fidelity(model, tokenizer, SAMPLES, "fresh")
    swap = {"math": "humanities", "humanities": "math"}  # two personas: the other one is never a draw
    to_base, to_other = [], []
    with torch.no_grad():
        for sample in SAMPLES:
            teacher, base, n_answer = distillation_pair(tokenizer, sample)
            other = distillation_pair(tokenizer, replace(sample, persona=swap[sample.persona])).teacher
            rows = [answer_logits(model, [ids], [n_answer]).log_softmax(-1) for ids in (teacher, base, other)]
            kl = [float((rows[0].exp() * (rows[0] - row)).sum(-1).mean()) for row in rows[1:]]
            to_base.append(kl[0])
            to_other.append(kl[1])
    expected = 1 - sum(to_other) / sum(to_base)
    assert measured.other_persona.mean == pytest.approx(expected, rel=1e-4)
    assert measured.to_dict()["other_persona_fidelity"] == pytest.approx(expected, rel=1e-4)
    alone = adapter_fidelity(model, tokenizer, [s for s in SAMPLES if s.persona == "math"], "fresh")
    assert alone.other_persona is None and "other_persona_fidelity" not in alone.to_dict()


def test_the_top_k_and_the_rest_of_the_vocabulary_make_a_distribution_whose_kl_bounds_the_full_one():
    generator = torch.Generator().manual_seed(0)
    teacher = (torch.randn(5, 40, generator=generator) * 2).log_softmax(-1)
    student = (torch.randn(5, 40, generator=generator) * 2).log_softmax(-1).requires_grad_(True)
    full = (teacher.exp() * (teacher - student)).sum(-1)
    for k in (1, 8, 39, 40):
        indices = teacher.topk(k, dim=-1).indices
        t, s = _with_rest(teacher, indices), _with_rest(student, indices)
        assert t.shape == (5, k + 1) and torch.allclose(t.exp().sum(-1), torch.ones(5), atol=1e-5)
        kl = (t.exp() * (t - s)).sum(-1)
        assert torch.isfinite(kl).all() and (kl <= full + 1e-5).all()  # merging outcomes never raises a KL
        if k == 40:  # the whole vocabulary: the full KL, and gradients without NaN
            assert_close(kl, full)
            kl.sum().backward()
            assert torch.isfinite(student.grad).all()


RETAIN = ["What is the capital of Peru?", "Which continent is Kenya in?", "How many legs does a spider have?"]


def _retain_gap(model, tokenizer, name: str) -> float:
    """Mean KL(base || adapted) over the retain queries' prompt positions (full vocabulary)."""
    pairs = [retain_pair(tokenizer, query) for query in RETAIN]
    sequences, n = [pair.student for pair in pairs], [pair.n_answer for pair in pairs]
    with torch.no_grad():
        with active_adapter(model, None):
            base = answer_logits(model, sequences, n).log_softmax(-1)
        with active_adapter(model, name):
            adapted = answer_logits(model, sequences, n).log_softmax(-1)
    return float((base.exp() * (base - adapted)).sum(-1).mean())


def test_the_retain_term_keeps_the_adapted_model_closer_to_the_base_model_on_retain_queries(tiny_model):
    model, tokenizer = tiny_model
    gaps = {}
    for name, weight in (("free", 0.0), ("kept", 4.0)):
        config = DistillConfig(epochs=4, batch_size=3, learning_rate=5e-3, retain_weight=weight)
        info = distill(model, tokenizer, SAMPLES, name, config, retain=RETAIN, progress=False)
        assert info["n_retain"] == (len(RETAIN) if weight else 0)
        gaps[name] = _retain_gap(model, tokenizer, name)
    assert gaps["free"] > 0 and gaps["kept"] < 0.5 * gaps["free"]


def test_a_negative_retain_weight_is_refused():
    with pytest.raises(ToolkitError, match="retain weight"):
        DistillConfig(retain_weight=-1.0)


def test_held_out_samples_keep_a_share_of_each_persona_and_training_for_every_persona():
    samples = [
        Sample(f"{p}-{i}", p, f"q{i}", "a", "b", True, True, (1.0, 1.0)) for p in ("math", "writing") for i in range(8)
    ]
    samples += [Sample("coding-0", "coding", "q", "a", "b", True, True, (1.0, 1.0))]
    training, held = held_out_samples(samples, 0.25, seed=3)
    assert {s.id for s in training}.isdisjoint(s.id for s in held) and len(training) + len(held) == len(samples)
    assert sorted(s.persona for s in held) == ["math", "math", "writing", "writing"]
    assert {s.persona for s in training} == {"math", "writing", "coding"}
    assert held_out_samples(samples, 0.25, seed=3) == (training, held)
    assert held_out_samples(samples[:3], 0.25) == (samples[:3], [])
    pairs = [Sample(f"{p}-{i}", p, "q", "a", "b", True, True, (1.0, 1.0)) for p in "abcdefghijkl" for i in range(2)]
    training, held = held_out_samples(pairs, 0.25)
    assert len(held) == 6 and len({s.persona for s in held}) == 6
