"""Record residual-stream (or any hook point's) activations to an on-disk store.

``record_activations`` runs prompts through the bridge in length-sorted, right-padded batches
(``probes.passes.read_batches``), keeps only the requested positions of each requested hook, and
writes shards of a fixed number of prompts. Re-running the same call resumes an interrupted store and yields the same
files as an uninterrupted run. A requested hook that does not fire is an error, never a silent gap.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from probes.core.batching import check_batch_size
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.files import atomic_path, write_json
from probes.core.models import eager_attention
from probes.core.parallel import World
from probes.core.prompts import RenderedPrompt
from probes.core.provenance import provenance
from probes.passes import encode_prompts, read_batches, residual_hooks, validate_hooks
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

_SDPA_ATTENTION = re.compile(r"\.attn\.(?:[qkvo]\.)?hook_(?:in|out)$")  # attention hooks that fire under SDPA too


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
    _check_request(positions, prompts, shard_size, batch_size)
    hooks = validate_hooks(model, residual_hooks(model) if hooks is None else list(hooks))
    out_dir = Path(out_dir)
    eager = any(".attn." in hook and not _SDPA_ATTENTION.search(hook) for hook in hooks)
    with eager_attention(model) if eager else nullcontext():  # attention patterns and scores fire only under eager
        encoded = encode_prompts(model, tokenizer, prompts)
        manifest = _new_manifest(model, prompts, encoded, hooks, positions, shard_size, metadata)
        created = not out_dir.exists()
        manifest["shards"] = world.on_main(lambda: _open_store(out_dir, manifest, overwrite))
        n_shards = -(-len(prompts) // shard_size)
        finished = {shard["file"] for shard in manifest["shards"]}
        mine = [index for index in range(n_shards) if world.owns(index) and shard_name(index) not in finished]
        total = sum(min(len(prompts), (index + 1) * shard_size) - index * shard_size for index in mine)
        with (
            discarded_unless_recorded(out_dir, created=created, new=not finished, main=world.is_main),
            world.together(),
            tqdm(total=total, desc="recording", unit="prompt", disable=not progress or not world.is_main) as bar,
        ):
            written = []
            for shard_index in mine:
                start, stop = shard_index * shard_size, min(len(prompts), (shard_index + 1) * shard_size)
                tensors = read_batches(
                    model, tokenizer, encoded[start:stop], hooks, positions, batch_size, extra_hooks, bar
                )
                written.append(_write_shard(out_dir, shard_index, start, stop, tensors))
                if not world.is_parallel:
                    finish_shards(out_dir, manifest, written[-1:], n_shards)
                else:  # rank 0 merges every rank's list at the end; this one survives an interruption
                    write_json(out_dir / rank_progress_name(world.rank), written)
        if world.is_parallel:
            _merge_ranks(out_dir, manifest, written, n_shards, world)
        return ActivationStore(out_dir)


def _check_request(positions: str, prompts: Sequence[RenderedPrompt], shard_size: int, batch_size: int) -> None:
    if positions not in POSITIONS:
        raise ToolkitError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
    if not prompts:
        raise ToolkitError("no prompts to record")
    if shard_size < 1:
        raise ToolkitError(f"shard size must be at least 1, got {shard_size}")
    check_batch_size(batch_size)


def _new_manifest(
    model: TransformerBridge,
    prompts: Sequence[RenderedPrompt],
    encoded: Sequence[list[int]],
    hooks: list[str],
    positions: str,
    shard_size: int,
    metadata: dict | None,
) -> dict:
    """The manifest of a recording not started yet: what is recorded, from which prompts, by what."""
    return {
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


def _open_store(out_dir: Path, manifest: dict, overwrite: bool) -> list[dict]:
    """Create the store or resume it (the same recording only); the shards already written."""
    resume_manifest(out_dir, manifest, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, manifest)
    return manifest["shards"]


def _write_shard(out_dir: Path, index: int, start: int, stop: int, tensors: dict) -> dict:
    name = shard_name(index)
    with atomic_path(out_dir / name) as partial:
        save_file(tensors, str(partial))
    return {"file": name, "start": start, "stop": stop}


def _merge_ranks(out_dir: Path, manifest: dict, written: list[dict], n_shards: int, world: World) -> None:
    """Under torchrun: rank 0 lists every rank's shards in the manifest, then every rank waits for it."""
    everyone = [shard for shards in world.gather(written) for shard in shards]
    if world.is_main:
        finish_shards(out_dir, manifest, everyone, n_shards)
        for path in out_dir.glob(rank_progress_name("*")):
            path.unlink(missing_ok=True)
    world.barrier()
