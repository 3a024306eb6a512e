"""Record residual-stream (or any hook point's) activations to an on-disk store.

``record_activations`` runs prompts through the bridge in length-sorted, right-padded batches,
keeps only the requested positions of each requested hook, and writes shards of a fixed number
of prompts. Re-running the same call resumes an interrupted store and yields the same files as
an uninterrupted run. A requested hook that does not fire is an error, never a silent gap.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.core.batching import check_batch_size, check_context, length_sorted_batches, right_pad
from probes.core.devices import model_device, precision
from probes.core.errors import ToolkitError
from probes.core.files import atomic_path, write_json
from probes.core.models import eager_attention
from probes.core.parallel import World
from probes.core.prompts import RenderedPrompt, encode
from probes.core.provenance import provenance
from probes.store import (
    FORMAT,
    MANIFEST,
    POSITIONS,
    ActivationStore,
    discarded_unless_recorded,
    finish_shards,
    rank_progress_name,
    resume_manifest,
    shard_name,
)

_BLOCK_OUT = re.compile(r"^blocks\.(\d+)\.hook_out$")
_BLOCK_ANY = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "embed.hook_out")  # fire before block 0
_SDPA_ATTENTION = re.compile(r"\.attn\.(?:[qkvo]\.)?hook_(?:in|out)$")  # attention hooks that fire under SDPA too


class HookDidNotFire(RuntimeError):
    """A requested hook point was never reached during a forward pass (a ``RuntimeError``, not a ``ToolkitError``).

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
    available = model.hook_dict
    n_layers = model.cfg.n_layers
    for hook in hooks:
        if hook in available:
            continue
        block = _BLOCK_ANY.match(hook)
        if block and int(block.group(1)) >= n_layers:
            raise ToolkitError(f"{hook}: the model has {n_layers} blocks (0..{n_layers - 1})")
        raise ToolkitError(f"unknown hook point {hook!r}: use names such as blocks.0.hook_out or blocks.0.attn.hook_pattern")
    try:  # some hook points must be switched on before use; the bridge says which and how
        with model.hooks(fwd_hooks=[(hook, lambda activation, hook: None) for hook in hooks]):
            pass
    except ValueError as error:
        raise ToolkitError(str(error).strip().splitlines()[0]) from error
    return list(hooks)


def record_activations(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[RenderedPrompt],
    out_dir: str | Path,
    *,
    hooks: Sequence[str] | None = None,
    positions: str = "last",
    batch_size: int = 16,
    shard_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    metadata: dict | None = None,
    extra_hooks: Sequence[tuple[str, Callable]] = (),
    world: World = World(),
) -> ActivationStore:
    """Record ``hooks`` (default: every block's residual output) at ``positions`` for ``prompts``.

    Re-running the same call resumes an interrupted store and gives the same files; a finished store is reused.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        prompts: rendered prompts (``render``, ``render_items``).
        out_dir: the store's directory: new, empty, or an earlier recording of the same call.
        hooks: hook point names, each once (default: ``residual_hooks(model)``).
        positions: "last" (last prompt token), "mean" (mean over the prompt's tokens) or "all" (every token).
        batch_size: prompts per forward pass (length-sorted, right-padded).
        shard_size: prompts per shard file.
        overwrite: delete an earlier store at ``out_dir`` instead of resuming it (never a folder of other files).
        progress: show a progress bar.
        metadata: JSON-serialisable facts saved in the manifest; a resumed store must have the same.
        extra_hooks: (name, fn) forward hooks applied during recording (e.g. an intervention); they are part
            of the caller's ``metadata``, not checked here.
        world: the processes sharing this recording (default: this one alone). With ``probes.core.parallel.world()``
            under ``torchrun`` every rank calls this with the same arguments, records the shards ``i % N == rank``
            and rank 0 merges their lists into the manifest.

    Returns:
        the finished ``ActivationStore``.

    Raises:
        ToolkitError: unknown positions, no prompts, a shard size below 1, a bad or repeated hook name, an empty
            prompt or one longer than the context, or an ``out_dir`` holding other files or a different recording.
        HookDidNotFire: a requested hook did not run during a forward pass.
    """
    if positions not in POSITIONS:
        raise ToolkitError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
    if not prompts:
        raise ToolkitError("no prompts to record")
    if shard_size < 1:
        raise ToolkitError(f"shard size must be at least 1, got {shard_size}")
    check_batch_size(batch_size)
    hooks = validate_hooks(model, residual_hooks(model) if hooks is None else list(hooks))
    out_dir = Path(out_dir)
    eager = any(".attn." in hook and not _SDPA_ATTENTION.search(hook) for hook in hooks)
    with eager_attention(model) if eager else nullcontext():  # attention patterns and scores fire only under eager
        encoded = [encode(tokenizer, prompt) for prompt in prompts]
        for index, ids in enumerate(encoded):
            if not ids:
                raise ToolkitError(f"prompt #{index} tokenises to nothing: give it text")
        check_context([len(ids) for ids in encoded], model.cfg.n_ctx, [f"#{i}" for i in range(len(encoded))])

        manifest = {
            "format": FORMAT,
            "model": model.cfg.model_name,
            **precision(model),
            "n_layers": model.cfg.n_layers,
            "d_model": model.cfg.d_model,
            "hooks": hooks,
            "positions": positions,
            "shard_size": shard_size,
            "metadata": metadata or {},
            "prompts": [
                {"index": index, "sha256": prompt.sha256, "text": prompt.text, "n_tokens": len(ids), **prompt.metadata()}
                for index, (prompt, ids) in enumerate(zip(prompts, encoded))
            ],
            "shards": [],
            "complete": False,
            "provenance": provenance(model.cfg.model_name),  # what made the store (probes.core.provenance)
        }
        group = world

        def prepare() -> list[dict]:
            resume_manifest(out_dir, manifest, overwrite)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / MANIFEST, manifest)
            return manifest["shards"]

        created = not out_dir.exists()
        manifest["shards"] = group.on_main(prepare)
        n_shards = -(-len(prompts) // shard_size)
        finished = {shard["file"] for shard in manifest["shards"]}
        mine = [index for index in range(n_shards) if group.owns(index) and shard_name(index) not in finished]
        progress_file = out_dir / rank_progress_name(group.rank)
        written = []
        total = sum(min(len(prompts), (index + 1) * shard_size) - index * shard_size for index in mine)
        with discarded_unless_recorded(out_dir, created=created, new=not finished, main=group.is_main), group.together(), \
                tqdm(total=total, desc="recording", unit="prompt", disable=not progress or not group.is_main) as bar:
            for shard_index in mine:
                start, stop = shard_index * shard_size, min(len(prompts), (shard_index + 1) * shard_size)
                name = shard_name(shard_index)
                tensors = _record_shard(model, tokenizer, encoded[start:stop], hooks, positions, batch_size, extra_hooks, bar)
                with atomic_path(out_dir / name) as partial:
                    save_file(tensors, str(partial))
                written.append({"file": name, "start": start, "stop": stop})
                if not group.is_parallel:
                    finish_shards(out_dir, manifest, written[-1:], n_shards)
                else:  # rank 0 merges every rank's list at the end; this one survives an interruption
                    write_json(progress_file, written)
        if group.is_parallel:
            everyone = [shard for shards in group.gather(written) for shard in shards]
            if group.is_main:
                finish_shards(out_dir, manifest, everyone, n_shards)
                for path in out_dir.glob(rank_progress_name("*")):
                    path.unlink(missing_ok=True)
            group.barrier()
        return ActivationStore(out_dir)


def _record_shard(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[list[int]],
    hooks: Sequence[str],
    positions: str,
    batch_size: int,
    extra_hooks: Sequence[tuple[str, Callable]],
    bar: tqdm,
) -> dict[str, torch.Tensor]:
    lengths = [len(ids) for ids in encoded]
    rows: dict[str, list] = {hook: [None] * len(encoded) for hook in hooks}
    deepest = _deepest_block_output(hooks)
    for batch in length_sorted_batches(lengths, batch_size):
        device = model_device(model)
        tokens = right_pad([encoded[index] for index in batch], tokenizer.pad_token_id).to(device)
        batch_lengths = torch.tensor([lengths[index] for index in batch], device=device)
        captured: dict[str, list[torch.Tensor]] = {}

        def capture_as(name: str) -> Callable:
            # Bind the requested name: an alias fires under its canonical name.
            def capture(activation: torch.Tensor, hook) -> None:
                captured[name] = _select(activation.detach(), batch_lengths, positions, name)
                if name == deepest and len(captured) == len(hooks):
                    raise _StopForward

            return capture

        recording = [(hook, capture_as(hook)) for hook in hooks]
        with torch.inference_mode(), model.hooks(fwd_hooks=[*extra_hooks, *recording]):
            try:
                model(tokens)
            except _StopForward:
                pass
        missing = [hook for hook in hooks if hook not in captured]
        if missing:
            raise HookDidNotFire(f"hook(s) {', '.join(missing)} did not fire during the forward pass")
        for hook in hooks:
            for row, index in enumerate(batch):
                rows[hook][index] = captured[hook][row]
        bar.update(len(batch))
    if positions == "all":
        return {hook: torch.cat(values).cpu().contiguous() for hook, values in rows.items()}
    return {hook: torch.stack(values).cpu().contiguous() for hook, values in rows.items()}


def _select(
    activation: Float[torch.Tensor, "batch seq d"], lengths: torch.Tensor, positions: str, hook: str
) -> Float[torch.Tensor, "batch d"] | list[Float[torch.Tensor, "seq d"]]:
    if activation.ndim != 3:
        raise ToolkitError(f"{hook} gives activations of shape {tuple(activation.shape)}, but --positions picks tokens of "
                           "[batch, seq, d] ones: record a hook with one vector per token, e.g. blocks.0.hook_out")
    if positions == "last":
        rows = torch.arange(activation.shape[0], device=activation.device)
        return activation[rows, lengths.to(activation.device) - 1].float().clone()
    if positions == "mean":
        lengths = lengths.to(activation.device)
        mask = (torch.arange(activation.shape[1], device=activation.device)[None, :] < lengths[:, None]).float()
        return (activation.float() * mask[..., None]).sum(1) / lengths[:, None].float()
    return [activation[row, :length].float().clone() for row, length in enumerate(lengths.tolist())]


def _deepest_block_output(hooks: Sequence[str]) -> str | None:
    """When every hook is a block output (or the embedding), the deepest block: no later block
    is needed."""
    blocks = [hook for hook in hooks if _BLOCK_OUT.match(hook)]
    if not blocks or any(hook not in _BEFORE_BLOCKS and hook not in blocks for hook in hooks):
        return None
    return max(blocks, key=lambda hook: int(_BLOCK_OUT.match(hook).group(1)))
