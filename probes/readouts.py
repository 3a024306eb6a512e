"""Reading the residual stream and the logits of a hooked model, without changing them.

``capture_residuals`` keeps the residual after chosen blocks, ``final_residuals`` the one at each
sequence's last token, ``residual_norms`` the typical norm per block (the unit of steering
strength), ``logits_at`` the logits at one position per row, and ``logit_lens`` the answer's
log-probability and rank read after every block through the final norm and unembedding.

Inputs go to the model's device (the embedding's); a tensor that meets an activation is made on
that activation's device, which differs when a device map spreads the blocks over several.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge

from probes.core.batching import right_pad
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.recording import HookDidNotFire, residual_hooks

__all__ = ["capture_residuals", "final_residuals", "logit_lens", "logits_at", "residual_norms"]


@torch.inference_mode()
def capture_residuals(model: TransformerBridge, tokens: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Residual stream after each of ``layers`` for a batch of tokens, from one forward pass.

    Args:
        model: the bridged model.
        tokens: token ids ``[batch, seq]`` (e.g. right-padded).
        layers: block indices to read.

    Returns:
        layer -> residual after that block ``[batch, seq, d_model]`` (detached copies).

    Raises:
        ToolkitError: a layer the model does not have.
        HookDidNotFire: a hook did not run during the forward pass.
    """
    hooks = residual_hooks(model, layers)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(activation, hook):
            captured[layer] = activation.detach().clone()

        return hook

    with model.hooks(fwd_hooks=[(name, keep(layer)) for name, layer in zip(hooks, layers)]):
        model(tokens.to(model_device(model)))
    missing = [name for name, layer in zip(hooks, layers) if layer not in captured]
    if missing:
        raise HookDidNotFire(f"hook(s) {', '.join(missing)} did not fire")
    return captured


def final_residuals(model: TransformerBridge, sequences: Sequence[Sequence[int]], layer: int, pad_id: int
                    ) -> Float[torch.Tensor, "batch d"]:
    """Residual after ``layer`` at each sequence's last token (one right-padded batch)."""
    residual = capture_residuals(model, right_pad(sequences, pad_id), [layer])[layer]
    last = torch.tensor([len(s) - 1 for s in sequences], device=residual.device)
    return residual[torch.arange(len(sequences), device=residual.device), last]


@torch.inference_mode()
def residual_norms(model: TransformerBridge, tokens: torch.Tensor, lengths: Sequence[int] | None = None) -> dict[int, float]:
    """Mean L2 norm of the residual stream after every block over real (unpadded) positions: the unit of steering strength.

    Args:
        model: the bridged model.
        tokens: right-padded token ids ``[batch, seq]``.
        lengths: each row's real length (default: every position is real).

    Returns:
        block index -> mean norm over the real positions of every row.
    """
    layers = list(range(model.cfg.n_layers))
    captured = capture_residuals(model, tokens, layers)
    lengths = torch.tensor(lengths if lengths is not None else [tokens.shape[1]] * tokens.shape[0])
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return {layer: float(activation.float().norm(dim=-1)[real.to(activation.device)].mean())
            for layer, activation in captured.items()}


def _final_norm_and_unembed(model: TransformerBridge):
    hf = model.original_model
    final_norm = getattr(getattr(hf, "model", None), "norm", None)
    if final_norm is None:
        raise ToolkitError("this model's final norm could not be found (expected original_model.model.norm)")
    cap = getattr(hf.config, "final_logit_softcapping", None)

    def unembed(residual: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        residual = residual.to(model_device(hf.lm_head if normalised else final_norm))  # a block's may be another
        logits = hf.lm_head(residual if normalised else final_norm(residual)).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    return hf, unembed


@torch.inference_mode()
def logits_at(model: TransformerBridge, tokens: torch.Tensor, positions: Sequence[int], **forward
              ) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at one position per row, unembedding only those positions (hooks on the bridge fire as usual).

    Much cheaper than full logits for long prompts and large vocabularies; final logit soft-capping is applied
    where the model has it.

    Args:
        model: the bridged model.
        tokens: token ids ``[batch, seq]``.
        positions: one position per row to read (negative counts from the end).
        **forward: passed to the model's forward pass (attention_mask, position_ids, past_key_values).

    Returns:
        float32 logits ``[batch, vocab]``.

    Raises:
        ToolkitError: the model's final norm cannot be found.
    """
    hf, unembed = _final_norm_and_unembed(model)
    device = model_device(model)
    forward = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in forward.items()}
    hidden = hf.model(input_ids=tokens.to(device), **forward).last_hidden_state  # already through the final norm
    rows = torch.arange(tokens.shape[0], device=hidden.device)
    return unembed(hidden[rows, torch.tensor(positions, device=hidden.device)], normalised=True)


@torch.inference_mode()
def logit_lens(model: TransformerBridge, tokens: torch.Tensor, positions: Sequence[int], targets: Sequence[int]
               ) -> tuple[Float[torch.Tensor, "layers batch"], Float[torch.Tensor, "layers batch"]]:
    """Log-probability and rank of ``targets[row]`` read from the residual stream after every block (logit lens).

    The residual at ``positions[row]`` goes through the model's final norm and unembedding.

    Args:
        model: the bridged model.
        tokens: token ids ``[batch, seq]``.
        positions: one position per row to read.
        targets: one token id per row.

    Returns:
        ``(logprobs, ranks)``, each ``[n_layers, batch]``: the target's log-probability, and its rank (0 when no
        token scores higher).

    Raises:
        ToolkitError: the model's final norm cannot be found.
        HookDidNotFire: a block's hook did not run.
    """
    layers = list(range(model.cfg.n_layers))
    captured = capture_residuals(model, tokens, layers)
    _, unembed = _final_norm_and_unembed(model)
    rows, read, target = torch.arange(tokens.shape[0]), torch.tensor(positions), torch.tensor(targets)
    logprobs, ranks = [], []
    for layer in layers:
        residual = captured[layer]  # on its block's device
        log_softmax = unembed(residual[rows.to(residual.device), read.to(residual.device)]).log_softmax(-1)
        chosen = log_softmax[rows.to(log_softmax.device), target.to(log_softmax.device)]
        logprobs.append(chosen)
        ranks.append((log_softmax > chosen[:, None]).sum(-1).float())
    return torch.stack(logprobs).cpu(), torch.stack(ranks).cpu()
