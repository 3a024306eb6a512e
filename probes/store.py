"""The on-disk activation store: safetensors shards plus a JSON manifest.

Layout of a store directory::

    manifest.json            model, hooks, positions, one entry per prompt (its text and SHA-256),
                             finished shards, and what made the store (``provenance``)
    shard_00000.safetensors  one tensor per hook for prompts [0, shard_size), ...

With ``positions`` "last" or "mean" a hook's tensor is ``[n_prompts_in_shard, d]``. With "all" it
is ``[n_tokens_in_shard, d]`` (prompts concatenated) and ``offsets`` (``[n + 1]``) marks where
each prompt starts. Shards are written whole and atomically, then the manifest is updated, so an
interrupted recording resumes at the first unfinished shard. In a data-parallel recording each
rank lists the shards it finished in ``manifest.rank<r>.json`` until rank 0 merges the lists into
the manifest; a resumed recording reads those lists too.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from probes.core.errors import ToolkitError
from probes.core.files import write_json
from probes.core.locking import LOCK_NAME

FORMAT = "prism-activations/1"
MANIFEST = "manifest.json"
POSITIONS = ("last", "mean", "all")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


class ActivationStore:
    """Read a recorded store: ``store.load("blocks.3.hook_out")`` gives every prompt's vectors.

    ``hooks``, ``positions``, ``prompts`` (one metadata dict per prompt) and ``complete`` read the manifest.

    Args:
        path: the store's directory (written by ``record_activations``).

    Raises:
        ToolkitError: the directory has no manifest, a corrupt one, or one of another format.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise ToolkitError(
                f"{self.path} is not an activation store (no {MANIFEST}): record one with `prism record`"
            )
        self.manifest = _store_manifest(manifest_path, fix="record the store again")

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def positions(self) -> str:
        return self.manifest["positions"]

    @property
    def prompts(self) -> list[dict]:
        return list(self.manifest["prompts"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return len(self.manifest["prompts"])

    def load(self, hook: str) -> Float[torch.Tensor, "rows d_model"]:
        """All rows of ``hook`` in prompt order (tokens in prompt order for positions="all").

        Args:
            hook: a recorded hook name, e.g. ``"blocks.3.hook_out"``.

        Returns:
            a float32 tensor: ``[n_prompts, d]`` for positions "last" or "mean"; ``[n_tokens, d]`` (every prompt's
            tokens, concatenated) for "all", where ``offsets()`` marks each prompt's rows.

        Raises:
            ToolkitError: ``hook`` was not recorded, or the recording is unfinished.
        """
        if hook not in self.manifest["hooks"]:
            raise ToolkitError(
                f"hook {hook!r} was not recorded in {self.path}; recorded: {', '.join(self.hooks[:4])}, ..."
            )
        if not self.complete:
            raise ToolkitError(f"{self.path} is unfinished: run the same `prism record` again to resume it")
        return torch.cat([self._shard(shard["file"])[hook] for shard in self.manifest["shards"]])

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        """One shard's tensors; a missing or damaged shard in one line."""
        try:
            return load_file(self.path / name)
        except (OSError, SafetensorError) as error:
            raise ToolkitError(
                f"{self.path / name} is damaged ({error}): delete it and run the same `prism record` again, "
                "which records that shard anew"
            ) from None

    def offsets(self) -> torch.Tensor:
        """For positions="all": row offsets of each prompt in ``load(hook)``.

        Returns:
            a long tensor ``[n_prompts + 1]``: prompt ``i`` holds rows ``offsets[i]:offsets[i + 1]``.

        Raises:
            ToolkitError: the store was recorded with positions "last" or "mean".
        """
        if self.positions != "all":
            raise ToolkitError(f"offsets exist only for positions='all'; this store has {self.positions!r}")
        counts = torch.tensor([prompt["n_tokens"] for prompt in self.manifest["prompts"]])
        return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def finish_shards(out_dir: Path, manifest: dict, shards: Sequence[dict], n_shards: int) -> None:
    """Add finished shards to the manifest, in shard order, and write it."""
    manifest["shards"] = sorted([*manifest["shards"], *shards], key=lambda shard: shard["start"])
    manifest["complete"] = len(manifest["shards"]) == n_shards
    write_json(out_dir / MANIFEST, manifest)


@contextmanager
def discarded_unless_recorded(out_dir: Path, *, created: bool, new: bool, main: bool) -> Iterator[None]:
    """A new store whose recording fails before any shard is written is removed again (its manifest, the rank
    files, the folder when this call made it and it is empty): a refused recording leaves nothing behind."""
    try:
        yield
    except BaseException:
        if new and main and not any(out_dir.glob("shard_*.safetensors")):
            for path in (out_dir / MANIFEST, *out_dir.glob(rank_progress_name("*"))):
                path.unlink(missing_ok=True)
            if created:
                with suppress(OSError):
                    out_dir.rmdir()
        raise


def rank_progress_name(rank: int | str) -> str:
    """The file where a rank of a data-parallel recording lists the shards it finished."""
    return f"{Path(MANIFEST).stem}.rank{rank}.json"


def resume_manifest(out_dir: Path, manifest: dict, overwrite: bool) -> None:
    """Check ``out_dir`` before recording ``manifest`` there and put the finished shards of a matching earlier run
    (the manifest's and those an interrupted data-parallel run listed) in ``manifest``. ``overwrite`` deletes an
    earlier store (only a store) instead."""
    existing_path = out_dir / MANIFEST
    if not existing_path.exists():
        # --overwrite replaces stores only: never delete a directory of someone else's files.
        if out_dir.exists() and any(path.name != LOCK_NAME for path in out_dir.iterdir()):  # the lock is this run's
            raise ToolkitError(f"{out_dir} exists and is not an activation store: choose another output directory")
        return
    existing = _store_manifest(existing_path)
    if overwrite:
        _delete_store_files(out_dir)
        return
    for key in ("model", "hooks", "positions", "shard_size", "prompts", "metadata"):
        if _comparable(key, existing.get(key)) != _comparable(key, manifest[key]):
            raise ToolkitError(
                f"{out_dir} already holds a recording with different {key}: use another output directory or --overwrite"
            )
    listed = list(existing.get("shards", [])) + _interrupted_ranks(out_dir)
    kept = [
        shard
        for shard in {shard["file"]: shard for shard in listed}.values()
        if _shard_intact(out_dir / shard["file"], manifest["hooks"])
    ]
    manifest["shards"] = sorted(kept, key=lambda shard: shard["start"])
    n_shards = -(-len(manifest["prompts"]) // manifest["shard_size"])
    manifest["complete"] = len(kept) == n_shards


def _shard_intact(path: Path, hooks: Sequence[str]) -> bool:
    """Whether a finished shard's file is whole (safetensors checks that its data covers the header's tensors) and
    holds every hook with the same rows; its tensors are not read. A cut or damaged shard is recorded again."""
    try:
        with safe_open(path, framework="pt") as handle:
            if not set(hooks) <= set(handle.keys()):
                return False
            return len({handle.get_slice(hook).get_shape()[0] for hook in hooks}) == 1
    except (OSError, SafetensorError):
        return False


def _store_manifest(
    path: Path, fix: str = "choose another output directory, or delete it yourself if it is a damaged store"
) -> dict:
    """The manifest at ``path`` when the toolkit wrote it (it carries the store's format marker); else one line ending
    with ``fix``."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ToolkitError(f"{path} is not an activation store's manifest ({type(error).__name__}): {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ToolkitError(f"{path} was not written by `prism record` (no {FORMAT!r} marker): {fix}")
    return manifest


def _delete_store_files(out_dir: Path) -> None:
    """Delete what a recording writes in ``out_dir`` (shards, manifest, rank progress and partial files), nothing
    else: the folder itself stays when it holds anything of anyone else's."""
    for pattern in (
        "shard_[0-9][0-9][0-9][0-9][0-9].safetensors",
        ".shard_*.partial",
        rank_progress_name("*"),
        ".manifest*.partial",
        MANIFEST,
    ):
        for path in out_dir.glob(pattern):
            if path.is_file():
                path.unlink()


def _comparable(key: str, value):
    """A manifest field as a resumed recording must match it: prompts by their hash (stores recorded before the
    manifest kept each prompt's text have none)."""
    if key != "prompts" or not isinstance(value, list):
        return value
    return [
        {name: field for name, field in prompt.items() if name != "text"} if isinstance(prompt, dict) else prompt
        for prompt in value
    ]


def _interrupted_ranks(out_dir: Path) -> list[dict]:
    """Shards finished by the ranks of an interrupted data-parallel recording (their progress files)."""
    shards = []
    for path in sorted(out_dir.glob(rank_progress_name("*"))):
        try:
            listed = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # cut off by the interruption: those shards are recorded again
        shards += [shard for shard in listed if isinstance(shard, dict) and {"file", "start", "stop"} <= shard.keys()]
    return shards
