"""Starting ``prism serve --engine vllm``: the vLLM server's settings (LoRA modules for the adapters) and the app.

model_name, files = served_files("runs/prism")
model, tokenizer = load_model(model_name)
app = build_vllm_app(model, tokenizer, files, model_name=model_name, spec=EngineSpec("vllm"))
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from interventions.measure.engines import EngineSpec
from interventions.measure.vllm_process import VllmProcess, leave_room
from prism.server.app import ServerConfig, create_app
from prism.server.limits import Limits
from prism.server.metrics import Metrics
from prism.server.modes import PrismFiles
from prism.server.vllm_engine import VllmModes, VllmServeEngine
from probes.core.devices import resolve_device, resolve_dtype
from probes.core.errors import ToolkitError
from probes.core.models import resolve_model_directory

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["build_vllm_app"]


def build_vllm_app(
    model: TransformerBridge,
    tokenizer,
    files: PrismFiles,
    *,
    model_name: str,
    spec: EngineSpec,
    mode: str = "prism",
    max_concurrency: int = 64,
    max_queue: int = 256,
    max_tokens: int = 256,
    api_key: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    log: str | Path | None = None,
    process: VllmProcess | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The OpenAI-compatible app over a vLLM server on ``model_name``'s weights, with the gate read here.

    Args:
        model, tokenizer: the hooked model (the gate pass) and its tokenizer.
        files: the gate and the adapters (``served_files``); the adapters become vLLM LoRA modules.
        model_name: the model as the toolkit names it (vLLM serves its directory).
        spec: the engine options (``--engine-url``, parallel sizes, extra vLLM arguments).
        mode: the default mode (``prism``, ``base`` or ``always``; ``steering`` is refused in one line).
        max_concurrency, max_queue, max_tokens, api_key: requests answered at once, waiting at most, default answer
            length and the API key.
        device, dtype: the toolkit's precision options, which vLLM follows (float32 on a CPU).
        log: where the vLLM server's output goes.
        limits: what one request or connection may cost (default: ``Limits()``), as with ``--engine hf``.
        process: a vLLM server someone else started (with the LoRA modules ``prism`` and ``prism-ungated``), watched
            and restarted by the app but not stopped with it.

    Raises:
        ToolkitError: a mode vLLM cannot serve or whose files are missing, or bad numbers.
    """
    if min(max_concurrency, max_queue, max_tokens) < 1:
        raise ToolkitError("--max-batch-size, --max-queue and --max-tokens must be at least 1")
    modes = VllmModes.from_files(files, mode)
    owned = process is None
    if spec.url is None and process is None:
        directory, label = resolve_model_directory(model_name)
        modules = VllmModes.lora_modules(files, modes.available)
        precision = str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
        settings = replace(
            spec.settings,
            lora_modules=modules,
            max_lora_rank=_rank(modules.values()),
            dtype=precision if spec.settings.dtype == "auto" else spec.settings.dtype,
        )
        process = VllmProcess(directory, served_name=label, settings=leave_room(settings), log=log)
    engine = VllmServeEngine(
        model,
        tokenizer,
        modes,
        process=process,
        url=None if process else spec.url,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        metrics=Metrics(),
        stop_on_close=owned,
    )
    config = ServerConfig(
        model_name=model_name, default_mode=mode, max_tokens=max_tokens, api_key=api_key, limits=limits or Limits()
    )
    return create_app(engine, copy.deepcopy(tokenizer), config)  # type: ignore[arg-type]


def _rank(folders) -> int:
    """The highest LoRA rank among the adapters (vLLM's ``--max-lora-rank``; it accepts 8, 16, 32, ...)."""
    ranks = [json.loads((Path(folder) / "adapter_config.json").read_text())["r"] for folder in folders]
    highest = max(ranks, default=8)
    return next(size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= highest)
