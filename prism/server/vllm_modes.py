"""The modes ``prism serve --engine vllm`` offers, and the vLLM LoRA modules that make them.

``prism``: the gated adapter (LoRA module ``prism``) on the requests the gate routes; ``always``: the ungated adapter
(``prism-ungated``) on every request; ``base``: the base model. ``steering`` adds a vector inside the model's forward,
which vLLM cannot: asking for it is refused in one line at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prism.gate import Gate
from prism.server.modes import MODES, PrismFiles
from probes.core.errors import ToolkitError

__all__ = ["GATED_MODULE", "UNGATED_MODULE", "VllmModes"]

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
            raise ToolkitError("mode steering adds a vector inside the model's forward, which vLLM cannot: "
                               "serve it with --engine hf")
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
            raise ToolkitError(f"mode {mode!r} is not served with --engine vllm here: it serves "
                               f"{', '.join(self.available)}")
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
