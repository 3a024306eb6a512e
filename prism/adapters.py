"""LoRA adapters on the bridged model, in the peft format: attach, switch, save and load.

Adapters are switched only through ``active_adapter`` (a context manager that always restores
the previous state); attaching and loading leave every adapter off. Saved adapters are
``adapter_config.json`` + ``adapter_model.safetensors`` with module names as in the plain
Hugging Face model, so ``peft.PeftModel.from_pretrained`` loads them onto the plain model too. The
config names the base model (``base_model_name_or_path``: the directory or hub id the model was
read from; the embedded model's is its dense copy in the cache) and the task (``CAUSAL_LM``), so
``peft.AutoPeftModelForCausalLM.from_pretrained(directory)`` loads base and adapter in one call.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence
from weakref import WeakKeyDictionary

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probes.core.errors import ToolkitError
from probes.core.files import atomic_path, write_json, write_record
from probes.core.internals import plain_module_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "active_adapter",
    "adapter_layers",
    "attach_adapter",
    "base_model_name",
    "json_ready",
    "load_adapter",
    "lora_modules",
    "save_adapter",
]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRAINING_FILE = "adapter_model.safetensors", "adapter_config.json", "training.json"
PEFT_PREFIX = "base_model.model."
TASK_TYPE = "CAUSAL_LM"


def lora_modules(hf_model: torch.nn.Module, blocks: Sequence[int]) -> dict[str, str]:
    """plain Hugging Face module name -> name in ``hf_model`` of every LoRA target in ``blocks``."""
    wanted = re.compile(rf"^model\.layers\.(\d+)\.(?:self_attn|mlp)\.({'|'.join(LORA_TARGETS)})$")
    found = {}
    for name, module in hf_model.named_modules():
        plain = plain_module_name(name)
        match = wanted.match(plain)
        if match and int(match.group(1)) in blocks and isinstance(module, (torch.nn.Linear, LoraLayer)):
            found[plain] = name
    if not found:
        raise ToolkitError("no LoRA target modules (q/k/v/o/gate/up/down projections) found in this model")
    return found


def attach_adapter(
    model: TransformerBridge, name: str, *, rank: int = 16, alpha: int = 32, first_block: int = 1, seed: int = 0
) -> LoraConfig:
    """Add an untrained LoRA adapter ``name`` to the bridged model, switched off.

    Args:
        model: the bridged model; its base weights are frozen, the adapter's made trainable.
        name: the adapter's name, not one the model already carries.
        rank, alpha: the LoRA rank r and scaling alpha (the update is scaled by alpha / r).
        first_block: blocks ``first_block``..L-1 get the adapter.
        seed: the adapter's initialisation seed.

    Returns:
        the adapter's peft config, modules named as in the plain Hugging Face model.
    """
    n_layers = model.cfg.n_layers
    if not 0 <= first_block < n_layers:
        raise ToolkitError(f"the adapter's first block {first_block} is outside 0..{n_layers - 1}")
    blocks = list(range(first_block, n_layers))
    hf = model.original_model
    targets = lora_modules(hf, blocks)
    torch.manual_seed(seed)
    internal = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=sorted(targets.values()))
    _inject(internal, hf, name)
    for parameter in hf.parameters():
        parameter.requires_grad_(False)
    for module in adapter_layers(model):
        if name in module.lora_A:
            module.lora_A[name].requires_grad_(True)
            module.lora_B[name].requires_grad_(True)
    _switch(model, None)  # attaching never switches an adapter on
    # the config users see names modules as in the plain model
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        layers_to_transform=blocks,
        layers_pattern="layers",
    )


def _inject(config: LoraConfig, hf_model: torch.nn.Module, name: str) -> None:
    if any(name in module.lora_A for module in _lora_layers(hf_model).values()):
        raise ToolkitError(f"the model already carries an adapter named {name!r}: load it under another name")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # several adapters are intended
        inject_adapter_in_model(config, hf_model, adapter_name=name)
    _FOUND.pop(hf_model, None)  # the model has new LoRA layers: look again


_FOUND: WeakKeyDictionary = WeakKeyDictionary()  # Hugging Face model -> its LoRA layers by module name


def named_adapter_layers(model: TransformerBridge) -> dict[str, LoraLayer]:
    """Every LoRA layer of the bridged model by its module name; found once per model (walking its modules takes
    tens of milliseconds) and again after ``attach_adapter`` or ``load_adapter`` adds layers."""
    return _lora_layers(model.original_model)


def _lora_layers(hf_model: torch.nn.Module) -> dict[str, LoraLayer]:
    if hf_model not in _FOUND:
        _FOUND[hf_model] = {name: module for name, module in hf_model.named_modules() if isinstance(module, LoraLayer)}
    return _FOUND[hf_model]


def adapter_layers(model: TransformerBridge) -> list[LoraLayer]:
    """Every LoRA layer of the bridged model."""
    return list(named_adapter_layers(model).values())


@contextmanager
def active_adapter(model: TransformerBridge, name: str | None) -> Iterator[None]:
    """Within the block, ``name`` is the only active adapter (``None``: every adapter off).

    The only way the toolkit switches adapters: on the way out, also when the block raises, every
    adapter layer is put back as it was (active adapters, on or off, trainable weights).

    Args:
        model: the bridged model carrying the adapters.
        name: the adapter to switch on, or None for the plain model.

    Yields:
        None: use it as ``with active_adapter(model, name):``.
    """
    layers = adapter_layers(model)
    saved = [
        (layer.active_adapter, layer.disable_adapters, [(p, p.requires_grad) for p in layer.parameters()])
        for layer in layers
    ]
    _switch(model, name)
    try:
        yield
    finally:
        for layer, (active, disabled, trainable) in zip(layers, saved):
            layer.set_adapter(active)
            layer.enable_adapters(not disabled)
            for parameter, flag in trainable:
                parameter.requires_grad_(flag)


def _switch(model: TransformerBridge, name: str | None) -> None:
    """Make ``name`` the only active adapter, or turn every adapter off (``None``)."""
    for module in adapter_layers(model):
        if name is None or name not in module.lora_A:
            module.enable_adapters(False)
        else:
            module.enable_adapters(True)
            module.set_adapter(name)


def save_adapter(
    model: TransformerBridge, name: str, directory: str | Path, peft_config: dict, training: dict | None = None
) -> Path:
    """Write adapter ``name`` in the peft format, module names as in the plain model.

    Args:
        model: the bridged model carrying the adapter.
        name: the adapter's name.
        directory: the folder to write (created): ``adapter_model.safetensors`` and ``adapter_config.json``.
        peft_config: the adapter's peft config (``distill``'s ``peft_config``); the saved copy names the base model
            (``base_model_name``) and the task (``CAUSAL_LM``).
        training: a JSON-serialisable training record to save as ``training.json``, or None.

    Returns:
        ``directory``, as a ``Path``.

    Raises:
        ToolkitError: the model carries no adapter ``name``.
    """
    directory = Path(directory)
    state = get_peft_model_state_dict(model.original_model, adapter_name=name)
    if not state:
        raise ToolkitError(f"the model carries no adapter {name!r} to save")
    plain = {PEFT_PREFIX + plain_module_name(key): value.detach().contiguous() for key, value in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_WEIGHTS) as partial:
        save_file(plain, str(partial), metadata={"format": "pt"})
    config = json_ready(peft_config)
    config.update(base_model_name_or_path=base_model_name(model), task_type=config.get("task_type") or TASK_TYPE)
    write_json(directory / ADAPTER_CONFIG, config)
    if training is not None:
        write_record(directory / TRAINING_FILE, training)
    return directory


def base_model_name(model: TransformerBridge) -> str:
    """Where ``from_pretrained`` finds the bridged model's weights: its directory (absolute) or its hub id.

    Args:
        model: a bridged model from ``load_model`` (for the embedded model and GGUF files: the dense copy in the cache).

    Returns:
        the absolute path of the directory it was read from, or the hub id it was read by.
    """
    source = model.original_model.config.name_or_path
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def load_adapter(model: TransformerBridge, name: str, directory: str | Path) -> dict:
    """Attach a saved adapter to the bridged model as ``name``, switched off (``active_adapter`` turns it on).

    Args:
        model: the bridged model it was trained on (every base weight is left frozen).
        name: the name to attach it under, not one the model already carries.
        directory: the adapter's folder (written by ``save_adapter``, or any peft adapter of this layout).

    Returns:
        its peft config, as saved (``adapter_config.json``).

    Raises:
        ToolkitError: no adapter files in ``directory``, an unreadable config or weights file, an adapter of another
            model (blocks or modules this model lacks, weights missing or of other shapes), or a ``name`` in use.
    """
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise ToolkitError(
            f"no adapter at {directory} (expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}): train one with `prism train`"
        )
    try:
        saved = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        weights = load_file(str(directory / ADAPTER_WEIGHTS))
        blocks = [int(block) for block in saved["layers_to_transform"]]
        rank, alpha = int(saved["r"]), int(saved["lora_alpha"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ToolkitError(f"{directory / ADAPTER_CONFIG} is not a readable adapter config ({error})") from error
    except (SafetensorError, OSError) as error:
        raise ToolkitError(f"{directory / ADAPTER_WEIGHTS} is not a readable safetensors file ({error})") from error
    if max(blocks, default=-1) >= model.cfg.n_layers:
        raise ToolkitError(
            f"the adapter at {directory} adapts block {max(blocks)}, but this model has {model.cfg.n_layers} blocks"
        )
    targets = lora_modules(model.original_model, blocks)
    internal = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=sorted(targets.values()))
    _inject(internal, model.original_model, name)
    state = {}
    for key, value in weights.items():
        module, _, leaf = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if module not in targets:
            raise ToolkitError(
                f"{directory} holds weights for {module!r}, which this model does not have: it was trained on "
                "another model"
            )
        state[f"{targets[module]}.lora_{leaf}"] = value
    expected = {key for key in get_peft_model_state_dict(model.original_model, adapter_name=name)}
    if set(state) != expected:
        missing = sorted(expected - set(state))
        raise ToolkitError(
            f"{directory} does not match this model: {len(missing)} adapter weights missing (e.g. {missing[:1]})"
        )
    try:
        set_peft_model_state_dict(model.original_model, state, adapter_name=name)
    except RuntimeError as error:
        raise ToolkitError(f"{directory} does not match this model ({str(error).splitlines()[0][:160]})") from error
    for parameter in model.original_model.parameters():
        parameter.requires_grad_(False)
    _switch(model, None)  # loading never switches an adapter on
    return saved


def json_ready(payload: dict) -> dict:
    """``payload`` as plain JSON values (a peft config holds sets and enums)."""
    return json.loads(
        json.dumps(payload, default=lambda value: sorted(value) if isinstance(value, set) else str(value))
    )
