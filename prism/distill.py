"""Self-distillation of a persona into a LoRA adapter (PRISM stage 5), with peft.

The teacher is the base model WITH the matched persona in its system prompt; the student is
the same model WITHOUT it, plus a LoRA adapter on blocks ``first_block``..L-1 (by default every
block after the gate's, so the gate reads the same activations whether or not the adapter is
on). On each bootstrapped answer the student's next-token distributions are pulled towards the
teacher's: KL on the teacher's top-k logits (k=64), both renormalised over those tokens, at
temperature T=2, times T^2. Teacher targets are computed once, with the adapter off.

The adapter itself (attaching, switching, saving in the peft format) is ``prism.adapters``.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from prism.adapters import active_adapter, attach_adapter, json_ready
from prism.samples import Sample
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.prompts import Condition, encode, render


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
    peft_config = attach_adapter(model, name, rank=config.rank, alpha=config.alpha, first_block=config.first_block,
                                 seed=config.seed)
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
            "peft_config": json_ready(peft_config.to_dict())}


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
    hidden = hf.model(input_ids=torch.tensor([ids], device=model_device(hf))).last_hidden_state[0]
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


