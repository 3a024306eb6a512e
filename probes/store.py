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
import shutil
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file

from probes.core.errors import ToolkitError
from probes.core.files import write_json

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
            raise ToolkitError(f"{self.path} is not an activation store (no {MANIFEST}): record one with `prism record`")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ToolkitError(f"{manifest_path} is corrupt ({error.msg}): record the store again") from error
        if self.manifest.get("format") != FORMAT:
            raise ToolkitError(f"{manifest_path} has format {self.manifest.get('format')!r}, expected {FORMAT!r}")

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
            raise ToolkitError(f"hook {hook!r} was not recorded in {self.path}; recorded: {', '.join(self.hooks[:4])}, ...")
        if not self.complete:
            raise ToolkitError(f"{self.path} is unfinished: run the same `prism record` again to resume it")
        return torch.cat([load_file(self.path / shard["file"])[hook] for shard in self.manifest["shards"]])

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
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ToolkitError(f"{out_dir} exists and is not an activation store: choose another output directory")
        return
    if overwrite:
        shutil.rmtree(out_dir)
        return
    existing = ActivationStore(out_dir).manifest
    for key in ("model", "hooks", "positions", "shard_size", "prompts", "metadata"):
        if _comparable(key, existing.get(key)) != _comparable(key, manifest[key]):
            raise ToolkitError(
                f"{out_dir} already holds a recording with different {key}: use another output directory or --overwrite"
            )
    listed = list(existing["shards"]) + _interrupted_ranks(out_dir)
    kept = [shard for shard in {shard["file"]: shard for shard in listed}.values() if (out_dir / shard["file"]).is_file()]
    manifest["shards"] = sorted(kept, key=lambda shard: shard["start"])
    n_shards = -(-len(manifest["prompts"]) // manifest["shard_size"])
    manifest["complete"] = len(kept) == n_shards


def _comparable(key: str, value):
    """A manifest field as a resumed recording must match it: prompts by their hash (stores recorded before the
    manifest kept each prompt's text have none)."""
    if key != "prompts" or not isinstance(value, list):
        return value
    return [{name: field for name, field in prompt.items() if name != "text"} if isinstance(prompt, dict) else prompt
            for prompt in value]


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
