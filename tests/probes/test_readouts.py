"""The logit lens and ``logits_at`` across architectures: tiny random Llama-, GPT-2- and Gemma-shaped models."""

import pytest
import torch

from probes.core.batching import right_pad
from probes.core.errors import ToolkitError
from probes.core.models import load_model
from probes.readouts import logit_lens, logits_at

TEXTS = ["The capital of France is Paris, a city on the Seine", "Write a short poem about the sea"]


@pytest.fixture(scope="module", params=["tiny_llama_directory", "tiny_gpt2_directory", "tiny_gemma_directory"])
def bridged(request):
    """(architecture, bridge, right-padded tokens of two lengths, each row's last real position)."""
    model, tokenizer = load_model(request.getfixturevalue(request.param))
    sequences = [tokenizer(text)["input_ids"] for text in TEXTS]
    assert len(sequences[0]) != len(sequences[1])
    return model.cfg.architecture, model, right_pad(sequences, tokenizer.pad_token_id), [len(s) - 1 for s in sequences]


def _reference(model, residual: torch.Tensor) -> torch.Tensor:
    """Logits of residual rows through the plain Hugging Face final norm and head, found by hand."""
    hf = model.original_model
    norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    logits = hf.lm_head(norm(residual)).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def test_the_logit_lens_reads_every_block_through_the_models_own_final_norm_and_head(bridged):
    architecture, model, tokens, positions = bridged
    rows = torch.arange(2)
    targets = [int(tokens[0, 3]), int(tokens[1, 5])]
    logprobs, ranks = logit_lens(model, tokens, positions, targets)
    assert logprobs.shape == ranks.shape == (model.cfg.n_layers, 2) and logprobs.dtype == torch.float32
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        residual = cache[f"blocks.{layer}.hook_out"][rows, torch.tensor(positions)]
        expected = _reference(model, residual)
        chosen = expected[rows, torch.tensor(targets)]
        torch.testing.assert_close(
            logprobs[layer],
            expected.log_softmax(-1)[rows, torch.tensor(targets)],
            atol=1e-5,
            rtol=1e-5,
            msg=f"{architecture} block {layer}",
        )
        assert ranks[layer].tolist() == (expected > chosen[:, None]).sum(-1).float().tolist()
    own = logits.float().log_softmax(-1)[rows, torch.tensor(positions)][rows, torch.tensor(targets)]
    torch.testing.assert_close(logprobs[-1], own, atol=1e-5, rtol=1e-5)  # after the last block: the model itself
    assert len({round(value, 4) for value in logprobs[:, 0].tolist()}) > 1  # the blocks differ: each was read


def test_logits_at_chosen_positions_equal_the_full_forward(bridged):
    _, model, tokens, positions = bridged
    with torch.inference_mode():
        full = model(tokens).float()
    torch.testing.assert_close(
        logits_at(model, tokens, positions), full[torch.arange(2), torch.tensor(positions)], atol=1e-5, rtol=1e-5
    )


def test_a_soft_capped_model_is_read_with_its_cap(tmp_path, smol_directory):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(1)
    config = Gemma3TextConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=32,
        final_logit_softcapping=0.05,
    )  # small enough to bend random logits
    Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(smol_directory).save_pretrained(tmp_path)
    model, tokenizer = load_model(str(tmp_path))
    tokens = torch.tensor([tokenizer(TEXTS[1])["input_ids"]])
    with torch.inference_mode():
        own = model(tokens).float()[0, -1]
    assert own.abs().max() <= 0.05  # the model's own logits are capped
    logprobs, _ = logit_lens(model, tokens, [tokens.shape[1] - 1], [7])
    torch.testing.assert_close(logprobs[-1, 0], own.log_softmax(-1)[7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_at(model, tokens, [tokens.shape[1] - 1])[0], own, atol=1e-5, rtol=1e-5)


def test_a_model_in_training_mode_or_mismatched_rows_give_one_line(bridged):
    _, model, tokens, positions = bridged
    with pytest.raises(ToolkitError, match="one position and one target per row") as caught:
        logit_lens(model, tokens, positions, [1])
    assert "\n" not in str(caught.value)
    model.train()
    try:
        with pytest.raises(ToolkitError, match="the logit lens cannot read this model") as caught:
            logit_lens(model, tokens, positions, [1, 2])
        assert "\n" not in str(caught.value)
    finally:
        model.eval()
