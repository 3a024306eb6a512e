"""Interventions on the hooked model as context managers that always clean up.

    with AddDirection(model, {3: direction}, scale=4.0, norms=norms, positions="all") as steer:
        logits = model(tokens)
    print(steer.record())   # which hooks fired, how often, how many positions were changed

Each intervention edits the residual stream after chosen blocks (``blocks.{i}.hook_out``) at
chosen positions of each sequence, counts what it touched, and raises ``HookDidNotFire`` on exit if
one of its hooks never ran. Positions mean positions of each sequence, whatever passes the consumer
makes (a shared prefix, several batches, left padding, cached generation): each pass's attention
mask and cache length say where its tokens sit (``probes.positions``).

- ``"all"``: every token of every sequence;
- ``"prompt"``: every prompt token of every sequence;
- ``"generated"``: every token after each sequence's prompt (generated, or a scored continuation);
- a list of integer positions of each sequence's prompt (negative counts from the prompt's end).

Every tensor an intervention brings (vectors, masks, sources, indices) goes to the device and dtype
of the activation it meets, so blocks may sit on different devices (a device map).

Steering strength is relative: ``scale`` multiplies the typical residual norm at that layer
(``probes.readouts.residual_norms``), so the same number means about the same push at any layer or model.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from typing import Mapping, Sequence

import torch
from transformer_lens.model_bridge import TransformerBridge

from probes.core.errors import ToolkitError
from probes.passes import HookDidNotFire, residual_hooks, validate_hooks
from probes.positions import PassLayout, PassTracker

Positions = str | Sequence[int]
POSITION_MODES = ("all", "prompt", "generated")


class Intervention:
    """Base class of the interventions: subclasses implement ``edit(activation, layer, mask)``.

    Used as a context manager: the hooks are added on entry and removed on exit (also when the block raises);
    ``calls`` and ``touched`` count forward passes and positions changed per hook, and ``record()`` reports them.

    Args:
        model: the bridged model.
        layers: the blocks after which the residual stream (``blocks.{i}.hook_out``) is edited.
        positions: ``"all"``, ``"prompt"``, ``"generated"`` or a list of integer positions (see the module docstring).

    Raises:
        ToolkitError: unknown positions, or a layer the model does not have; during the forward pass, a listed
            position outside a prompt, or positions a shared prefix cannot honour for every sequence.
        HookDidNotFire: on exit from a block that raised nothing, if one of the hooks never ran.
    """

    def __init__(self, model: TransformerBridge, layers: Sequence[int], positions: Positions = "all") -> None:
        if isinstance(positions, str) and positions not in POSITION_MODES:
            raise ToolkitError(
                f"unknown positions {positions!r}: use one of {', '.join(POSITION_MODES)} or a list of indices"
            )
        self.model = model
        self.layers = list(layers)
        self.hooks = validate_hooks(model, residual_hooks(model, self.layers))
        self.positions = positions
        self._stack: ExitStack | None = None
        self._tracker = PassTracker(model)
        self.layout: PassLayout | None = None  # the pass in progress
        self.calls: dict[str, int] = defaultdict(int)
        self.touched: dict[str, torch.Tensor | int] = defaultdict(int)  # summed on the device, read by record()

    def edit(self, activation: torch.Tensor, layer: int, mask: torch.Tensor) -> torch.Tensor:
        """The edited activation ``[batch, seq, d]``; ``mask [batch, seq]`` marks the positions to edit."""
        raise NotImplementedError

    def positions_changed(self, mask: torch.Tensor) -> torch.Tensor | int:
        return mask.sum()

    def _hook(self, name: str, layer: int):
        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            self.calls[name] += 1
            self.layout = self._tracker.layout(activation.shape[0], activation.shape[1])
            chosen = self.layout.select(self.positions).to(activation.device)  # the block's device, under a device map
            self.touched[name] = self.touched[name] + self.positions_changed(chosen)
            return self.edit(activation, layer, chosen)

        return hook

    def __enter__(self) -> "Intervention":
        self.calls.clear()
        self.touched.clear()
        self._stack = ExitStack()
        self._stack.enter_context(self._tracker)
        hooks = [(name, self._hook(name, layer)) for name, layer in zip(self.hooks, self.layers)]
        self._stack.enter_context(self.model.hooks(fwd_hooks=hooks))
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        assert self._stack is not None
        self._stack.close()  # hooks are removed even if the forward pass failed
        self._stack = None
        if error_type is None:
            silent = [name for name in self.hooks if self.calls[name] == 0]
            if silent:
                raise HookDidNotFire(
                    f"{type(self).__name__}: hook(s) {', '.join(silent)} never fired: run the model inside the block"
                )

    def record(self) -> dict:
        """What this intervention did: hooks, positions, forward passes and positions changed."""
        return {
            "intervention": type(self).__name__,
            "positions": self.positions if isinstance(self.positions, str) else list(self.positions),
            "hooks": {
                name: {"calls": self.calls[name], "positions_changed": int(self.touched[name])} for name in self.hooks
            },
        }


def _unit(vector: torch.Tensor) -> torch.Tensor:
    norm = vector.norm()
    if norm == 0:
        raise ToolkitError("a direction of length zero cannot steer or be ablated")
    return vector / norm


def _per_layer(directions: Mapping[int, torch.Tensor] | torch.Tensor, layers: Sequence[int] | None, d_model: int):
    if isinstance(directions, Mapping):
        chosen = {int(layer): torch.as_tensor(vector, dtype=torch.float32) for layer, vector in directions.items()}
    else:
        if layers is None:
            raise ToolkitError("give layers for a single direction, or a {layer: direction} mapping")
        chosen = {int(layer): torch.as_tensor(directions, dtype=torch.float32) for layer in layers}
    for layer, vector in chosen.items():
        if vector.shape != (d_model,):
            raise ToolkitError(
                f"direction for layer {layer} has shape {tuple(vector.shape)}, the model's residual is ({d_model},)"
            )
    return chosen


class AddDirection(Intervention):
    """Add ``scale`` x (typical residual norm at the layer) x unit direction at the chosen positions.

    Args:
        model: the bridged model.
        directions: ``{layer: vector [d_model]}``, or one vector ``[d_model]`` used at every one of ``layers``;
            each is normalised to unit length.
        scale: the push, in units of the layer's residual norm (in raw residual units when ``norms`` is None).
        layers: the blocks to steer after, needed only with a single vector.
        norms: ``{layer: typical residual norm}`` (``residual_norms``) for every steered layer, or None.
        positions: which positions to edit (see the module docstring).

    Raises:
        ToolkitError: a direction of length zero or of the wrong shape, a single vector without ``layers``, a
            steered layer without a norm, or what ``Intervention`` refuses.
    """

    def __init__(
        self,
        model: TransformerBridge,
        directions,
        *,
        scale: float,
        layers: Sequence[int] | None = None,
        norms: Mapping[int, float] | None = None,
        positions: Positions = "all",
    ) -> None:
        self.directions = {layer: _unit(v) for layer, v in _per_layer(directions, layers, model.cfg.d_model).items()}
        super().__init__(model, sorted(self.directions), positions)
        if norms is not None:
            missing = [layer for layer in self.layers if layer not in norms]
            if missing:
                raise ToolkitError(f"no residual norm for layer {missing[0]}: compute norms for every steered layer")
        self.scale, self.norms = scale, norms

    def edit(self, activation, layer, mask):
        size = self.scale * (self.norms[layer] if self.norms is not None else 1.0)
        vector = (size * self.directions[layer]).to(device=activation.device, dtype=activation.dtype)
        return activation + mask[..., None].to(activation.dtype) * vector


class AblateDirection(Intervention):
    """Project the direction out at the chosen positions: x <- x - (x . u - b) u, with u the unit direction.

    b = 0 is zero ablation; b = ``baseline[layer]``, a reference projection such as the mean of runs without the
    persona, is mean ablation (only the shift along u is removed).

    Args:
        model: the bridged model.
        directions: ``{layer: vector [d_model]}``, or one vector ``[d_model]`` used at every one of ``layers``.
        layers: the blocks to ablate after, needed only with a single vector.
        positions: which positions to edit (see the module docstring).
        baseline: ``{layer: b}``; a layer left out gets b = 0.

    Raises:
        ToolkitError: a direction of length zero or of the wrong shape, a single vector without ``layers``, or
            what ``Intervention`` refuses.
    """

    def __init__(
        self,
        model: TransformerBridge,
        directions,
        *,
        layers: Sequence[int] | None = None,
        positions: Positions = "all",
        baseline: Mapping[int, float] | None = None,
    ) -> None:
        self.directions = {layer: _unit(v) for layer, v in _per_layer(directions, layers, model.cfg.d_model).items()}
        super().__init__(model, sorted(self.directions), positions)
        self.baseline = dict(baseline or {})

    def edit(self, activation, layer, mask):
        unit = self.directions[layer].to(device=activation.device, dtype=activation.dtype)
        excess = (activation @ unit) - self.baseline.get(layer, 0.0)
        return activation - mask[..., None].to(activation.dtype) * excess[..., None] * unit


class PatchActivations(Intervention):
    """Replace target activations with a source run's, position by position, wherever the target positions pass.

    Args:
        model: the bridged model.
        source: layer -> source activations ``[batch, source_seq, d]`` (e.g. from ``capture_residuals``), patched
            after that block.
        pairs: ``pairs[row]`` lists (target position, source position) for each sequence of the batch, positions in
            the sequences (not columns of a padded pass), so sequences of different lengths (a prompt with a persona
            and one without) line up token by token.

    Raises:
        ToolkitError: a layer the model does not have, or (during the forward pass) a batch whose size is not
            ``len(pairs)``.
    """

    def __init__(
        self, model: TransformerBridge, source: Mapping[int, torch.Tensor], pairs: Sequence[Sequence[tuple[int, int]]]
    ) -> None:
        super().__init__(model, sorted(source), positions="all")
        self.source, self.pairs = source, pairs
        self._found: tuple | None = None  # (layout, device, columns) of the pass in progress

    def edit(self, activation, layer, mask):
        if activation.shape[0] != len(self.pairs):
            raise ToolkitError(f"patching {len(self.pairs)} rows into a batch of {activation.shape[0]}")
        patched = activation.clone()
        source = self.source[layer].to(device=activation.device, dtype=activation.dtype)
        for row, (target_index, source_index) in enumerate(self._columns(activation.device)):
            if target_index.numel():
                patched[row, target_index] = source[row, source_index]
        return patched

    def positions_changed(self, mask) -> int:
        return sum(int(target.numel()) for target, _ in self._columns(mask.device))

    def _columns(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per row, the columns of this pass that hold a target position, and their source positions: found where the
        pass's positions are (its inputs' device), then moved to ``device`` (the activation's); found once a pass."""
        if self._found is not None and self._found[0] is self.layout and self._found[1] == device:
            return self._found[2]
        positions = self.layout.positions
        columns = []
        for row, pairs in enumerate(self.pairs):
            targets = torch.tensor([t for t, _ in pairs], dtype=torch.long, device=positions.device)
            sources = torch.tensor([s for _, s in pairs], dtype=torch.long, device=positions.device)
            hits = positions[row][None, :] == targets[:, None]  # [pairs, seq]
            present = hits.any(1)
            columns.append((hits.long().argmax(1)[present].to(device), sources[present].to(device)))
        self._found = (self.layout, device, columns)
        return columns
