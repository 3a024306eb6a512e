"""Batched greedy or sampled generation through the hooked model.

Generation runs Hugging Face ``generate`` on the model the bridge wraps, so every hook added
to the bridge (steering, ablation) fires on every generated token. Prompts are left-padded with
an attention mask; results match unbatched Hugging Face generation on the same weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.core.batching import check_context, left_pad, length_sorted_batches
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.prompts import RenderedPrompt, encode
from probes.positions import prompts as declare_prompts


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    """One line for a generation length below 1 or a negative temperature (every engine's ``generate`` checks it)."""
    if max_new_tokens < 1:
        raise ToolkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ToolkitError(f"temperature must be >= 0, got {temperature}")


@torch.inference_mode()
def generate(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RenderedPrompt],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """Responses to ``prompts``; ``temperature=0`` is greedy, otherwise sampling with ``seed``.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        prompts: rendered prompts (``render``, ``render_items``).
        max_new_tokens: the most tokens generated per prompt (generation also stops at EOS).
        temperature: 0 for greedy decoding; above 0, the sampling temperature.
        top_p: nucleus sampling's probability mass (sampling only).
        seed: the sampling seed (batch ``k`` seeds torch's global generator with ``seed + k``).
        batch_size: prompts per batch (length-sorted, left-padded).
        progress: show a progress bar.

    Returns:
        one response per prompt, in order: the generated text only, special tokens dropped, whitespace stripped.

    Raises:
        ToolkitError: ``max_new_tokens`` below 1, a negative temperature, or a prompt that with ``max_new_tokens``
            exceeds the model's context.
    """
    check_sampling(max_new_tokens, temperature)
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    lengths = [len(ids) for ids in encoded]
    check_context([n + max_new_tokens for n in lengths], model.cfg.n_ctx, [f"#{i}" for i in range(len(encoded))])
    hf_model = model.original_model
    eos = hf_model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}

    responses: list[str] = [""] * len(encoded)
    batches = length_sorted_batches(lengths, batch_size)
    for number, batch in enumerate(tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False)):
        input_ids, attention_mask = (
            tensor.to(model_device(hf_model))
            for tensor in left_pad([encoded[index] for index in batch], tokenizer.pad_token_id)
        )
        width = input_ids.shape[1]
        torch.manual_seed(seed + number)
        with declare_prompts([lengths[index] for index in batch]):
            output = hf_model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                **sampling,
            )
        for row, index in enumerate(batch):
            responses[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    return responses
