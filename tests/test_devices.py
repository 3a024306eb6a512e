"""Device and precision on a CPU-only machine: every core path under ``OffDeviceGuard`` (a tensor
made off the model's device fails as it would on a GPU), and in bfloat16 with finite float32
results.

The paths: record_activations, score_choices, generate, AddDirection, AblateDirection,
PatchActivations, logit_lens, logits_at, Routed with a gate (adapter, steering, given decisions)
and one distillation epoch. Device maps (``load_model(device_map=...)``) on the CPU, and tensors that meet an
activation on another device (the meta device stands in for a second GPU).
"""

import math

import numpy as np
import pytest
import torch

from interventions.hooks import AblateDirection, AddDirection, PatchActivations
from interventions.measure.generation import generate
from interventions.measure.scoring import score_choices
from prism.distill import DistillConfig, distill
from prism.gate import Gate
from prism.routing import Routed
from prism.samples import Sample
from probes.core.devices import model_device, precision
from probes.core.errors import ToolkitError
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render
from probes.readouts import capture_residuals, logit_lens, logits_at
from probes.recording import record_activations
from tests.off_device import OffDevice, OffDeviceGuard

QUERIES = ["What is the capital of France?", "Name the largest planet in our solar system, please."]
SAMPLES = [Sample("m0", "math", "What is 1 plus 2?", "It is.", "The sum is 3.", True, True, (1.0, 1.0))]


def _setup(model, tokenizer):
    prompts = [render(tokenizer, query, Condition("none")) for query in QUERIES]
    ids = [encode(tokenizer, prompt) for prompt in prompts]
    width = min(map(len, ids))
    tokens = torch.tensor([sequence[:width] for sequence in ids])
    gate = Gate("logistic", 0, "last", {"weight": torch.randn(model.cfg.d_model), "bias": torch.tensor(0.0)}, 0.5)
    return prompts, ids, tokens, gate


def _paths(model, tokenizer, tmp_path):
    """name -> a call running one core path; each returns tensors or numbers to check."""
    prompts, ids, tokens, gate = _setup(model, tokenizer)
    direction = torch.randn(model.cfg.d_model)
    source = capture_residuals(model, tokens, [1])
    width = tokens.shape[1]

    def forward(intervention):
        with intervention, torch.inference_mode():
            return model(tokens.to(model_device(model)))

    def routed(**kwargs):
        with Routed(model, gate, **kwargs) as routing:
            generate(model, tokenizer, prompts, max_new_tokens=2, progress=False)
        return [probability for probability, _ in routing.decisions.values()]

    def record(positions):
        store = record_activations(
            model,
            tokenizer,
            prompts,
            tmp_path / positions,
            hooks=["blocks.1.hook_out"],
            positions=positions,
            progress=False,
        )
        return store.load("blocks.1.hook_out")

    return {
        "record last": lambda: record("last"),
        "record mean": lambda: record("mean"),
        "score": lambda: [
            r.margin
            for r in score_choices(
                model, tokenizer, prompts, [["Paris", "Rome"], ["Jupiter", "Mars"]], [0, 0], progress=False
            )
        ],
        "generate": lambda: generate(model, tokenizer, prompts, max_new_tokens=2, progress=False),
        "add": lambda: forward(AddDirection(model, direction, scale=1.0, layers=[1])),
        "ablate": lambda: forward(AblateDirection(model, direction, layers=[1], baseline={1: 0.5})),
        "patch": lambda: forward(PatchActivations(model, source, [[(0, 0), (1, 1)], [(2, 2)]])),
        "logit_lens": lambda: logit_lens(model, tokens, [width - 1] * 2, [1, 2]),
        "logits_at": lambda: logits_at(model, tokens, [width - 1, width - 2]),
        "routed steering": lambda: routed(steering=(1, direction)),
        "routed given": lambda: routed(steering=(1, direction), decisions={tuple(sequence): True for sequence in ids}),
        "distill": lambda: distill(model, tokenizer, SAMPLES, "prism", DistillConfig(epochs=1), progress=False)[
            "losses"
        ],
        "routed adapter": lambda: routed(adapter="prism"),
    }


NAMES = [
    "record last",
    "record mean",
    "score",
    "generate",
    "add",
    "ablate",
    "patch",
    "logit_lens",
    "logits_at",
    "routed steering",
    "routed given",
    "distill",
    "routed adapter",
]


@pytest.fixture(scope="module")
def tiny_fresh(tiny_llama_directory):
    torch.manual_seed(0)
    return load_model(tiny_llama_directory)


@pytest.fixture(scope="module")
def tiny_bf16(tiny_llama_directory):
    torch.manual_seed(0)
    return load_model(tiny_llama_directory, dtype="bfloat16")


def test_no_core_path_makes_a_tensor_off_the_models_device(tiny_fresh, tmp_path):
    model, tokenizer = tiny_fresh
    paths = _paths(model, tokenizer, tmp_path)
    assert list(paths) == NAMES
    failures = {}
    for name in NAMES:
        try:
            with OffDeviceGuard(model):
                paths[name]()
        except OffDevice as error:
            failures[name] = str(error)
    assert not failures, failures


def test_the_guard_catches_a_host_tensor_meeting_an_activation(tiny_fresh):
    model, _ = tiny_fresh
    with OffDeviceGuard(model), pytest.raises(OffDevice, match="host tensor"):
        model(torch.tensor([[1, 2, 3]]))  # tokens never moved to the model's device
    with OffDeviceGuard(model):
        model(torch.tensor([[1, 2, 3]], device=model_device(model)))


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.float32 and bool(torch.isfinite(value).all()) if value.is_floating_point() else True
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def test_every_core_path_runs_in_bfloat16_with_finite_float32_results(tiny_bf16, tmp_path):
    model, tokenizer = tiny_bf16
    assert next(model.parameters()).dtype == torch.bfloat16
    paths = _paths(model, tokenizer, tmp_path)
    for name in NAMES:
        if name in ("add", "ablate", "patch"):
            assert torch.isfinite(paths[name]().float()).all(), name  # raw model logits stay in the model's dtype
        else:
            assert _finite(paths[name]()), name


def test_bfloat16_margins_are_close_to_float32(tiny_fresh, tiny_bf16):
    """Tolerance 0.05 nats: the tiny random model's margins are a few hundredths of a nat apart,
    bfloat16 keeps about 3 significant digits."""
    margins = []
    for model, tokenizer in (tiny_fresh, tiny_bf16):
        prompts, _, _, _ = _setup(model, tokenizer)
        results = score_choices(
            model, tokenizer, prompts, [["Paris", "Rome"], ["Jupiter", "Mars"]], [0, 0], progress=False
        )
        margins.append(np.array([result.margin for result in results]))
    assert np.isfinite(margins[0]).all() and np.isfinite(margins[1]).all()
    assert np.abs(margins[0] - margins[1]).max() < 0.05


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"device": "tpu"}, "unknown device"),
        ({"device": "cuda:x"}, "unknown device"),
        ({"dtype": "int8"}, "unknown dtype"),
        ({"dtype": torch.int64}, "unsupported dtype"),
    ],
)
def test_unknown_devices_and_dtypes_fail_in_one_line(tiny_llama_directory, bad, message):
    with pytest.raises(ToolkitError, match=message) as error:
        load_model(tiny_llama_directory, **bad)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_an_unavailable_device_fails_in_one_line(tiny_llama_directory):
    with pytest.raises(ToolkitError, match="not available"):
        load_model(tiny_llama_directory, device="cuda")


# --- device maps: accelerate's placement through from_pretrained; on this CPU-only machine every map puts every
# block on the CPU, so these check the code path and the checks, not a split over several GPUs.


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto", "per-module"])
def test_device_maps_load_through_the_same_path_and_are_recorded(tiny_llama_directory, tiny_fresh, device_map):
    reference, _ = tiny_fresh
    if device_map == "per-module":
        device_map = {
            "model.embed_tokens": "cpu",
            "model.rotary_emb": "cpu",
            "model.norm": "cpu",
            "lm_head": "cpu",
            **{f"model.layers.{i}": "cpu" for i in range(reference.cfg.n_layers)},
        }
    model, _ = load_model(tiny_llama_directory, device_map=device_map)
    recorded = precision(model)
    assert recorded["device"] == "cpu" and recorded["dtype"] == "float32" and recorded["attention"] == "sdpa"
    assert recorded["device_map"] == device_map
    tokens = torch.tensor([[1, 57, 300, 4000, 12, 9, 77]])
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), reference(tokens), atol=1e-5, rtol=1e-5)
    assert "device_map" not in precision(reference)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device_map": "everywhere"}, "unknown device map 'everywhere'"),
        ({"device_map": "auto", "device": "cpu"}, "not both"),
        ({"device_map": {}}, "non-empty"),
        ({"device_map": {"": "tpu"}}, "unknown device 'tpu'"),
    ],
)
def test_bad_device_maps_fail_in_one_line(tiny_llama_directory, kwargs, message):
    with pytest.raises(ToolkitError, match=message) as error:
        load_model(tiny_llama_directory, **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a fourth GPU")
def test_a_device_map_naming_a_missing_gpu_fails_in_one_line(tiny_llama_directory):
    for device_map in ({"": 3}, {"": "cuda:3"}):
        with pytest.raises(ToolkitError, match="not available"):
            load_model(tiny_llama_directory, device_map=device_map)


def test_tensors_meeting_an_activation_follow_it_to_its_device(tiny_fresh):
    """Blocks on several devices, stood in for by the meta device: an activation on it meets the interventions'
    vectors, masks, sources and index tensors, and the routes decided on another block's device; an op mixing meta
    with a CPU tensor fails as CUDA would across GPUs."""
    model, _ = tiny_fresh
    d = model.cfg.d_model
    activation = torch.zeros(2, 5, d, device="meta")
    source = {1: torch.randn(2, 5, d)}
    for intervention in (
        AddDirection(model, torch.randn(d), scale=1.0, layers=[1], positions=[-1]),
        AblateDirection(model, torch.randn(d), layers=[1], baseline={1: 0.5}),
        PatchActivations(model, source, [[(0, 0), (1, 1)], [(2, 2)]]),
    ):
        intervention._tracker._see(None, (), {"input_ids": torch.zeros(2, 5, dtype=torch.long)})  # the pass's inputs
        edited = intervention._hook("blocks.1.hook_out", 1)(activation, None)
        assert edited.device.type == "meta" and edited.shape == activation.shape
    gate = Gate("logistic", 0, "last", {"weight": torch.randn(d), "bias": torch.tensor(0.0)}, 0.5)
    routed = Routed(model, gate, steering=(1, torch.randn(d)))
    routed._routes = torch.tensor([1.0, 0.0])  # decided on the gate block's device
    assert routed._steer(None, (), activation).device.type == "meta"
    assert routed._scale_update(None, (), torch.zeros(2, 5, 8, device="meta")).device.type == "meta"
    with pytest.raises(RuntimeError, match="device"):
        activation + torch.ones(d)  # what the checks above rely on
