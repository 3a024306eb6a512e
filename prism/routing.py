"""Routed inference: the gate is read during the same prefill that answers the query.

Inside ``Routed(model, gate, adapter=...)`` every forward pass that starts a sequence (no cache
yet) is read after the gate's block: the gate scores each row (last real token, or the mean
over real tokens, or over the query's own tokens, from the pass's attention mask) and fixes that
row's route. The blocks after
it then run with the route's intervention for the routed rows only, in the same pass:

- ``adapter``: the LoRA adapter's update is multiplied by the row's route (0 or 1), so a batch
  may mix routes and each row gets exactly the base or the adapted computation;
- ``steering``: ``(block, vector)`` is added after that block at every position of routed rows.

Later passes of the same sequences (cached generation, multi-token options) keep the routes; a
decoding loop that drops finished rows from its cache, or joins rows prefilled in separate passes,
passes their routes on with ``resume``.
Routes are made on the gate block's device and follow each activation they meet to its own, so
blocks may sit on different devices (a device map).
The adapter must not touch the gate's block or any before it, so the gate reads the same
activations whatever the route. Every decision is recorded by the prompt's tokens.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from prism.adapters import active_adapter, adapter_layers
from prism.gate import Gate, gate_features
from probes.core.errors import ToolkitError
from probes.core.internals import decoder, lora_update
from probes.passes import HookDidNotFire

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_BLOCK = "model.layers."


class Routed:
    """Context manager: gate-routed adapter or steering on the bridged model (see the module docstring).

    Inside the block, ``decisions`` maps each prefilled prompt's token ids (padding left out) to
    ``(gate probability, routed)``; ``decision(ids)`` reads one. ``passes`` counts forward passes.

    Args:
        model: the bridged model (carrying ``adapter``, when routing to one: ``load_adapter``).
        gate: the trained ``Gate``.
        adapter: the name of the LoRA adapter to switch on for routed rows; it must not touch the gate's block or
            any before it.
        steering: ``(block, vector [d_model])`` added after ``block`` (later than the gate's) at every position
            of routed rows. Give exactly one of ``adapter`` and ``steering``.
        decisions: a prompt's token ids -> its route, decided elsewhere (another router, or the gate on another
            rendering of the query): the same machinery without reading the gate. Every prompt run must be in it.

    Raises:
        ToolkitError: both or neither of ``adapter`` and ``steering``, a gate block the model lacks, or steering at
            or before the gate's block; on entry, an adapter the model does not carry or one that changes the gate's
            block or an earlier one; inside, a prompt missing from ``decisions``.
        HookDidNotFire: on exit, if the model ran but the gate's hook never fired.
    """

    def __init__(
        self,
        model: TransformerBridge,
        gate: Gate,
        *,
        adapter: str | None = None,
        steering: tuple[int, torch.Tensor] | None = None,
        decisions: Mapping[tuple[int, ...], bool] | None = None,
    ) -> None:
        if (adapter is None) == (steering is None):
            raise ToolkitError("route to exactly one of an adapter or a steering vector")
        check_gate_fits(model, gate)
        if steering is not None and not gate.layer < steering[0] < model.cfg.n_layers:
            raise ToolkitError(f"steering after block {steering[0]} must come after the gate's block {gate.layer}")
        self.model, self.gate, self.adapter, self.steering = model, gate, adapter, steering
        self.given = dict(decisions) if decisions is not None else None
        self.decisions: dict[tuple[int, ...], tuple[float, bool]] = {}
        self._routes: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._fresh = False
        self._stack: ExitStack | None = None
        self.passes = 0

    def __enter__(self) -> "Routed":
        stack = ExitStack()
        hf = self.model.original_model
        stack.callback(self._reset)
        handle = decoder(self.model).register_forward_pre_hook(self._see_inputs, with_kwargs=True)
        stack.callback(handle.remove)
        hooks = [(self.gate.hook, self._decide)]
        if self.adapter is not None:
            layers = [m for m in adapter_layers(self.model) if self.adapter in m.lora_B]
            if not layers:
                raise ToolkitError(f"the model carries no adapter {self.adapter!r}: load it first")
            for name, module in hf.named_modules():
                if module in layers and _block_of(name) <= self.gate.layer:
                    raise ToolkitError(
                        f"adapter {self.adapter!r} changes block {_block_of(name)}, at or before the gate's "
                        f"block {self.gate.layer}: the gate would read adapted activations"
                    )
            stack.enter_context(active_adapter(self.model, self.adapter))
            for module in layers:
                stack.callback(lora_update(module, self.adapter).register_forward_hook(self._gate_update).remove)
        else:
            layer, vector = self.steering
            hooks.append((f"blocks.{layer}.hook_out", self._steer))
        stack.enter_context(self.model.hooks(fwd_hooks=hooks))
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None
        if exc[0] is None and self.passes and not self.decisions:
            raise HookDidNotFire(f"the gate's hook {self.gate.hook} never fired: run the model inside the block")

    def _reset(self) -> None:
        self._routes = self._mask = self._ids = None

    def _see_inputs(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self._fresh = cache is None or cache.get_seq_length() == 0
        self.passes += 1
        if self._fresh:
            self._ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            self._mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        return None

    def _decide(self, activation: torch.Tensor, hook) -> None:
        if not self._fresh:
            if self._routes is None:
                raise ToolkitError("a routed pass continued sequences whose prefill was not routed")
            return None
        batch, seq = activation.shape[:2]
        mask = (
            self._mask[:, -seq:]
            if self._mask is not None
            else torch.ones(batch, seq, dtype=torch.long, device=activation.device)
        )
        mask = mask.to(activation.device).bool()
        if self.gate.position == "last":
            last = seq - 1 - mask.flip(1).long().argmax(dim=1)
            features = activation[torch.arange(batch, device=activation.device), last]
        else:
            read = _query_only(mask, *self.gate.template) if self.gate.position == "query" else mask
            weights = read.to(activation.dtype)[..., None]
            features = (activation * weights).sum(1) / weights.sum(1)
        probability = torch.sigmoid(self.gate.logit(features.detach()))
        routes = probability >= self.gate.threshold
        if self.given is not None:
            if self._ids is None:
                raise ToolkitError("given decisions need the prompts' token ids: pass input_ids to the model")
            keys = [tuple(self._ids[row][mask[row].to(self._ids.device)].tolist()) for row in range(batch)]
            missing = [key for key in keys if key not in self.given]
            if missing:
                raise ToolkitError(f"no routing decision was given for a prompt of {len(missing[0])} tokens")
            routes = torch.tensor([bool(self.given[key]) for key in keys], device=activation.device)
        self._routes = routes.to(activation.dtype)
        if self._ids is not None:
            for row in range(batch):
                ids = tuple(self._ids[row][mask[row].to(self._ids.device)].tolist())
                self.decisions[ids] = (float(probability[row]), bool(routes[row]))
        return None

    def _gate_update(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output * self._routes.to(device=output.device, dtype=output.dtype)[:, None, None]

    def _steer(self, activation: torch.Tensor, hook) -> torch.Tensor:
        vector = self.steering[1].to(device=activation.device, dtype=activation.dtype)
        return activation + self._routes.to(device=activation.device, dtype=activation.dtype)[:, None, None] * vector

    @property
    def routes(self) -> Float[torch.Tensor, " batch"] | None:
        """The routes of the batch the next continuing pass runs: one per row (1 routed, 0 not); None before a
        prefill."""
        return self._routes

    def resume(self, routes: Float[torch.Tensor, " batch"]) -> None:
        """Continue a batch whose rows have these routes (taken from ``routes`` after their prefills inside the block):
        a decoding loop that drops finished rows, or joins rows prefilled in separate passes, passes their routes on."""
        if self._routes is None:
            raise ToolkitError("no routed sequences to resume: prefill them inside the block first")
        self._routes = routes.to(device=self._routes.device, dtype=self._routes.dtype)

    def decision(self, ids: Sequence[int]) -> tuple[float, bool]:
        """(gate probability, routed) recorded for the prompt with these token ids."""
        try:
            return self.decisions[tuple(ids)]
        except KeyError:
            raise ToolkitError(
                "no routing decision was recorded for this prompt: was it run inside the block?"
            ) from None


def _query_only(mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Of each row's real positions, all but the first ``before`` and the last ``after`` (at least one)."""
    rank = mask.long().cumsum(dim=1)  # 1-based rank of each real position
    total = rank[:, -1:]
    keep = mask & (rank > before) & (rank <= (total - after).clamp(min=before + 1))
    return keep


def _block_of(module_name: str) -> int:
    """Block index of a module named ``model.layers.{i}....`` (plain or bridged)."""
    rest = module_name.split(_BLOCK, 1)[1] if _BLOCK in module_name else ""
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def check_gate_fits(model: TransformerBridge, gate: Gate) -> None:
    """One line when ``gate`` cannot read ``model``: a block the model lacks, or a width other than its residual's
    (a gate trained on another model)."""
    if not 0 <= gate.layer < model.cfg.n_layers:
        raise ToolkitError(f"the gate reads block {gate.layer}, but this model has {model.cfg.n_layers} blocks")
    width = next(iter(gate.tensors[name].shape[0] for name in ("weight", "mean") if name in gate.tensors))
    if width != model.cfg.d_model:
        trained_on = gate.metadata.get("model", "another model")
        raise ToolkitError(
            f"the gate reads {width}-wide residuals (trained on {trained_on}), but this model's are "
            f"{model.cfg.d_model} wide: use the gate trained on this model"
        )


def route_probabilities(
    model: TransformerBridge, tokenizer, gate: Gate, queries: Sequence[str], *, batch_size: int = 16
) -> np.ndarray:
    """Gate probabilities from a partial forward pass that stops after the gate's block, held in memory.

    For the training-free variants that must decide before choosing the prompt (e.g. probe -> persona prompt);
    each query is rendered with no persona, as in training.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        gate: the trained ``Gate``.
        queries: the user queries (plain text).
        batch_size: prompts per forward pass.

    Returns:
        p(persona path) per query, float64 ``[n]``; route where it reaches ``gate.threshold``.

    Raises:
        ToolkitError: an empty query, one longer than the context, or a gate block the model lacks.
    """
    check_gate_fits(model, gate)
    x = gate_features(model, tokenizer, queries, [gate.layer], gate.position, None, batch_size=batch_size)[gate.layer]
    return gate.probability(x)
