"""Shared fixtures: the real embedded model (loaded once) and tiny random models from configs.

Every test that uses the real embedded model (``smol``, ``smol_hf``, ``smol_directory``) is
marked ``slow``; ``pytest -m "not slow"`` runs the rest (tiny random models and pure functions)
and CI runs everything (times: docs/results.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers
from transformers import (
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from probes.core.models import load_model, resolve_model_directory

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


REAL_MODEL_FIXTURES = {"smol", "smol_hf", "smol_directory", "vllm_server", "vllm_prism"}


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct as (bridge, tokenizer)."""
    return load_model("default")


@pytest.fixture(scope="session")
def smol_directory() -> str:
    return resolve_model_directory("default")[0]


@pytest.fixture(scope="session")
def smol_hf(smol_directory):
    """A plain Hugging Face copy of the embedded model, not wrapped by any bridge."""
    model = transformers.AutoModelForCausalLM.from_pretrained(smol_directory, dtype=torch.float32)
    return model.eval()


def _vllm_or_skip() -> None:
    from interventions.measure.vllm_process import vllm_python
    from probes.core.errors import ToolkitError

    try:
        vllm_python()
    except ToolkitError as error:
        pytest.skip(f"no vLLM to test against: {error}")


@pytest.fixture(scope="session")
def vllm_prism(tmp_path_factory, smol_directory):
    """A trained PRISM directory on the embedded model (gate on block 0, adapters on blocks 1.., one epoch), whose
    adapters the session's vLLM server serves as LoRA modules."""
    _vllm_or_skip()
    from tests.prism.server.conftest import make_prism_directory

    return make_prism_directory(smol_directory, tmp_path_factory.mktemp("vllm-prism"), epochs=1)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, smol_directory, vllm_prism):
    """One vLLM server on the embedded model (float32, as the hooked model runs on a CPU) for the whole session, with
    ``vllm_prism``'s adapters as the LoRA modules ``prism`` and ``prism-ungated``; skipped when no interpreter runs
    vLLM (``bash .ci/setup-vllm`` builds ``.venv-vllm``)."""
    from interventions.measure.vllm_process import VllmProcess, VllmSettings
    from prism.persona_path import GATED, UNGATED

    modules = {"prism": str(vllm_prism.adapter(GATED)), "prism-ungated": str(vllm_prism.adapter(UNGATED))}
    process = VllmProcess(
        smol_directory,
        served_name="SmolLM2-135M-Instruct",
        settings=VllmSettings(dtype="float32", max_model_len=2048, lora_modules=modules),
        log=Path(tempfile.gettempdir()) / "prism-vllm-tests.log",
    )  # kept after the session
    with process:
        yield process


def _save_tiny(directory, model, tokenizer_source: str) -> str:
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_llama_directory(tmp_path_factory, smol_directory) -> str:
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
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config), smol_directory)


@pytest.fixture(scope="session")
def tiny_gemma_directory(tmp_path_factory, smol_directory) -> str:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=32,
    )
    model = Gemma3ForCausalLM(config)
    model.config.architectures = None  # as in a GGUF config: the loader must infer it
    return _save_tiny(tmp_path_factory.mktemp("tiny-gemma"), model, smol_directory)


@pytest.fixture(scope="session")
def tiny_gpt2_directory(tmp_path_factory, smol_directory) -> str:
    """A GPT-2-shaped model: LayerNorm with biases, learned positions, a final ``ln_f`` instead of ``model.norm``."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=49152, n_embd=64, n_layer=3, n_head=4, n_positions=512, architectures=["GPT2LMHeadModel"]
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config), smol_directory)


@pytest.fixture(scope="session")
def tiny(tiny_llama_directory):
    return load_model(tiny_llama_directory)
