"""What the server answers with: the rows of PRISM's comparison over one trained gate.

Every mode reads the gate in the answering prefill (``Routed``), so every answer carries the
gate's probability; what the mode does with it:

- ``prism``: the gated adapter on the rows the gate routes (the ``prism route`` default);
- ``steering``: the persona steering vector added on the rows the gate routes;
- ``base``: the base model on every row (the gate is read, nothing is changed: a zero vector is
  added after the last block);
- ``always``: the ungated adapter on every row (the paper's SFT baseline).

A mode is served when its files are there: the gate always, the gated adapter for ``prism``, the
steering vector for ``steering``, the ungated adapter for ``always``.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from prism.adapters import active_adapter, load_adapter
from prism.gate import Gate
from prism.persona_path import GATED, UNGATED
from prism.routing import Routed
from probes.core.errors import ToolkitError
from probes.core.files import load_tensors

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["MODES", "Modes", "PrismFiles"]

MODES = {
    "prism": "the gated adapter on the rows the gate routes",
    "steering": "the persona steering vector on the rows the gate routes",
    "base": "the base model on every row (the gate is read, nothing changes)",
    "always": "the ungated adapter on every row",
}


@dataclass(frozen=True)
class PrismFiles:
    """The trained files a server reads: the gate, and (each optional) the gated and ungated adapters (peft folders)
    and the steering vector (``steering.safetensors``, its block in the metadata)."""

    gate: Path
    adapter: Path | None = None
    ungated: Path | None = None
    steering: Path | None = None


class Modes:
    """The modes one model can serve from ``files``, loaded onto the model (see the module docstring).

    Args:
        model: the bridged model; the adapters are loaded onto it (switched off).
        files: the trained files; missing optional ones leave their mode out.

    Raises:
        ToolkitError: an unreadable gate, adapter or steering file, or one that does not fit the model.
    """

    def __init__(self, model: TransformerBridge, files: PrismFiles) -> None:
        self.model = model
        self.gate = Gate.load(files.gate)
        self.available = ["base"]
        if files.adapter is not None and files.adapter.exists():
            load_adapter(model, GATED, files.adapter)
            self.available.insert(0, "prism")
        if files.steering is not None and files.steering.is_file():
            tensors, metadata = load_tensors(files.steering)
            self.steering = (int(metadata["layer"]), tensors["vector"])
            self.available.append("steering")
        if files.ungated is not None and files.ungated.exists():
            load_adapter(model, UNGATED, files.ungated)
            self.available.append("always")
        last = model.cfg.n_layers - 1
        self._reader = (last, torch.zeros(model.cfg.d_model)) if self.gate.layer < last else None

    def check(self, mode: str) -> str:
        """``mode`` if it is served; one line saying which are, otherwise."""
        if mode not in MODES:
            raise ToolkitError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if mode not in self.available:
            raise ToolkitError(
                f"mode {mode!r} needs trained files this server was not given: it serves {', '.join(self.available)}"
            )
        return mode

    @contextmanager
    def routing(self, mode: str) -> Iterator[Routed | None]:
        """Within the block the model answers in ``mode``; yields the ``Routed`` that reads the gate (None in ``base``
        and ``always`` when the gate sits on the last block, where nothing can be added after it)."""
        self.check(mode)
        with ExitStack() as stack:
            if mode == "always":
                stack.enter_context(active_adapter(self.model, UNGATED))
            if mode == "prism":
                routed = Routed(self.model, self.gate, adapter=GATED)
            elif mode == "steering":
                routed = Routed(self.model, self.gate, steering=self.steering)
            else:
                routed = Routed(self.model, self.gate, steering=self._reader) if self._reader is not None else None
            yield stack.enter_context(routed) if routed is not None else None

    @staticmethod
    def route(mode: str, routed: bool) -> str:
        """The path an answer took: ``persona`` or ``base``."""
        if mode in ("base", "always"):
            return "persona" if mode == "always" else "base"
        return "persona" if routed else "base"
