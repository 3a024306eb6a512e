"""Forward passes that read hook points into memory, and the names of the hook points they read.

``read_batches`` runs encoded prompts through the bridge in length-sorted, right-padded batches and
keeps only the requested positions of each requested hook, stopping each pass after the deepest
block it needs; ``record_activations`` (``probes.recording``) writes what it reads to a store, and
``read_activations`` keeps it in memory for a few prompts read on the way to a decision. A requested
hook that does not fire is an error, never a silent gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.core.batching import check_context, length_sorted_batches, right_pad
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.prompts import RenderedPrompt, encode
from probes.positions import prompts as declare_prompts
from probes.store import POSITIONS

_BLOCK_OUT = re.compile(r"^blocks\.(\d+)\.hook_out$")
_BLOCK_ANY = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "embed.hook_out")  # fire before block 0


class HookDidNotFire(ToolkitError):
    """A requested hook point was never reached during a forward pass: run the model inside the block, or name a
    hook point the pass reaches.

    Args:
        message: one line naming the hooks that did not fire.
    """


class _StopForward(Exception):
    """Raised inside the deepest requested hook: later blocks are not needed."""


EMBEDDING_HOOK = "hook_embed"  # the token embeddings: layer -1, a lexical baseline


def layer_index(hook: str) -> int:
    """Block index of a residual hook; -1 for the token embeddings (before block 0)."""
    return -1 if hook == EMBEDDING_HOOK else int(hook.split(".")[1])


def residual_hooks(model: TransformerBridge, layers: Sequence[int] | None = None) -> list[str]:
    """Hook names of the residual stream after each block (``blocks.{i}.hook_out``).

    Args:
        model: the bridged model.
        layers: block indices, in the order wanted (default: every block, 0..n_layers-1).

    Returns:
        one hook name per layer, in the order given.

    Raises:
        ToolkitError: a layer outside 0..n_layers-1.
    """
    n_layers = model.cfg.n_layers
    layers = range(n_layers) if layers is None else layers
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ToolkitError(f"layer {layer} does not exist: the model has {n_layers} blocks (0..{n_layers - 1})")
    return [f"blocks.{layer}.hook_out" for layer in layers]


def validate_hooks(model: TransformerBridge, hooks: Sequence[str]) -> list[str]:
    """Check every hook name against the model, with a one-line error for the first bad one."""
    if not hooks:
        raise ToolkitError("no hooks requested: name at least one hook point, e.g. blocks.0.hook_out")
    if len(set(hooks)) != len(hooks):
        raise ToolkitError("a hook point is requested twice: list each once")
    outputs = [_BLOCK_OUT.match(hook) for hook in hooks]
    if all(outputs) and max(int(output.group(1)) for output in outputs) < model.cfg.n_layers:
        return list(hooks)  # every bridged block has hook_out, always on: no need to build the hook table
    available = model.hook_dict
    n_layers = model.cfg.n_layers
    for hook in hooks:
        if hook in available:
            continue
        block = _BLOCK_ANY.match(hook)
        if block and int(block.group(1)) >= n_layers:
            raise ToolkitError(f"{hook}: the model has {n_layers} blocks (0..{n_layers - 1})")
        raise ToolkitError(
            f"unknown hook point {hook!r}: use names such as blocks.0.hook_out or blocks.0.attn.hook_pattern"
        )
    try:  # some hook points must be switched on before use; the bridge says which and how
        with model.hooks(fwd_hooks=[(hook, lambda activation, hook: None) for hook in hooks]):
            pass
    except ValueError as error:
        raise ToolkitError(str(error).strip().splitlines()[0]) from error
    return list(hooks)


@dataclass(frozen=True)
class Activations:
    """Activations held in memory, read like an ``ActivationStore`` (``load``, ``offsets``)."""

    tensors: dict[str, torch.Tensor]
    positions: str
    n_tokens: tuple[int, ...]

    def load(self, hook: str) -> Float[torch.Tensor, "rows d_model"]:
        """All rows of ``hook`` in prompt order, as ``ActivationStore.load`` gives them."""
        if hook not in self.tensors:
            raise ToolkitError(f"hook {hook!r} was not read: read ones are {', '.join(self.tensors)}")
        return self.tensors[hook]

    def offsets(self) -> torch.Tensor:
        """For positions="all": prompt ``i`` holds rows ``offsets[i]:offsets[i + 1]`` of ``load(hook)``."""
        if self.positions != "all":
            raise ToolkitError(f"offsets exist only for positions='all'; these were read with {self.positions!r}")
        return torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(self.n_tokens).cumsum(0)])


def read_activations(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RenderedPrompt],
    *,
    hooks: Sequence[str],
    positions: str = "last",
    batch_size: int = 16,
) -> Activations:
    """``hooks`` at ``positions`` for ``prompts``, kept in memory: ``record_activations`` without the store.

    The same batches and the same early stop as a recording (each pass ends after the deepest requested block
    when every hook is a block output), so ``load(hook)`` equals the store's, bit for bit; for a few prompts read
    on the way to a decision (a gate), with no manifest, provenance or files.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        prompts: rendered prompts.
        hooks: hook point names, each once.
        positions: "last", "mean" or "all", as for ``record_activations``.
        batch_size: prompts per forward pass (length-sorted, right-padded).

    Returns:
        an ``Activations`` (``load(hook)``, and ``offsets()`` for positions "all").

    Raises:
        ToolkitError: unknown positions, no prompts, a bad or repeated hook name, an empty prompt or one longer
            than the context.
        HookDidNotFire: a requested hook did not run during a forward pass.
    """
    if positions not in POSITIONS:
        raise ToolkitError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
    if not prompts:
        raise ToolkitError("no prompts to read")
    hooks = validate_hooks(model, list(hooks))
    encoded = encode_prompts(model, tokenizer, prompts)
    with tqdm(disable=True) as bar:
        tensors = read_batches(model, tokenizer, encoded, hooks, positions, batch_size, (), bar)
    return Activations(tensors, positions, tuple(len(ids) for ids in encoded))


def encode_prompts(
    model: TransformerBridge, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[RenderedPrompt]
) -> list[list[int]]:
    """Token ids of every prompt, refusing an empty one and one longer than the model's context."""
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    for index, ids in enumerate(encoded):
        if not ids:
            raise ToolkitError(f"prompt #{index} tokenises to nothing: give it text")
    check_context([len(ids) for ids in encoded], model.cfg.n_ctx, [f"#{i}" for i in range(len(encoded))])
    return encoded


def read_batches(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[list[int]],
    hooks: Sequence[str],
    positions: str,
    batch_size: int,
    extra_hooks: Sequence[tuple[str, Callable]],
    bar: tqdm,
) -> dict[str, torch.Tensor]:
    """``hooks`` at ``positions`` for the encoded prompts, in their order, in length-sorted right-padded batches.

    One block output alone, with a block after it and no other hook, is read with the bridge's ``stop_at_layer``:
    the pass returns the residual entering the next block, with no hook set up at all (the cheapest pass; the
    same numbers bit for bit). Otherwise, when every hook is a block output (or the embedding), each pass ends
    in the deepest one's hook with a private exception, TransformerLens's own pattern, hand-written because
    ``stop_at_layer`` stops only before a block: after the last block it would still run the final norm and the
    unembedding (the largest matrix of a small model)."""
    lengths = [len(ids) for ids in encoded]
    rows: dict[str, list] = {hook: [None] * len(encoded) for hook in hooks}
    stop_at = _stop_at_layer(model, hooks, extra_hooks)
    for batch in length_sorted_batches(lengths, batch_size):
        device = model_device(model)
        tokens = right_pad([encoded[index] for index in batch], tokenizer.pad_token_id).to(device)
        batch_lengths = torch.tensor([lengths[index] for index in batch], device=device)
        with torch.inference_mode(), declare_prompts(batch_lengths.tolist()):
            if stop_at is not None:
                captured = {hooks[0]: _read_before_block(model, tokens, stop_at, batch_lengths, positions, hooks[0])}
            else:
                captured = _read_hooked(model, tokens, batch_lengths, hooks, positions, extra_hooks)
        for hook in hooks:
            for row, index in enumerate(batch):
                rows[hook][index] = captured[hook][row]
        bar.update(len(batch))
    if positions == "all":
        return {hook: torch.cat(values).cpu().contiguous() for hook, values in rows.items()}
    return {hook: torch.stack(values).cpu().contiguous() for hook, values in rows.items()}


def _read_before_block(
    model: TransformerBridge, tokens: torch.Tensor, stop_at: int, lengths: torch.Tensor, positions: str, hook: str
):
    """The residual entering block ``stop_at`` (``hook``, the output of the block before), with no hook set up."""
    residual = model(tokens, stop_at_layer=stop_at)
    if residual.shape[-1] != model.cfg.d_model:  # the bridge ran to the logits: it did not stop
        raise HookDidNotFire(f"the pass did not stop before block {stop_at} to give {hook}")
    return _select(residual, lengths, positions, hook)


def _read_hooked(
    model: TransformerBridge,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    hooks: Sequence[str],
    positions: str,
    extra_hooks: Sequence[tuple[str, Callable]],
) -> dict:
    """``hooks`` read during one pass, which ends in the deepest one's hook when every hook is a block output."""
    deepest = _deepest_block_output(hooks)
    captured: dict = {}

    def capture_as(name: str) -> Callable:
        # Bind the requested name: an alias fires under its canonical name.
        def capture(activation: torch.Tensor, hook) -> None:
            captured[name] = _select(activation.detach(), lengths, positions, name)
            if name == deepest and len(captured) == len(hooks):
                raise _StopForward

        return capture

    with model.hooks(fwd_hooks=[*extra_hooks, *[(hook, capture_as(hook)) for hook in hooks]]):
        try:
            model(tokens)
        except _StopForward:
            pass
    missing = [hook for hook in hooks if hook not in captured]
    if missing:
        raise HookDidNotFire(f"hook(s) {', '.join(missing)} did not fire during the forward pass")
    return captured


def _select(
    activation: Float[torch.Tensor, "batch seq d"], lengths: torch.Tensor, positions: str, hook: str
) -> Float[torch.Tensor, "batch d"] | list[Float[torch.Tensor, "seq d"]]:
    if activation.ndim != 3:
        raise ToolkitError(
            f"{hook} gives activations of shape {tuple(activation.shape)}, but --positions picks tokens of "
            "[batch, seq, d] ones: record a hook with one vector per token, e.g. blocks.0.hook_out"
        )
    if positions == "last":
        rows = torch.arange(activation.shape[0], device=activation.device)
        return activation[rows, lengths.to(activation.device) - 1].float().clone()
    if positions == "mean":
        lengths = lengths.to(activation.device)
        mask = (torch.arange(activation.shape[1], device=activation.device)[None, :] < lengths[:, None]).float()
        return (activation.float() * mask[..., None]).sum(1) / lengths[:, None].float()
    return [activation[row, :length].float().clone() for row, length in enumerate(lengths.tolist())]


def _stop_at_layer(model: TransformerBridge, hooks: Sequence[str], extra_hooks: Sequence) -> int | None:
    """The block to stop before when the only hook is the output of an earlier block and nothing else is hooked."""
    match = _BLOCK_OUT.match(hooks[0]) if len(hooks) == 1 and not extra_hooks else None
    if match is None or int(match.group(1)) + 1 >= model.cfg.n_layers:
        return None
    return int(match.group(1)) + 1


def _deepest_block_output(hooks: Sequence[str]) -> str | None:
    """When every hook is a block output (or the embedding), the deepest block: no later block
    is needed."""
    blocks = [hook for hook in hooks if _BLOCK_OUT.match(hook)]
    if not blocks or any(hook not in _BEFORE_BLOCKS and hook not in blocks for hook in hooks):
        return None
    return max(blocks, key=lambda hook: int(_BLOCK_OUT.match(hook).group(1)))
