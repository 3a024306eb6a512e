"""Catch tensors made off the model's device on a CPU-only machine.

On a GPU, an op that mixes a CUDA activation with a tensor the toolkit made on the CPU fails
("Expected all tensors to be on the same device"); on a CPU every tensor is on the CPU, so the bug
hides. ``OffDeviceGuard`` brings it back: a ``TorchFunctionMode`` that gives every tensor a virtual
device. A tensor is *on the model's device* when it is a parameter or buffer of the model, the
result of an op with such an input, a factory result made with an explicit ``device=`` equal to the
model's, or the result of ``.to(device)`` / ``.to(tensor)`` onto it. Any other tensor is *host*.
An op whose inputs mix a device tensor with a host tensor of one or more dimensions (CUDA accepts
host scalars) raises ``OffDevice``, naming the op, as CUDA would.

Optimiser kernels (``_foreach_*``, ``_fused_*``) are exempt: they read ``.grad``, which autograd
makes on the parameter's device without a Python call the mode could tag.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_TAG = "_on_model_device"


class OffDevice(RuntimeError):
    """An op mixed a tensor on the model's device with one made on the host."""


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _on_device(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, torch.nn.Parameter) or getattr(tensor, _TAG, False)


def _tag(value, on: bool) -> None:
    for tensor in _tensors(value):
        try:
            setattr(tensor, _TAG, on)
        except (AttributeError, RuntimeError):
            pass


class OffDeviceGuard(TorchFunctionMode):
    """Inside ``with OffDeviceGuard(model):``, ops mixing host tensors with the model's raise ``OffDevice``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.device = next(model.parameters()).device
        _tag(list(model.buffers()), True)

    def _is_model_device(self, device) -> bool:
        if isinstance(device, torch.Tensor):
            return _on_device(device)
        try:
            return torch.device(device) == self.device
        except (TypeError, RuntimeError):
            return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        result = func(*args, **kwargs)
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        if name.startswith(("_foreach", "_fused")):
            return result
        if name == "to":
            target = next(
                (
                    a
                    for a in list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
                    if isinstance(a, (str, torch.device, torch.Tensor))
                ),
                None,
            )
            _tag(result, self._is_model_device(target) if target is not None else _on_device(args[0]))
            return result
        if name == "cpu":
            _tag(result, False)
            return result
        device_inputs = [t for t in inputs if _on_device(t)]
        host = [t for t in inputs if not _on_device(t) and t.ndim > 0]
        if device_inputs and host:
            raise OffDevice(
                f"{name} mixes a tensor on the model's device with a host tensor of shape "
                f"{tuple(host[0].shape)}: make it on (or move it to) the model's device"
            )
        explicit = "device" in kwargs and kwargs["device"] is not None and self._is_model_device(kwargs["device"])
        _tag(result, bool(device_inputs) or explicit)
        return result
