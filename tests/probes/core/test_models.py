import http.server
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from transformers import AutoModelForCausalLM

from prism.cli import main
from probes.core.assets import cache_dir
from probes.core.errors import ToolkitError
from probes.core.hub import HUB_PROBE_SECONDS, _hub_state
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
        (
            "someone/no-such-model-xyz",
            "'someone/no-such-model-xyz' is not in the local Hugging Face cache and HF_HUB_OFFLINE",
        ),
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


# --- hub ids without network: one line at once, or the local cache alone -------------------------


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """This process as one started without HF_HUB_OFFLINE, with an empty hub cache; ``hub(endpoint)`` names the hub.
    Everything, offline mode included, is as before after the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # whatever the toolkit sets, restored afterwards
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _hub_state.cache_clear()
    yield lambda endpoint: monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    _hub_state.cache_clear()


@pytest.fixture()
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unknown_hub_id_fails_at_once_in_one_line_when_the_hub_cannot_be_reached(hub, closed_port, tmp_path, capsys):
    hub(f"http://127.0.0.1:{closed_port}")
    start = time.perf_counter()
    assert (
        main(
            ["evaluate", "--dataset", "mtbench", "--model", "someone/no-such-model", "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert time.perf_counter() - start < HUB_PROBE_SECONDS + 2  # not a minute of retries
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        f"prism evaluate: error: model 'someone/no-such-model' is not in the local Hugging Face cache and "
        f"http://127.0.0.1:{closed_port} cannot be reached: connect to the network (or set HF_ENDPOINT to a mirror); "
        "or use 'default'"
    ), errors
    assert hub_constants.is_offline_mode() and not (tmp_path / "r.json").exists()  # later lookups: the cache at once


def test_a_hub_that_never_answers_is_given_up_on_after_a_few_seconds(hub):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hub(f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(ToolkitError, match="cannot be reached"):
            resolve_model_directory("someone/no-such-model")
        assert time.perf_counter() - start < HUB_PROBE_SECONDS + 1


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_cannot_be_reached(hub, closed_port, tiny_llama_directory):
    snapshot = Path(hub_constants.HF_HUB_CACHE) / "models--someone--tiny" / "snapshots" / "0123abc"
    shutil.copytree(tiny_llama_directory, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    hub(f"http://127.0.0.1:{closed_port}")
    start = time.perf_counter()
    model, _ = load_model("someone/tiny")
    assert model.cfg.model_name == "someone/tiny" and time.perf_counter() - start < 20


def test_a_hub_that_answers_at_all_is_asked_for_the_model(hub):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        hub(f"http://127.0.0.1:{server.server_address[1]}")
        assert resolve_model_directory("someone/no-such-model") == ("someone/no-such-model", "someone/no-such-model")
        server.shutdown()
    assert not hub_constants.is_offline_mode()
