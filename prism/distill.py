"""Self-distillation of a persona into a LoRA adapter (PRISM stage 5), with peft.

The teacher is the base model WITH the matched persona in its system prompt; the student is
the same model WITHOUT it, plus a LoRA adapter on blocks ``first_block``..L-1 (by default every
block after the gate's, so the gate reads the same activations whether or not the adapter is
on). On each bootstrapped answer the student's next-token distributions are pulled towards the
teacher's: KL on the teacher's top-k logits (k=64), both renormalised over those tokens, at
temperature T=2, times T^2. Teacher targets are computed once, with the adapter off.

Adapters are saved in the peft format (``adapter_config.json`` + ``adapter_model.safetensors``,
module names as in the plain Hugging Face model), so ``peft.PeftModel.from_pretrained`` loads
them onto the plain model too.

The module is longer than 300 lines only because of its API docstrings.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from prism.bootstrap import Sample
from probes.core.errors import ToolkitError
from probes.core.files import atomic_path, write_json
from probes.core.prompts import Condition, encode, render

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WRAPPED = "._original_component"  # how the TransformerLens bridge nests the modules it wraps
ADAPTER_WEIGHTS, ADAPTER_CONFIG, TRAINING_FILE = "adapter_model.safetensors", "adapter_config.json", "training.json"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class DistillConfig:
    """LoRA and training settings of the self-distillation.

    Args:
        rank, alpha: the LoRA rank r and scaling alpha (the update is scaled by alpha / r).
        first_block: the first adapted block; blocks ``first_block``..L-1 get the adapter (``prism train`` sets it
            to the block after the gate's).
        temperature: the softening temperature T of teacher and student (the loss is multiplied by T^2).
        top_k: the teacher's top-k tokens per position the KL is computed over (both renormalised over them).
        learning_rate: AdamW's learning rate.
        epochs: passes over the samples.
        batch_size: samples per optimiser step.
        persona_length: the teacher persona's text length (``min``, ``short`` or ``long``).
        seed: the adapter's initialisation and the shuffling seed.
    """

    rank: int = 16
    alpha: int = 32
    first_block: int = 1
    temperature: float = 2.0
    top_k: int = 64
    learning_rate: float = 1e-3  # the paper: 2e-4 over 600 queries; a few dozen need larger steps
    epochs: int = 2
    batch_size: int = 4
    persona_length: str = "min"
    seed: int = 0


def lora_modules(hf_model: torch.nn.Module, blocks: Sequence[int]) -> dict[str, str]:
    """plain Hugging Face module name -> name in ``hf_model`` of every LoRA target in ``blocks``."""
    wanted = re.compile(rf"^model\.layers\.(\d+)\.(?:self_attn|mlp)\.({'|'.join(LORA_TARGETS)})$")
    found = {}
    for name, module in hf_model.named_modules():
        plain = name.replace(WRAPPED, "")
        match = wanted.match(plain)
        if match and int(match.group(1)) in blocks and isinstance(module, (torch.nn.Linear, LoraLayer)):
            found[plain] = name
    if not found:
        raise ToolkitError("no LoRA target modules (q/k/v/o/gate/up/down projections) found in this model")
    return found


def attach_adapter(model, name: str, config: DistillConfig) -> LoraConfig:
    """Add an untrained LoRA adapter ``name`` to the bridged model (blocks first_block..L-1)."""
    n_layers = model.cfg.n_layers
    if not 0 <= config.first_block < n_layers:
        raise ToolkitError(f"the adapter's first block {config.first_block} is outside 0..{n_layers - 1}")
    blocks = list(range(config.first_block, n_layers))
    hf = model.original_model
    targets = lora_modules(hf, blocks)
    torch.manual_seed(config.seed)
    internal = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=sorted(targets.values()))
    _inject(internal, hf, name)
    for parameter in hf.parameters():
        parameter.requires_grad_(False)
    for module in adapter_layers(model):
        if name in module.lora_A:
            module.lora_A[name].requires_grad_(True)
            module.lora_B[name].requires_grad_(True)
    _switch(model, None)  # attaching never switches an adapter on
    # the config users see names modules as in the plain model
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      layers_to_transform=blocks, layers_pattern="layers")


def _inject(config: LoraConfig, hf_model: torch.nn.Module, name: str) -> None:
    if any(name in module.lora_A for module in hf_model.modules() if isinstance(module, LoraLayer)):
        raise ToolkitError(f"the model already carries an adapter named {name!r}: load it under another name")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # several adapters are intended
        inject_adapter_in_model(config, hf_model, adapter_name=name)


def adapter_layers(model) -> list[LoraLayer]:
    return [module for module in model.original_model.modules() if isinstance(module, LoraLayer)]


@contextmanager
def active_adapter(model, name: str | None) -> Iterator[None]:
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
    saved = [(layer.active_adapter, layer.disable_adapters, [(p, p.requires_grad) for p in layer.parameters()])
             for layer in layers]
    _switch(model, name)
    try:
        yield
    finally:
        for layer, (active, disabled, trainable) in zip(layers, saved):
            layer.set_adapter(active)
            layer.enable_adapters(not disabled)
            for parameter, flag in trainable:
                parameter.requires_grad_(flag)


def _switch(model, name: str | None) -> None:
    """Make ``name`` the only active adapter, or turn every adapter off (``None``)."""
    for module in adapter_layers(model):
        if name is None or name not in module.lora_A:
            module.enable_adapters(False)
        else:
            module.enable_adapters(True)
            module.set_adapter(name)


def distill(model, tokenizer, samples: Sequence[Sample], name: str, config: DistillConfig = DistillConfig(), *,
            progress: bool = True) -> dict:
    """Attach adapter ``name`` and train it on ``samples``.

    Args:
        model, tokenizer: the bridged model and its tokenizer.
        samples: bootstrapped samples; the persona's answer is distilled into the plain prompt.
        name: the new adapter's name (``prism`` gated, ``sft`` ungated).
        config: LoRA and training settings.
        progress: show progress bars.

    Returns:
        the loss curve and settings (``name``, ``n_samples``, ``steps``, ``losses``, ``config`` and ``peft_config``
        for ``save_adapter``); the adapter is left attached and switched off.

    Raises:
        ToolkitError: no samples, every persona answer empty, a ``first_block`` outside the model, an adapter
            ``name`` the model already carries, or an unknown persona or length in a sample.
    """
    if not samples:
        raise ToolkitError(f"no samples to distil adapter {name!r} from: the bootstrap gave no label-1 queries")
    peft_config = attach_adapter(model, name, config)
    pairs = [_pair(tokenizer, sample, config) for sample in samples]
    pairs = [pair for pair in pairs if pair is not None]
    if not pairs:
        raise ToolkitError("every bootstrapped answer is empty: nothing to distil")
    with active_adapter(model, None):
        targets = [_teacher_targets(model, pair, config) for pair in tqdm(pairs, desc="teacher", unit="answer", disable=not progress)]
    # on, the adapter's weights (only them) are trainable; after the block, as attach_adapter left them
    with active_adapter(model, name):
        losses = _train(model, name, pairs, targets, config, progress)
    return {"name": name, "n_samples": len(pairs), "steps": len(losses), "losses": losses, "config": asdict(config),
            "peft_config": _jsonable(peft_config.to_dict())}


def _train(model, name: str, pairs, targets, config: DistillConfig, progress: bool) -> list[float]:
    """The distillation steps on the adapter's weights (the trainable ones); returns the losses."""
    parameters = [p for p in model.original_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate)
    order = list(range(len(pairs)))
    rng = random.Random(config.seed)
    losses = []
    steps = config.epochs * math.ceil(len(pairs) / config.batch_size)
    model.original_model.train(False)  # no dropout anywhere; gradients still flow
    with tqdm(total=steps, desc=f"distilling {name}", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                loss = sum(_kl(model, pairs[i], targets[i], config) for i in batch) / len(batch)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def _jsonable(payload: dict) -> dict:
    return json.loads(json.dumps(payload, default=lambda value: sorted(value) if isinstance(value, set) else str(value)))


def distillation_loss(model, tokenizer, sample: Sample, config: DistillConfig = DistillConfig()) -> float:
    """The KL the student (current adapter state) has left to close on one sample."""
    pair = _pair(tokenizer, sample, config)
    if pair is None:
        raise ToolkitError("the sample's persona answer is empty")
    with active_adapter(model, None):
        target = _teacher_targets(model, pair, config)
    with torch.no_grad():
        return float(_kl(model, pair, target, config))


def _pair(tokenizer, sample: Sample, config: DistillConfig):
    """(teacher ids, student ids, answer length): the same answer after each prompt."""
    answer = tokenizer(sample.answer_persona, add_special_tokens=False)["input_ids"]
    if not answer:
        return None
    teacher = encode(tokenizer, render(tokenizer, sample.query, Condition(sample.persona, config.persona_length, "system")))
    student = encode(tokenizer, render(tokenizer, sample.query, Condition("none")))
    return teacher + answer, student + answer, len(answer)


def _answer_logits(model, ids: list[int], n_answer: int) -> torch.Tensor:
    """Logits at the positions that predict the answer's tokens: [n_answer, vocab]."""
    hf = model.original_model
    hidden = hf.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    start = len(ids) - n_answer - 1
    return hf.lm_head(hidden[start:start + n_answer]).float()


@torch.no_grad()
def _teacher_targets(model, pair, config: DistillConfig) -> tuple[torch.Tensor, torch.Tensor]:
    teacher_ids, _, n_answer = pair
    logits = _answer_logits(model, teacher_ids, n_answer)
    values, indices = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1)
    return (values / config.temperature).log_softmax(-1), indices


def _kl(model, pair, target, config: DistillConfig) -> torch.Tensor:
    _, student_ids, n_answer = pair
    teacher_logprobs, indices = target
    student = _answer_logits(model, student_ids, n_answer).gather(-1, indices)
    student_logprobs = (student / config.temperature).log_softmax(-1)
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(-1).mean()
    return kl * config.temperature**2


def save_adapter(model, name: str, directory: str | Path, peft_config: dict, training: dict | None = None) -> Path:
    """Write adapter ``name`` in the peft format, module names as in the plain model.

    Args:
        model: the bridged model carrying the adapter.
        name: the adapter's name.
        directory: the folder to write (created): ``adapter_model.safetensors`` and ``adapter_config.json``.
        peft_config: the adapter's peft config (``distill``'s ``peft_config``).
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
    plain = {PEFT_PREFIX + key.replace(WRAPPED, ""): value.detach().contiguous() for key, value in state.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_WEIGHTS) as partial:
        save_file(plain, str(partial), metadata={"format": "pt"})
    write_json(directory / ADAPTER_CONFIG, _jsonable(peft_config))
    if training is not None:
        write_json(directory / TRAINING_FILE, training)
    return directory


def load_adapter(model, name: str, directory: str | Path) -> dict:
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
        raise ToolkitError(f"no adapter at {directory} (expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}): train one with `prism train`")
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
        raise ToolkitError(f"the adapter at {directory} adapts block {max(blocks)}, but this model has {model.cfg.n_layers} blocks")
    targets = lora_modules(model.original_model, blocks)
    internal = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=sorted(targets.values()))
    _inject(internal, model.original_model, name)
    state = {}
    for key, value in weights.items():
        module, _, leaf = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if module not in targets:
            raise ToolkitError(f"{directory} holds weights for {module!r}, which this model does not have: it was trained on another model")
        state[f"{targets[module]}.lora_{leaf}"] = value
    expected = {key for key in get_peft_model_state_dict(model.original_model, adapter_name=name)}
    if set(state) != expected:
        missing = sorted(expected - set(state))
        raise ToolkitError(f"{directory} does not match this model: {len(missing)} adapter weights missing (e.g. {missing[:1]})")
    try:
        set_peft_model_state_dict(model.original_model, state, adapter_name=name)
    except RuntimeError as error:
        raise ToolkitError(f"{directory} does not match this model ({str(error).splitlines()[0][:160]})") from error
    for parameter in model.original_model.parameters():
        parameter.requires_grad_(False)
    _switch(model, None)  # loading never switches an adapter on
    return saved
