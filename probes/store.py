"""The on-disk activation store: safetensors shards plus a JSON manifest.

Layout of a store directory::

    manifest.json            model, hooks, positions, one entry per prompt, finished shards
    shard_00000.safetensors  one tensor per hook for prompts [0, shard_size), ...

With ``positions`` "last" or "mean" a hook's tensor is ``[n_prompts_in_shard, d]``. With "all" it
is ``[n_tokens_in_shard, d]`` (prompts concatenated) and ``offsets`` (``[n + 1]``) marks where
each prompt starts. Shards are written whole and atomically, then the manifest is updated, so an
interrupted recording resumes at the first unfinished shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file

from probes.core.errors import ToolkitError

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
