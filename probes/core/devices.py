"""Where a model runs and in what precision: ``--device`` and ``--dtype`` resolved once, and the
device every tensor the toolkit makes must follow.

``auto`` device is CUDA when there is a GPU, else Apple's MPS when available, else the CPU;
``auto`` dtype is bfloat16 on a GPU and float32 on the CPU, so CPU runs and their numbers are
unchanged.
"""

from __future__ import annotations

import os

import torch

from probes.core.errors import ToolkitError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        raise ToolkitError(f"device {text!r} is not available here ({torch.cuda.device_count()} CUDA devices): "
                           "use --device cpu or auto")
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


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter: where inputs and every tensor meeting its activations go."""
    return next(model.parameters()).device


def precision(model: torch.nn.Module) -> dict[str, str]:
    """``{"device": ..., "dtype": ...}`` of a loaded model, as every output records them beside the model's name."""
    parameter = next(model.parameters())
    return {"device": str(parameter.device), "dtype": dtype_name(parameter.dtype)}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``, as outputs record it."""
    return str(dtype).removeprefix("torch.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
