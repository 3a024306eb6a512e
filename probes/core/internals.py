"""What the toolkit relies on inside TransformerLens, transformers and peft, in one place.

Each function here reaches past a library's public surface; ``tests/probes/core/test_internals.py``
pins the behaviour each relies on, so a new release that changes it fails there, loudly, by name,
instead of somewhere downstream with a wrong number:

- ``decoder``: every forward pass of the bridged model (the bridge's own, Hugging Face ``generate``,
  the toolkit's prefix-cached scoring) runs through the Hugging Face decoder module with keyword
  arguments (``input_ids``, ``attention_mask``, ``past_key_values``), so a pre-hook there sees them.
- ``plain_module_name``: the bridge nests each module it wraps under ``._original_component``.
- ``lora_update``: peft's LoRA layer computes its update through ``lora_B[adapter]``, whose output is
  added to the base projection's, so a forward hook there scales the update alone.
- ``lora_state`` / ``set_lora_state``: peft's LoRA layer reads its active adapters
  (``_active_adapter``) and its ``disable_adapters`` flag (``_disable_adapters``) on every call, so
  setting them picks the adapter and turns its update on or off for the next pass, at the cost of
  two attributes (peft's ``set_adapter`` also walks every adapter's weights to mark them trainable).
- ``hand_attention_over`` / ``take_attention_back``: TransformerLens's attention bridges re-implement
  attention step by step; ``AttentionBridge.forward`` hands it to the wrapped Hugging Face module
  (and so to SDPA) with the same hooks around it.
- ``attention_kernel``: transformers keeps the kernel in use in ``config._attn_implementation``.
"""

from __future__ import annotations

from types import MethodType
from typing import TYPE_CHECKING

import torch
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge,
)

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "WRAPPED",
    "attention_bridges",
    "attention_kernel",
    "decoder",
    "hand_attention_over",
    "hands_over",
    "lora_update",
    "plain_module_name",
    "lora_state",
    "set_lora_state",
    "take_attention_back",
]

WRAPPED = "._original_component"  # how the TransformerLens bridge nests the modules it wraps
# Bridges whose forward is the step-by-step one that SDPA may replace with the wrapped module's
# own forward (AttentionBridge.forward: hook_in -> Hugging Face attention -> hook_out).
_HANDS_OVER = (AttentionBridge.forward, PositionEmbeddingsAttentionBridge.forward)


def decoder(model: TransformerBridge) -> torch.nn.Module:
    """The Hugging Face decoder (blocks and final norm, no head) every forward pass of ``model`` runs through."""
    return model.original_model.base_model


def plain_module_name(name: str) -> str:
    """A module's name in the bridged model -> its name in the plain Hugging Face model."""
    return name.replace(WRAPPED, "")


def lora_update(layer: LoraLayer, adapter: str) -> torch.nn.Module:
    """The module whose output is ``adapter``'s update in a peft LoRA layer (before it is added to the base's)."""
    return layer.lora_B[adapter]


def lora_state(layer: LoraLayer) -> tuple[str | list[str], bool]:
    """A peft LoRA layer's active adapter(s), and whether its update is on."""
    attributes = layer.__dict__
    return attributes["_active_adapter"], not attributes["_disable_adapters"]


def set_lora_state(layer: LoraLayer, active: str | list[str], on: bool) -> None:
    """Make ``active`` the layer's active adapter(s) and turn its update on or off for the passes that follow,
    touching nothing else (which weights train stays as it was; see the module docstring)."""
    attributes = layer.__dict__  # plain attributes: nn.Module's __setattr__ checks would take most of the time
    attributes["_active_adapter"] = active
    attributes["_disable_adapters"] = not on


def attention_bridges(model: TransformerBridge) -> list[AttentionBridge]:
    """Every attention bridge of the model."""
    return [module for module in model.modules() if isinstance(module, AttentionBridge)]


def hands_over(bridge: AttentionBridge) -> bool:
    """Whether the bridge's attention can be handed to the wrapped Hugging Face module."""
    return type(bridge).forward in _HANDS_OVER


def hand_attention_over(bridge: AttentionBridge) -> None:
    """Run the wrapped Hugging Face attention (its own kernel) between the bridge's hooks."""
    if type(bridge).forward is not AttentionBridge.forward:
        # set on the instance itself: the bridge's __setattr__ would pass it to the wrapped module
        object.__setattr__(bridge, "forward", MethodType(AttentionBridge.forward, bridge))


def take_attention_back(bridge: AttentionBridge) -> None:
    """Undo ``hand_attention_over``: the bridge computes attention its own way again."""
    bridge.__dict__.pop("forward", None)


def attention_kernel(hf_model: torch.nn.Module) -> str | None:
    """The attention kernel a Hugging Face model runs now (``"sdpa"``, ``"eager"``, ...), or None."""
    return getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
