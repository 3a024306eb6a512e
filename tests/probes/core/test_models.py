import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from probes.core.assets import cache_dir
from probes.core.errors import ToolkitError
from probes.core.models import load_model, model_slug, resolve_model_directory
from probes.core.prompts import Condition, encode, render

RESIDUAL = re.compile(r"^blocks\.\d+\.hook_out$")


def _residuals(bridge, tokens):
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: bool(RESIDUAL.match(name)))
    return [cache[f"blocks.{layer}.hook_out"] for layer in range(bridge.cfg.n_layers)]


def test_embedded_model_residuals_match_hugging_face_hidden_states(smol, smol_hf):
    bridge, tokenizer = smol
    prompt = render(tokenizer, "Name three rivers in Europe.", Condition("stem", "short", "system"))
    tokens = torch.tensor([encode(tokenizer, prompt)])
    with torch.inference_mode():
        hidden = smol_hf(tokens, output_hidden_states=True).hidden_states
    residuals = _residuals(bridge, tokens)
    assert len(residuals) == 30
    # HF's last hidden state is taken after the final norm, so compare blocks 0..28.
    for layer in range(29):
        torch.testing.assert_close(residuals[layer], hidden[layer + 1], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("directory_fixture", ["tiny_llama_directory", "tiny_gemma_directory"])
def test_tiny_models_from_configs_load_through_the_same_path(request, directory_fixture):
    directory = request.getfixturevalue(directory_fixture)
    bridge, tokenizer = load_model(directory)
    reference = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    tokens = torch.tensor([[1, 57, 300, 4000, 12, 9, 77]])
    with torch.inference_mode():
        hidden = reference(tokens, output_hidden_states=True).hidden_states
    residuals = _residuals(bridge, tokens)
    for layer in range(bridge.cfg.n_layers - 1):
        torch.testing.assert_close(residuals[layer], hidden[layer + 1], atol=1e-4, rtol=1e-4)


def test_default_model_is_cached_as_safetensors(smol):
    directory, label = resolve_model_directory("default")
    assert label == "SmolLM2-135M-Instruct"
    assert (cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert directory.startswith(str(cache_dir()))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", "empty model name"),
        ("not a model!", "unknown model 'not a model!'"),
        ("/no/such/file.gguf", "no GGUF file"),
        ("someone/no-such-model-xyz", "could not load model"),
    ],
)
def test_bad_model_names_give_one_line_listing_valid_forms(name, expected):
    with pytest.raises(ToolkitError) as caught:
        load_model(name)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    if expected != "no GGUF file":
        assert "'default'" in message and ".gguf" in message


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ToolkitError, match="without config.json"):
        load_model(str(tmp_path))


def test_a_model_name_never_becomes_a_path_outside_the_output_directory(tmp_path):
    for name in ("..", ".", "../..", str(tmp_path)):
        slug = model_slug(name)
        assert slug not in ("", ".", "..") and "/" not in slug
    assert model_slug("HuggingFaceTB/SmolLM2-360M-Instruct") == "huggingfacetb-smollm2-360m-instruct"
