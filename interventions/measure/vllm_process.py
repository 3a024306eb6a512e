"""A vLLM OpenAI-compatible server as a subprocess the toolkit starts, watches and stops.

vLLM runs in its own process, and often its own Python environment: its pins (transformers, torch builds) clash with
the toolkit's, and a crash of its engine must not take the toolkit's process with it. ``VllmProcess`` starts
``python -m vllm.entrypoints.openai.api_server --model DIR`` (the ``vllm`` console script of the CPU build fails on a
package-metadata lookup), waits until ``/health`` answers, and can tell whether the engine is still alive and restart
it. The interpreter is found by ``vllm_python``: ``$PRISM_VLLM_PYTHON``, else this interpreter when it imports vLLM
(``pip install vllm`` on a GPU machine), else ``.venv-vllm/bin/python`` in the working directory, the toolkit's
checkout or beside the toolkit's own environment (``.ci/setup-vllm`` builds it on x86-64 Linux). Without one, ``--engine
vllm`` ends in one line naming the install command.

Parallelism is vLLM's own: ``tensor_parallel_size``, ``pipeline_parallel_size`` and ``data_parallel_size`` pass
straight to it, so one command line serves a model over eight GPUs. When the toolkit's own process holds GPU memory
(the hooked model beside the engine), vLLM's share of each GPU is cut to what is free (``leave_room``). On a CPU the
server's threads are capped (``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_KVCACHE_SPACE``) unless the caller's environment
sets them.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import httpx
import torch

from probes.core.errors import ToolkitError

__all__ = ["INSTALL_HINT", "VllmProcess", "VllmSettings", "leave_room", "vllm_python"]

INSTALL_HINT = (
    "pip install vllm (GPU machines), or bash .ci/setup-vllm (x86-64 Linux CPUs: builds .venv-vllm), "
    "or set PRISM_VLLM_PYTHON to an interpreter that imports vllm"
)
PYTHON_ENV = "PRISM_VLLM_PYTHON"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class VllmSettings:
    """How the server runs.

    Args:
        tensor_parallel_size, pipeline_parallel_size, data_parallel_size: vLLM's parallelism (GPUs per replica split
            by tensor and by pipeline stage, and replicas).
        max_model_len: the context length vLLM reserves its cache for (None: the model's).
        lora_modules: ``{name: adapter directory}`` served as LoRA modules (requests name them as their model).
        max_lora_rank: the highest LoRA rank the server accepts.
        seed: the server's own seed (per-request seeds override it).
        gpu_memory_utilization: the share of each GPU's memory vLLM may take (None: vLLM's default).
        dtype: the weights' precision, as the toolkit resolved it (``float32`` on a CPU: vLLM's own ``auto`` would
            pick bfloat16 there, and the engines would no longer agree).
        eager: run without graph compilation (``--enforce-eager``); None: eager where no GPU is visible, since
            compiling costs minutes at start-up on a CPU.
        extra_args: further command-line arguments for the server, as given.
        startup_timeout: seconds to wait for ``/health``.
        env: environment variables for the server on top of this process's.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    max_model_len: int | None = None
    lora_modules: Mapping[str, str] = field(default_factory=dict)
    max_lora_rank: int = 16
    seed: int = 0
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    eager: bool | None = None
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = (self.tensor_parallel_size, self.pipeline_parallel_size, self.data_parallel_size)
        if min(sizes) < 1:
            raise ToolkitError(f"vLLM parallel sizes must be at least 1, got {sizes}")


def vllm_python() -> str:
    """The interpreter that runs vLLM's server (see the module docstring).

    Raises:
        ToolkitError: none found (one line naming the install command), or ``$PRISM_VLLM_PYTHON`` not executable.
    """
    named = os.environ.get(PYTHON_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise ToolkitError(f"${PYTHON_ENV}={named} is not an executable interpreter: point it at one with vllm")
        return named
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin:  # an installed package, not a folder named vllm in the working directory
        return sys.executable
    for root in (Path.cwd(), CHECKOUT, Path(sys.prefix).parent):  # the last: beside the toolkit's own environment
        candidate = root / ".venv-vllm" / "bin" / "python"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise ToolkitError(f"--engine vllm needs vLLM, which is not installed: {INSTALL_HINT}")


def leave_room(settings: VllmSettings) -> VllmSettings:
    """``settings`` with vLLM's share of each GPU cut to 90% of what is free now, when this process already holds
    GPU memory (the hooked model for the gate or the adapter cells) and no share was given: vLLM's default would take
    90% of the whole GPU and fail to start beside it."""
    if settings.gpu_memory_utilization is not None or not torch.cuda.is_available():
        return settings
    free = min(free / total for free, total in (torch.cuda.mem_get_info(d) for d in range(torch.cuda.device_count())))
    return settings if free > 0.95 else replace(settings, gpu_memory_utilization=round(0.9 * free, 2))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VllmProcess:
    """One vLLM server on ``model`` (a directory or hub id), served under ``served_name``; a context manager.

    ``url`` is its OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``), ``version`` vLLM's version, ``log``
    the file its output goes to (the first line of an error there is what a failure reports).
    """

    def __init__(
        self,
        model: str,
        *,
        served_name: str,
        settings: VllmSettings = VllmSettings(),
        python: str | None = None,
        port: int | None = None,
        log: str | Path | None = None,
    ) -> None:
        self.model, self.served_name, self.settings = str(model), served_name, settings
        self.python = python or vllm_python()
        self.port = port or _free_port()
        self.log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"prism-vllm-{self.port}.log"
        self.version: str | None = None
        self.starts = 0
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line."""
        s = self.settings
        command = [
            self.python,
            "-m",
            SERVER_MODULE,
            "--model",
            self.model,
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--seed",
            str(s.seed),
            "--tensor-parallel-size",
            str(s.tensor_parallel_size),
            "--pipeline-parallel-size",
            str(s.pipeline_parallel_size),
            "--data-parallel-size",
            str(s.data_parallel_size),
            "--dtype",
            s.dtype,
        ]
        if s.eager or (s.eager is None and not torch.cuda.is_available()):
            command.append("--enforce-eager")
        if s.max_model_len:
            command += ["--max-model-len", str(s.max_model_len)]
        if s.gpu_memory_utilization:
            command += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        if s.lora_modules:
            command += [
                "--enable-lora",
                "--max-lora-rank",
                str(s.max_lora_rank),
                "--lora-modules",
                *(f"{name}={path}" for name, path in s.lora_modules.items()),
            ]
        return command + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        """This process's environment, with small CPU defaults and the settings' own variables."""
        env = dict(os.environ)
        threads = env.get("OMP_NUM_THREADS", "")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; ignored on GPUs
        if threads.isdigit():
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{int(threads) - 1}" if int(threads) > 1 else "0")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.update(self.settings.env)
        return env

    def start(self) -> "VllmProcess":
        """Start the server and wait until it answers ``/health``.

        Raises:
            ToolkitError: it exits or is not ready within ``startup_timeout`` (one line: the log's error and its path).
        """
        if self.alive():
            return self
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as sink:
            process = subprocess.Popen(
                self.command(), stdout=sink, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True
            )
        self._process = process
        self.starts += 1
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if self._process is not process:
                raise ToolkitError("the vLLM server was stopped while it started")
            if process.poll() is not None:
                raise ToolkitError(f"the vLLM server exited at start-up ({self.last_error()}); its log: {self.log}")
            if self.healthy(timeout=2.0):
                self.version = self._version()
                return self
            time.sleep(0.5)
        self.stop()
        raise ToolkitError(
            f"the vLLM server was not ready after {self.settings.startup_timeout:.0f} s; its log: {self.log}"
        )

    def healthy(self, timeout: float = 5.0) -> bool:
        """Whether the server answers ``/health`` with 200 now."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def running(self) -> bool:
        """Whether the server process runs (whatever its engine answers)."""
        process = self._process
        return process is not None and process.poll() is None

    def alive(self) -> bool:
        """Whether the server process runs and its engine answers ``/health``."""
        return self.running() and self.healthy()

    def restart(self) -> None:
        """Stop the server (whatever state it is in) and start it again."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Stop the server and its workers (its process group): SIGTERM, then SIGKILL after 20 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        except ProcessLookupError:
            pass

    def last_error(self) -> str:
        """The last line of the log that names an error, else its last line (at most 200 characters)."""
        try:
            lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        errors = [line for line in lines if "Error" in line or "error" in line]
        return ((errors or lines or ["no output"])[-1])[:200]

    def _version(self) -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/version", timeout=5.0).json().get("version")
        except (httpx.HTTPError, ValueError):
            return None

    def __enter__(self) -> "VllmProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
