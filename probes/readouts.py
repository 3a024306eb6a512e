"""Reading the residual stream and the logits of a hooked model, without changing them.

``capture_residuals`` keeps the residual after chosen blocks, ``final_residuals`` the one at each
sequence's last token, ``residual_norms`` the typical norm per block (the unit of steering
strength), ``logits_at`` the logits at one position per row, and ``logit_lens`` the answer's
log-probability and rank read after every block through the final norm and unembedding
(TransformerLens's ``logit_readout``, for any architecture the bridge supports).

Inputs go to the model's device (the embedding's); a tensor that meets an activation is made on
that activation's device, which differs when a device map spreads the blocks over several.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.analysis.logit_lens import logit_readout

from probes.core.batching import right_pad
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.internals import decoder
from probes.passes import HookDidNotFire, residual_hooks

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


def final_residuals(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], layer: int, pad_id: int
) -> Float[torch.Tensor, "batch d"]:
    """Residual after ``layer`` at each sequence's last token (one right-padded batch)."""
    residual = capture_residuals(model, right_pad(sequences, pad_id), [layer])[layer]
    last = torch.tensor([len(s) - 1 for s in sequences], device=residual.device)
    return residual[torch.arange(len(sequences), device=residual.device), last]


@torch.inference_mode()
def residual_norms(
    model: TransformerBridge, tokens: torch.Tensor, lengths: Sequence[int] | None = None
) -> dict[int, float]:
    """Mean L2 norm of the residual stream after every block over real (unpadded) positions: the unit of steering
    strength.

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
    return {
        layer: float(activation.float().norm(dim=-1)[real.to(activation.device)].mean())
        for layer, activation in captured.items()
    }


def _unembed_normalised(model: TransformerBridge, rows: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n vocab"]:
    """Float32 logits of residuals already through the final norm: the bridge's unembedding, then its
    architecture's output transform (Gemma's soft cap, Cohere's logit scale)."""
    logits = model.unembed(rows.to(model_device(model.unembed))).float()  # a block's device may be another
    return model.adapter.apply_output_logits_transform(logits)


@torch.inference_mode()
def logits_at(
    model: TransformerBridge, tokens: torch.Tensor, positions: Sequence[int], **forward
) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at one position per row, unembedding only those positions (hooks on the bridge fire as usual).

    Much cheaper than full logits for long prompts and large vocabularies, which is why it stays hand-written:
    the bridge's forward unembeds every position. The blocks and final norm run as the Hugging Face model's base
    (``base_model``, any architecture), then the bridge's unembedding and output transform (soft-capping where
    the model has it) read the chosen rows.

    Args:
        model: the bridged model.
        tokens: token ids ``[batch, seq]``.
        positions: one position per row to read (negative counts from the end).
        **forward: passed to the model's forward pass (attention_mask, position_ids, past_key_values).

    Returns:
        float32 logits ``[batch, vocab]``.

    """
    device = model_device(model)
    forward = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in forward.items()}
    base = decoder(model)  # the blocks and the final norm, without the head
    hidden = base(input_ids=tokens.to(device), **forward).last_hidden_state  # already through the final norm
    rows = torch.arange(tokens.shape[0], device=hidden.device)
    return _unembed_normalised(model, hidden[rows, torch.tensor(positions, device=hidden.device)])


@torch.inference_mode()
def logit_lens(
    model: TransformerBridge, tokens: torch.Tensor, positions: Sequence[int], targets: Sequence[int]
) -> tuple[Float[torch.Tensor, "layers batch"], Float[torch.Tensor, "layers batch"]]:
    """Log-probability and rank of ``targets[row]`` read from the residual stream after every block (logit lens).

    The residual at ``positions[row]`` after each block, from one forward pass, is read by TransformerLens's
    ``logit_readout``: the bridge's own final norm (``ln_final``), unembedding and output transform, so it works
    for any architecture the bridge supports (Llama, GPT-2, Gemma, ...); after the last block it gives the
    model's own log-probabilities.

    Args:
        model: the bridged model (in eval mode).
        tokens: token ids ``[batch, seq]``.
        positions: one position per row to read.
        targets: one token id per row.

    Returns:
        ``(logprobs, ranks)``, each ``[n_layers, batch]`` (float32, on the CPU): the target's log-probability, and
        its rank (0 when no token scores higher).

    Raises:
        ToolkitError: a model whose logits are not its final norm and unembedding of the last block's output
            (an encoder, a model in training mode), or positions and targets not one per row.
        HookDidNotFire: a block's hook did not run.
    """
    if not len(positions) == len(targets) == tokens.shape[0]:
        raise ToolkitError(
            f"give one position and one target per row: {tokens.shape[0]} rows, {len(positions)} "
            f"positions, {len(targets)} targets"
        )
    layers = list(range(model.cfg.n_layers))
    captured = capture_residuals(model, tokens, layers)
    rows, read = torch.arange(tokens.shape[0]), torch.tensor(positions)
    stack = torch.stack(
        [
            captured[layer][rows.to(captured[layer].device), read.to(captured[layer].device)].to(
                captured[layers[-1]].device
            )
            for layer in layers
        ]
    )  # [layers, batch, d_model]
    try:
        readout = logit_readout(model, stack, targets=torch.tensor(targets), return_type="log_probs")
    except (ValueError, NotImplementedError) as error:
        raise ToolkitError(f"the logit lens cannot read this model: {str(error).strip().splitlines()[0]}") from error
    return readout.values[..., 0].float().cpu(), readout.target_ranks[..., 0].float().cpu()
