"""``prism serve``: an OpenAI-compatible HTTP server that routes each request inside the model.

The pieces, lowest first: ``decoding`` (batched decoding through the KV cache, each row sampled
with its own seeded generator), ``text`` (a row's text streamed as it comes), ``modes`` (what an
answer is made with: ``prism``, ``steering``, ``base``, ``always``, each reading the gate in the
answering prefill), ``engine`` (the worker thread that owns the model and batches the requests
that arrive together), ``metrics`` (Prometheus text), ``protocol`` (OpenAI's request and answer
formats, errors included), ``logprobs`` (log-probabilities in OpenAI's two formats), ``limits``
(what one request or connection may cost), ``prompts`` (a request's prompt, rendered and
tokenised within those bounds), ``checks`` (that work, off the event loop), ``streaming``
(server-sent events), ``app`` (the FastAPI endpoints) and ``launch`` (files, app, uvicorn).

    from prism.server import ServerThread, build_app, served_files

    model_name, files = served_files("runs/prism")
    model, tokenizer = load_model(model_name)
    with ServerThread(build_app(model, tokenizer, files, model_name=model_name)) as server:
        ...  # OpenAI(base_url=server.url + "/v1", api_key="none")

Needs the ``serve`` extra: ``pip install 'prism-toolkit[serve]'`` (FastAPI and uvicorn).
"""

from typing import TYPE_CHECKING

from probes.core.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "prism.server.app": ("ServerConfig", "create_app"),
        "prism.server.decoding": ("BatchDecoder", "Sampling"),
        "prism.server.engine": ("Engine", "Job", "Overloaded"),
        "prism.server.limits": ("Limits",),
        "prism.server.launch": ("ServerThread", "build_app", "serve", "served_files"),
        "prism.server.metrics": ("Metrics",),
        "prism.server.modes": ("MODES", "Modes", "PrismFiles"),
        "prism.server.prompts": ("Budget",),
        "prism.server.protocol": ("ApiError",),
        "prism.server.text": ("TextStream",),
    },
)

if TYPE_CHECKING:  # what type checkers and IDEs see; tests/test_layering.py keeps it equal to the lazy map
    from prism.server.app import ServerConfig, create_app
    from prism.server.decoding import BatchDecoder, Sampling
    from prism.server.engine import Engine, Job, Overloaded
    from prism.server.launch import ServerThread, build_app, serve, served_files
    from prism.server.limits import Limits
    from prism.server.metrics import Metrics
    from prism.server.modes import MODES, Modes, PrismFiles
    from prism.server.prompts import Budget
    from prism.server.protocol import ApiError
    from prism.server.text import TextStream
