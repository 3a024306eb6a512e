"""Trained PRISM working directories for the server's tests, and a running server over one.

``tiny_model_directory`` is the tiny random Llama of ``tiny_llama_directory`` (the same config and
seed) with the embedded model's tokenizer files, found by path: the embedded model is never
loaded, so tests on it are not marked slow. ``tiny_prism`` is a real working directory on it: a logistic gate on block 0
(threshold at the median, so half the queries are routed), the gated and ungated adapters
distilled on blocks 1..2 and the persona steering vector after block 1. ``tiny_server`` serves it
on 127.0.0.1 (a free port) in a background thread. ``served_scores`` is the toolkit's own scoring of
continuations with the route the server gives an echoed context and continuation.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # lm-eval's local tasks: never a hub

from dataclasses import replace

import numpy as np
import pytest
import torch
from openai import OpenAI
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from interventions.measure.scoring import score_choices
from prism.adapters import active_adapter, save_adapter
from prism.distill import DistillConfig, distill
from prism.gate import fit_gate, gate_features
from prism.persona_path import GATED, UNGATED, persona_shift
from prism.routing import Routed
from prism.samples import Sample
from prism.server.launch import ServerThread, build_app, served_files
from prism.workdir import PrismDirectory
from probes.core.files import save_tensors
from probes.core.models import load_model, resolve_model_directory
from probes.core.prompts import encode
from probes.splits import Split
from tests.gate_queries import QUERIES


def _samples(n: int = 4) -> list[Sample]:
    return [
        Sample(
            f"writing-{i}",
            "writing",
            f"Write {i + 2} lines about rain on a roof.",
            "Rain falls.",
            f"Rain drums {i + 2} times on the tin, and the night listens.",
            True,
            True,
            (1.0, 1.0),
        )
        for i in range(n)
    ]


def make_prism_directory(model_directory: str, out, *, epochs: int = 2) -> PrismDirectory:
    """Train and save a small PRISM working directory for ``model_directory`` (see the module docstring)."""
    work = PrismDirectory(out)
    work.record_model(work.model_name(model_directory, create=True))
    model, tokenizer = load_model(model_directory)
    config = DistillConfig(epochs=epochs, learning_rate=2e-3, first_block=1)
    for name, seed in ((GATED, 0), (UNGATED, 1)):
        info = distill(model, tokenizer, _samples(), name, replace(config, seed=seed), progress=False)
        save_adapter(model, name, work.adapter(name), info["peft_config"], info)
    x = gate_features(model, tokenizer, QUERIES, [0], "last", work.gate_features, progress=False)[0]
    gate, _ = fit_gate(x, np.array([0, 1, 0, 1, 0, 1]), Split(np.arange(6), np.arange(6)), layer=0, position="last")
    gate.threshold = float(np.median(gate.probability(x)))  # half the queries routed
    gate.save(work.gate)
    vector = persona_shift(model, tokenizer, _samples(), 1, "min")
    # scaled up so that steering changes the random model's answers
    save_tensors(work.steering, {"vector": vector * 20}, {"kind": "persona-steering", "layer": 1, "n": 4})
    return work


def served_scores(model, tokenizer, gate, prompts, options, mode: str) -> tuple[list[list[float]], list[list[tuple]]]:
    """Each prompt's options scored by the toolkit (``score_choices``, summed) as ``prism serve`` scores an echoed
    context and continuation in ``mode`` (``base`` or ``prism``): in mode prism with the gated adapter (``model``
    carries it) where the gate routes the context and the option as one prompt. Also each option's (gate probability,
    routed)."""
    answers = [0] * len(prompts)
    base = score_choices(model, tokenizer, prompts, options, answers, progress=False)
    with active_adapter(model, GATED):
        adapted = score_choices(model, tokenizer, prompts, options, answers, progress=False)
    scores, routes = [], []
    for p, (prompt, texts) in enumerate(zip(prompts, options)):
        scores.append([])
        routes.append([])
        for o, text in enumerate(texts):
            ids = encode(tokenizer, prompt) + tokenizer(text, add_special_tokens=False)["input_ids"]
            with Routed(model, gate, adapter=GATED) as routed:
                model.original_model(input_ids=torch.tensor([ids]))
            routes[p].append(routed.decision(ids))
            scores[p].append((adapted if mode == "prism" and routes[p][o][1] else base)[p].logprobs[o])
    return scores, routes


@pytest.fixture(scope="session")
def tiny_model_directory(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    directory = tmp_path_factory.mktemp("tiny-serve-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_model_directory("default")[0]).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_prism(tiny_model_directory, tmp_path_factory) -> PrismDirectory:
    return make_prism_directory(tiny_model_directory, tmp_path_factory.mktemp("tiny-prism"))


def start_server(directory, *, without: tuple[str, ...] = (), **options) -> ServerThread:
    """A ``ServerThread`` over the trained ``directory`` (a fresh copy of its model), not started yet; ``without`` names
    files of ``PrismFiles`` left out (``steering``, ``ungated``, ``adapter``)."""
    model_name, files = served_files(directory)
    files = replace(files, **{name: None for name in without})
    model, tokenizer = load_model(model_name)
    return ServerThread(build_app(model, tokenizer, files, model_name=model_name, **options))


def client(server: ServerThread, api_key: str = "none") -> OpenAI:
    """The official client, pointed at ``server``, retrying nothing (so a 503 or a 500 shows)."""
    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def queries() -> list[str]:
    return list(QUERIES)


@pytest.fixture(scope="session")
def make_directory():
    """``make_prism_directory``: train and save a small PRISM directory for a model."""
    return make_prism_directory


@pytest.fixture(scope="session")
def server_over():
    """``start_server``: a ``ServerThread`` over a trained directory, with ``build_app``'s options."""
    return start_server


@pytest.fixture(scope="session")
def scores_as_served():
    """``served_scores``: the toolkit's scores of continuations, routed as the server routes an echo."""
    return served_scores


@pytest.fixture(scope="session")
def openai_client():
    """``client``: the official client for a running server."""
    return client


@pytest.fixture(scope="module")
def tiny_server(tiny_prism):
    with start_server(tiny_prism, batch_wait_ms=50) as server:
        yield server
