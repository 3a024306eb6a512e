"""Starting a PRISM server: which files and model, the app over them, and uvicorn (in the foreground or a thread).

from prism.server import ServerThread, build_app, served_files

model_name, files = served_files("runs/prism")
model, tokenizer = load_model(model_name)
with ServerThread(build_app(model, tokenizer, files, model_name=model_name)) as server:
    print(server.url)  # http://127.0.0.1:PORT, a free port
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from prism.persona_path import GATED, UNGATED
from prism.server.app import ServerConfig, create_app
from prism.server.engine import Engine
from prism.server.limits import HeadDeadline, Limits
from prism.server.metrics import Metrics
from prism.server.modes import Modes, PrismFiles
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["ServerThread", "build_app", "serve", "served_files"]


def served_files(
    out: str | Path,
    *,
    model_name: str | None = None,
    gate: str | Path | None = None,
    adapter: str | Path | None = None,
    ungated: str | Path | None = None,
    steering: str | Path | None = None,
) -> tuple[str, PrismFiles]:
    """The model and trained files to serve: those of the PRISM working directory ``out``, each replaceable by a file.

    Args:
        out: the PRISM working directory (it need not exist when ``gate`` and ``model_name`` are given).
        model_name: the model (default: the directory's; must match it when the directory records one).
        gate, adapter, ungated, steering: files in place of the directory's gate, gated adapter, ungated adapter and
            steering vector.

    Returns:
        ``(model name, PrismFiles)``.

    Raises:
        ToolkitError: no gate (neither trained in ``out`` nor given), a gate file that is not there, no model (``out``
            records none and none is given), or a model other than the directory's.
    """
    work = PrismDirectory(out)
    if work.manifest.is_file():
        model_name = work.model_name(model_name)
    elif model_name is None:
        raise ToolkitError(f"{work.root} is not a PRISM directory (no {work.manifest.name}): give --model with --gate")
    gate_path = Path(gate) if gate is not None else work.require_gate()
    if not gate_path.is_file():
        raise ToolkitError(f"no gate file at {gate_path}")
    return model_name, PrismFiles(
        gate=gate_path,
        adapter=Path(adapter) if adapter else work.adapter(GATED),
        ungated=Path(ungated) if ungated else work.adapter(UNGATED),
        steering=Path(steering) if steering else work.steering,
    )


def build_app(
    model: TransformerBridge,
    tokenizer,
    files: PrismFiles,
    *,
    model_name: str,
    mode: str = "prism",
    max_batch_size: int = 16,
    batch_wait_ms: float = 10.0,
    max_queue: int = 256,
    max_tokens: int = 256,
    api_key: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The OpenAI-compatible app over ``model`` with the trained ``files`` (``prism.server.app``).

    Args:
        model, tokenizer: the loaded bridged model and its tokenizer; the app's worker thread owns them from now on.
        files: the gate and the optional adapters and steering vector (``served_files``).
        model_name: the model's name, as ``/health`` and ``/v1/models`` report it.
        mode: the default mode (``prism``, ``steering``, ``base`` or ``always``); it must be served.
        max_batch_size, batch_wait_ms, max_queue: batching and queueing (``Engine``).
        max_tokens: tokens generated when a request gives no ``max_tokens``.
        api_key: the key every ``/v1`` request must send (None: none).
        limits: what one request or connection may cost (default: ``Limits()``); ``serve`` and ``ServerThread`` give
            uvicorn the connection limits.

    Raises:
        ToolkitError: a default mode not served by these files, bad batching numbers, or unreadable files.
    """
    if min(max_batch_size, max_queue, max_tokens) < 1 or batch_wait_ms < 0:
        raise ToolkitError(
            "--max-batch-size, --max-queue and --max-tokens must be at least 1, --batch-wait-ms at least 0"
        )
    modes = Modes(model, files)
    modes.check(mode)
    engine = Engine(
        model,
        tokenizer,
        modes,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        max_queue=max_queue,
        metrics=Metrics(),
    )
    config = ServerConfig(
        model_name=model_name, default_mode=mode, max_tokens=max_tokens, api_key=api_key, limits=limits or Limits()
    )
    return create_app(engine, copy.deepcopy(tokenizer), config)


def uvicorn_config(app: FastAPI, **options) -> uvicorn.Config:
    """uvicorn's settings for ``app``: its connection limits (``app.state.limits``, from ``build_app``) on the h11
    protocol that also times a request's head (``prism.server.limits.HeadDeadline``)."""
    limits = getattr(app.state, "limits", None) or Limits()
    return uvicorn.Config(
        app,
        http=HeadDeadline,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive_timeout,
        **options,
    )


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C)."""
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


class ServerThread:
    """``app`` served by uvicorn in a background thread, as a context manager; ``url`` is where it listens.

    Args:
        app: the app.
        host: the address (default loopback).
        port: the port (0: a free one, chosen when the socket is bound).
        log_level: uvicorn's log level.
        start_timeout: seconds to wait for the server to listen.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        start_timeout: float = 120.0,
    ) -> None:
        self.host, self.start_timeout = host, start_timeout
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="prism-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ToolkitError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(60)
        self._socket.close()
