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

Routing costs nothing once decided: each hook runs only while a row needs it. The gate's hook is
added for a prefill and removed once it has read; the adapter's LoRA layers are on, and the
steering hook is there, only while a routed row is in the batch; the per-row scaling of the
adapter's update only while a batch mixes routes. Entering and leaving switch the adapter through
two attributes per LoRA layer (``probes.core.internals.set_lora_state``), not by walking the model.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from prism.adapters import named_adapter_layers
from prism.gate import Gate, gate_features
from probes.core.errors import ToolkitError
from probes.core.internals import decoder, lora_state, lora_update, set_lora_state
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
        self._adapting = False  # the adapter's LoRA layers are on
        self._handles: dict = {}  # the hooks on now: "gate", "steer", "rows" (a list)
        self._stack: ExitStack | None = None
        self.passes = 0

    def __enter__(self) -> "Routed":
        hook_points = self.model.hook_dict
        self._gate_point = hook_points[self.gate.hook]
        if self.adapter is not None:
            self._layers = self._adapter_layers()  # checked before anything is switched or hooked
        else:
            self._steer_point = hook_points[f"blocks.{self.steering[0]}.hook_out"]
        with ExitStack() as stack:
            stack.callback(self._reset)
            handle = decoder(self.model).register_forward_pre_hook(self._see_inputs, with_kwargs=True)
            stack.callback(handle.remove)
            if self.adapter is not None:
                saved = [lora_state(layer) for layer in self._layers]
                stack.callback(lambda: [set_lora_state(layer, *state) for layer, state in zip(self._layers, saved)])
                for layer in self._layers:
                    set_lora_state(layer, self.adapter, False)  # on only while a routed row is in the batch
            stack.callback(self._unhook)
            self._stack = stack.pop_all()  # kept open until __exit__; closed here if entering failed
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None
        if exc[0] is None and self.passes and not self.decisions:
            raise HookDidNotFire(f"the gate's hook {self.gate.hook} never fired: run the model inside the block")

    def _adapter_layers(self) -> list:
        """The adapter's LoRA layers, each checked to come after the gate's block."""
        found = {
            name: layer for name, layer in named_adapter_layers(self.model).items() if self.adapter in layer.lora_B
        }
        if not found:
            raise ToolkitError(f"the model carries no adapter {self.adapter!r}: load it first")
        early = min(_block_of(name) for name in found)
        if early <= self.gate.layer:
            raise ToolkitError(
                f"adapter {self.adapter!r} changes block {early}, at or before the gate's "
                f"block {self.gate.layer}: the gate would read adapted activations"
            )
        return list(found.values())

    def _reset(self) -> None:
        self._routes = self._mask = self._ids = None

    def _see_inputs(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self._fresh = cache is None or cache.get_seq_length() == 0
        self.passes += 1
        if not self._fresh:
            if self._routes is None:
                raise ToolkitError("a routed pass continued sequences whose prefill was not routed")
            return None
        self._ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        if "gate" not in self._handles:  # the gate reads fresh passes only, before any other hook there edits them
            self._handles["gate"] = self._gate_point.register_forward_hook(self._read_gate, prepend=True)
        return None

    def _read_gate(self, module, inputs, activation: torch.Tensor) -> None:
        self._handles.pop("gate").remove()
        routes = self._decide(activation)
        self._follow(routes)

    def _decide(self, activation: torch.Tensor) -> torch.Tensor:
        """Each row's route (1 routed, 0 not), from the gate on ``activation`` or from the given decisions."""
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
        keys = (
            [tuple(self._ids[row][mask[row].to(self._ids.device)].tolist()) for row in range(batch)]
            if self._ids is not None
            else None
        )
        if self.given is not None:
            if keys is None:
                raise ToolkitError("given decisions need the prompts' token ids: pass input_ids to the model")
            missing = [key for key in keys if key not in self.given]
            if missing:
                raise ToolkitError(f"no routing decision was given for a prompt of {len(missing[0])} tokens")
            routes = torch.tensor([bool(self.given[key]) for key in keys], device=activation.device)
        for row, key in enumerate(keys or ()):
            self.decisions[key] = (float(probability[row]), bool(routes[row]))
        return routes.to(activation.dtype)

    def _follow(self, routes: torch.Tensor) -> None:
        """Make the passes that follow run the routed rows' intervention, with hooks only where a row needs them:
        none while no row is routed; the adapter (or steering) alone while every row is; per-row scaling in a mix."""
        self._routes = routes
        any_routed = bool(routes.any())
        mixed = any_routed and not bool(routes.all())
        if self.adapter is not None:
            if any_routed != self._adapting:
                for layer in self._layers:
                    set_lora_state(layer, self.adapter, any_routed)
                self._adapting = any_routed
            if mixed and "rows" not in self._handles:
                self._handles["rows"] = [
                    lora_update(layer, self.adapter).register_forward_hook(self._scale_update) for layer in self._layers
                ]
            elif not mixed and "rows" in self._handles:
                for handle in self._handles.pop("rows"):
                    handle.remove()
        elif any_routed and "steer" not in self._handles:
            self._handles["steer"] = self._steer_point.register_forward_hook(self._steer)
        elif not any_routed and "steer" in self._handles:
            self._handles.pop("steer").remove()

    def _unhook(self) -> None:
        for handles in self._handles.values():
            for handle in handles if isinstance(handles, list) else [handles]:
                handle.remove()
        self._handles, self._adapting = {}, False

    def _scale_update(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output * self._routes.to(device=output.device, dtype=output.dtype)[:, None, None]

    def _steer(self, module, inputs, activation: torch.Tensor) -> torch.Tensor:
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
        self._follow(routes.to(device=self._routes.device, dtype=self._routes.dtype))

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
