"""Directions and probes on disk: safetensors tensors plus one JSON metadata entry.

The metadata (model, hook point, layer, positions, data hash, held-out metrics, ...) is stored
as a single JSON string under the key ``prism`` so that files are byte-identical across runs
(safetensors writes several metadata keys in arbitrary order). Reloading gives back the same
tensors bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probes.atomic import atomic_path
from probes.errors import ToolkitError
from probes.linear import LinearProbe

METADATA_KEY = "prism"


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor | np.ndarray], metadata: Mapping) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` atomically."""
    path = Path(path)
    as_torch = {name: torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).contiguous()
                for name, value in tensors.items()}
    with atomic_path(path) as partial:
        save_file(as_torch, str(partial), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return path


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, metadata)`` of a file written by ``save_tensors``."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"no saved directions or probe at {path}: check the path")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as error:
        raise ToolkitError(f"{path} is not a readable safetensors file ({error})") from error
    if raw is None:
        raise ToolkitError(f"{path} carries no toolkit metadata: save it with probes.artefacts.save_tensors")
    return tensors, json.loads(raw)


def save_probe(path: str | Path, probe: LinearProbe, metadata: Mapping) -> Path:
    return save_tensors(path, {"weights": probe.weights, "bias": probe.bias},
                        {**metadata, "kind": probe.kind, "classes": list(probe.classes)})


def load_probe(path: str | Path) -> tuple[LinearProbe, dict]:
    tensors, metadata = load_tensors(path)
    if "weights" not in tensors or "classes" not in metadata:
        raise ToolkitError(f"{path} holds no probe (weights and classes): it may be a direction file")
    probe = LinearProbe(metadata["kind"], tuple(metadata["classes"]), tensors["weights"].numpy(), tensors["bias"].numpy())
    return probe, metadata
