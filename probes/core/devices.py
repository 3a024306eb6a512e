"""Where a model runs and in what precision: ``--device``, ``--dtype`` and ``--device-map``
resolved once, and the device every tensor the toolkit makes must follow.

``auto`` device is CUDA when there is a GPU, else Apple's MPS when available, else the CPU;
``auto`` dtype is bfloat16 on a GPU and float32 on the CPU, so CPU runs and their numbers are
unchanged. A device map (accelerate's, through ``from_pretrained``) spreads the blocks of a model
larger than one device over several; the model's device is then the embedding's, where inputs
go, and a tensor that meets an activation goes to that activation's device.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from probes.core.errors import ToolkitError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's named strategies


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` a model loads onto.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.

    Returns:
        the device; ``auto`` picks CUDA, then MPS, then the CPU. Under ``torchrun`` (``WORLD_SIZE`` > 1) ``auto`` and
        ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.

    Raises:
        ToolkitError: an unknown device, or one this machine does not have.
    """
    text = str(device).strip().lower() if not isinstance(device, torch.device) else str(device)
    if text in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}")  # torchrun
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ToolkitError(f"unknown device {device!r}: use {', '.join(DEVICES)}")
    if kind == "cuda" and (not torch.cuda.is_available() or int(index or 0) >= torch.cuda.device_count()):
        raise ToolkitError(
            f"device {text!r} is not available here ({torch.cuda.device_count()} CUDA devices): "
            "use --device cpu or auto"
        )
    if kind == "mps" and not _mps_available():
        raise ToolkitError("device 'mps' is not available here: use --device cpu or auto")
    return torch.device(text)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device = torch.device("cpu")) -> torch.dtype:
    """The weights' dtype.

    Args:
        dtype: ``auto``, ``float32``, ``bfloat16``, ``float16`` or a floating ``torch.dtype``.
        device: the resolved device, which ``auto`` follows.

    Returns:
        the dtype; ``auto`` is bfloat16 on a GPU and float32 on the CPU.

    Raises:
        ToolkitError: an unknown dtype.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ToolkitError(f"unsupported dtype {dtype}: use auto, {', '.join(DTYPES)}")
        return dtype
    text = str(dtype).strip().lower()
    if text == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if text not in DTYPES:
        raise ToolkitError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[text]


def resolve_device_map(
    device_map: str | Mapping[str, str | int] | None, device: str | torch.device | None = None
) -> str | dict[str, str | int] | None:
    """A device map as ``from_pretrained`` takes it, checked once.

    Args:
        device_map: None (one device), one of ``DEVICE_MAPS`` (accelerate places the blocks over every GPU,
            then the CPU) or a ``{module name: device}`` dict whose devices are GPU indices or what
            ``resolve_device`` takes (``{"": "cpu"}`` puts the whole model on the CPU).
        device: the ``--device`` given beside it: None or ``auto``, since the map places every block itself.

    Returns:
        None, the strategy's name, or the dict with its devices normalised (an index stays an index).

    Raises:
        ToolkitError: an unknown strategy, an empty map or one with a device this machine lacks, or a map beside
            an explicit device.
    """
    if device_map is None:
        return None
    if device is not None and str(device).strip().lower() != "auto":
        raise ToolkitError(f"a device map places every block itself: give --device-map or --device {device}, not both")
    if isinstance(device_map, str):
        text = device_map.strip().lower()
        if text not in DEVICE_MAPS:
            raise ToolkitError(
                f"unknown device map {device_map!r}: use {', '.join(DEVICE_MAPS)} "
                "(or, from Python, a {module name: device} dict)"
            )
        return text
    if not isinstance(device_map, Mapping) or not device_map:
        raise ToolkitError(
            f"a device map is {', '.join(DEVICE_MAPS)} or a non-empty {{module name: device}} dict, got {device_map!r}"
        )
    placed: dict[str, str | int] = {}
    for module, where in device_map.items():
        if isinstance(where, int) and not isinstance(where, bool):
            resolve_device(f"cuda:{where}")  # a GPU index: fails in one line where there is no such GPU
            placed[str(module)] = where
        else:
            placed[str(module)] = str(resolve_device(where))
    return placed


def map_device(device_map: str | Mapping[str, str | int]) -> torch.device:
    """The kind of device a resolved map puts the blocks on, which ``auto`` dtype follows: CUDA when a named
    strategy finds a GPU or a dict names one, else the CPU."""
    if isinstance(device_map, str):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    gpu = any(not isinstance(where, str) or where.startswith("cuda") for where in device_map.values())
    return torch.device("cuda") if gpu else torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the embedding's, under a device map): where inputs go. A
    tensor that meets an activation goes to ``activation.device``, which differs from it when blocks sit on
    several devices."""
    return next(model.parameters()).device


def precision(model: torch.nn.Module) -> dict[str, str | dict[str, str]]:
    """How a loaded model runs, as every output records it beside the model's name: ``device`` (the embedding's),
    ``dtype``, ``attention`` (``sdpa`` or ``eager``) and, when the model was loaded with one, ``device_map``
    (``{module name: device}`` as accelerate placed the blocks over several devices, else the map as given)."""
    parameter = next(model.parameters())
    record: dict[str, str | dict[str, str]] = {"device": str(parameter.device), "dtype": dtype_name(parameter.dtype)}
    wrapped = getattr(model, "original_model", model)
    attention = getattr(getattr(wrapped, "config", None), "_attn_implementation", None)
    if isinstance(attention, str):
        record["attention"] = attention
    placed = getattr(getattr(model, "cfg", None), "device_map", None)
    if placed:
        record["device_map"] = (
            placed if isinstance(placed, str) else {module: str(where) for module, where in placed.items()}
        )
    return record


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``, as outputs record it."""
    return str(dtype).removeprefix("torch.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
