"""Generation engines: one small interface, two engines behind it.

Everything the toolkit generates without hooks (the study's generation tasks, the bootstrap's queries, answers and
verdicts, the comparison's prompt-only cells, the self-judge) asks an ``Engine`` for two things:

- ``generate(prompts, ...)``: one response per rendered prompt, greedy or sampled with a seed;
- ``option_logprobs(prompts, options)``: the summed log-probability of each option text after its prompt.

Two engines:

- ``hf`` (``HFEngine``): ``generation.generate`` and ``scoring.score_choices`` on the hooked model. The only engine
  when hooks must run (steering, routed adapters, ablation): hooks added to the bridge fire on every token.
- ``vllm`` (``VllmEngine``): a vLLM OpenAI-compatible server, started by the toolkit on the model's directory
  (``vllm_process.VllmProcess``) or named by URL (``--engine-url``). Its engine runs in its own process and often its
  own environment; continuous batching, paged attention and tensor/pipeline/data parallelism are vLLM's.

How the vLLM engine maps prompts, sampling, seeds and failures: ``vllm_engine``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, Sequence

from transformers import PreTrainedTokenizerBase

from interventions.measure.generation import generate
from interventions.measure.scoring import score_choices
from interventions.measure.vllm_engine import EngineDown, VllmEngine
from interventions.measure.vllm_process import VllmProcess, VllmSettings, leave_room, vllm_python
from probes.core.devices import resolve_device, resolve_dtype
from probes.core.errors import ToolkitError
from probes.core.models import resolve_model_directory
from probes.core.prompts import RenderedPrompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["ENGINES", "Engine", "EngineDown", "EngineSpec", "HFEngine", "VllmEngine", "engine_key", "open_engine"]

ENGINES = ("hf", "vllm")


class Engine(Protocol):
    """What every engine offers (see the module docstring)."""

    name: str

    def generate(
        self,
        prompts: Sequence[RenderedPrompt],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool = True,
    ) -> list[str]:
        """One response per prompt (``generation.generate``'s contract)."""

    def option_logprobs(
        self, prompts: Sequence[RenderedPrompt], options: Sequence[Sequence[str]], *, batch_size: int = 8
    ) -> list[list[float]]:
        """For each prompt, the summed log-probability of each of its options as the prompt's continuation."""


@dataclass(frozen=True)
class EngineSpec:
    """Which engine a command generates with, before any model loads (``--engine`` and its options).

    Args:
        kind: ``hf`` or ``vllm``.
        url: the base URL of a running vLLM server (``--engine-url``); None: the toolkit starts one.
        settings: how a server the toolkit starts runs (parallel sizes, extra arguments, ...).
        concurrency: requests in flight at most.
    """

    kind: str = "hf"
    url: str | None = None
    settings: VllmSettings = field(default_factory=VllmSettings)
    concurrency: int = 16

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ToolkitError(f"unknown engine {self.kind!r}: use one of {', '.join(ENGINES)}")
        if self.url and self.kind != "vllm":
            raise ToolkitError("--engine-url names a vLLM server: give it with --engine vllm")
        if self.concurrency < 1:
            raise ToolkitError(f"engine concurrency must be at least 1, got {self.concurrency}")

    @property
    def hooks(self) -> bool:
        """Whether hooks on the hooked model act on this engine's generation (only ``hf``)."""
        return self.kind == "hf"

    def check(self) -> None:
        """Fail now, before any model loads, when vLLM is asked for and no interpreter runs it (one line)."""
        if self.kind == "vllm" and self.url is None:
            vllm_python()


def open_engine(
    spec: EngineSpec | None,
    model_name: str,
    tokenizer: PreTrainedTokenizerBase,
    model: TransformerBridge = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    log: str | None = None,
) -> "HFEngine | VllmEngine":
    """The engine ``spec`` asks for, ready; close it (or use it as a context manager) to stop a server it started.

    Args:
        spec: the engine (None: ``hf``).
        model_name: the model as the toolkit names it (``default``, a hub id, a directory, a .gguf file): vLLM serves
            the directory ``load_model`` reads (the embedded model's cached dense copy), under the same label.
        tokenizer, model: the model's tokenizer and, for ``hf`` (and a context check), the hooked model.
        device, dtype: the toolkit's precision options: vLLM runs the dtype they resolve to (float32 on a CPU).
        log: where the server's output goes (default: a file in the temporary folder).

    Raises:
        ToolkitError: ``hf`` without a model, no vLLM to run, or a server that does not start or answer (one line).
    """
    spec = spec or EngineSpec()
    if spec.kind == "hf":
        if model is None:
            raise ToolkitError("the hf engine needs the hooked model")
        return HFEngine(model, tokenizer)
    context = model.cfg.n_ctx if model is not None else None
    if spec.url:
        return VllmEngine(tokenizer, url=spec.url, concurrency=spec.concurrency, context=context)
    directory, label = resolve_model_directory(model_name)
    precision = str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
    settings = spec.settings if spec.settings.dtype != "auto" else replace(spec.settings, dtype=precision)
    process = VllmProcess(directory, served_name=label, settings=leave_room(settings), log=log)
    return VllmEngine(tokenizer, process=process, concurrency=spec.concurrency, context=context)


def engine_key(engine: Engine | None) -> dict:
    """What a ledger key adds for ``engine``: nothing for ``hf`` (keys stay as before), ``{"engine": name}`` else."""
    return {} if engine is None or engine.name == "hf" else {"engine": engine.name}


class HFEngine:
    """The hooked model: ``generate`` and ``score_choices`` (hooks on the bridge fire)."""

    name = "hf"

    def __init__(self, model: TransformerBridge, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    def generate(
        self,
        prompts: Sequence[RenderedPrompt],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool = True,
    ) -> list[str]:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )

    def option_logprobs(
        self, prompts: Sequence[RenderedPrompt], options: Sequence[Sequence[str]], *, batch_size: int = 8
    ) -> list[list[float]]:
        results = score_choices(
            self.model, self.tokenizer, prompts, options, [0] * len(prompts), batch_size=batch_size, progress=False
        )
        return [list(result.logprobs) for result in results]

    def close(self) -> None:
        """Nothing to stop: the hooked model belongs to the caller."""

    def __enter__(self) -> "HFEngine":
        return self

    def __exit__(self, *exc) -> None:
        pass
