"""How much of the persona a distilled adapter carries: its fidelity on queries it was not trained on.

On each sample, the persona's answer is read three ways: after the persona prompt (the teacher), after
the plain prompt (the base model) and after the plain prompt with the adapter on (the student). The
persona's effect on the next-token distributions is KL(teacher || base), averaged over the answer's
tokens; what the adapter leaves of it is KL(teacher || student). Fidelity is the share it closes,

    fidelity = 1 - mean KL(teacher || student) / mean KL(teacher || base),

a ratio of means over samples with a bootstrap 95% CI: 1 means the adapter reproduces the persona, 0
that it does nothing, below 0 that it moves the model away from it. Full-vocabulary KL at
temperature 1, in float32.

The control (``other_persona``) is the same share for the prompt of another persona of the
bootstrap (drawn per sample with the seed): what any persona's prompt already does in the
persona's place. An adapter trained on several personas sees no persona at inference, so the
part of each persona's effect that is its own can be carried only as far as the query gives
the persona away; the control says how large the shared part is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float

from prism.adapters import active_adapter
from prism.pairs import DistillationPair, answer_logits, distillation_pair
from prism.samples import Sample
from probes.core.batching import length_sorted_batches
from probes.core.errors import ToolkitError
from probes.core.personas import Persona
from probes.core.stats import Estimate, bootstrap_mean, bootstrap_ratio

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Fidelity", "adapter_fidelity"]


@dataclass(frozen=True)
class Fidelity:
    """An adapter's fidelity to the persona it was distilled from.

    Attributes:
        share: the share of the persona's effect the adapter reproduces (1 - KL_student / KL_base, ratio of means).
        persona_effect: mean KL(teacher || base) per answer token: how far the persona moves the model (nats).
        remaining: mean KL(teacher || student) per answer token: what the adapter leaves of it (nats).
        other_persona: the control: the share that another persona's prompt reproduces (None with a single persona).
    """

    share: Estimate
    persona_effect: Estimate
    remaining: Estimate
    other_persona: Estimate | None = None

    def to_dict(self) -> dict:
        control = self.other_persona.columns("other_persona_fidelity") if self.other_persona else {}
        return {
            **self.share.columns("fidelity"),
            "n": self.share.n,
            **self.persona_effect.columns("kl_teacher_base"),
            **self.remaining.columns("kl_teacher_student"),
            **control,
        }


@torch.no_grad()
def adapter_fidelity(
    model: TransformerBridge,
    tokenizer,
    samples: Sequence[Sample],
    adapter: str,
    *,
    persona_length: str = "min",
    personas: Mapping[str, Persona] | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> Fidelity:
    """The fidelity of ``adapter`` (attached to ``model``) on ``samples``, best held out from its training.

    Args:
        model, tokenizer: the bridged model carrying the adapter, and its tokenizer.
        samples: bootstrapped samples: each one's persona answer after the persona, plain and adapted prompts.
        adapter: the adapter's name (``prism`` or ``sft``).
        persona_length: the teacher persona's text length, as in distillation.
        personas: the persona library the samples' personas are read from, as in distillation (default: built-in).
        batch_size: samples per forward pass.
        seed: the bootstrap seed of the CIs.

    Returns:
        the ``Fidelity``: share with its 95% CI, both KLs, and the other-persona control when the samples come from
        more than one persona.

    Raises:
        ToolkitError: no sample with a non-empty persona answer.
    """
    kept = [
        (sample, pair) for sample in samples if (pair := distillation_pair(tokenizer, sample, persona_length, personas))
    ]
    if not kept:
        raise ToolkitError("no sample with a persona answer to measure the adapter's fidelity on")
    samples, pairs = [sample for sample, _ in kept], [pair for _, pair in kept]
    others = _other_personas(samples, seed)
    with active_adapter(model, None):
        teacher = _per_token_logprobs(model, pairs, batch_size, "teacher")
        base = _per_token_logprobs(model, pairs, batch_size, "student")
        if others:
            swapped = [
                distillation_pair(tokenizer, replace(sample, persona=other), persona_length, personas)
                for sample, other in zip(samples, others)
            ]
            other_prompt = _per_token_logprobs(model, swapped, batch_size, "teacher")
    with active_adapter(model, adapter):
        student = _per_token_logprobs(model, pairs, batch_size, "student")
    to_base = np.array([_kl(t, b) for t, b in zip(teacher, base)])
    to_student = np.array([_kl(t, s) for t, s in zip(teacher, student)])
    control = None
    if others:
        to_other = np.array([_kl(t, o) for t, o in zip(teacher, other_prompt)])
        control = bootstrap_ratio(to_base - to_other, to_base, seed=seed)
    return Fidelity(
        bootstrap_ratio(to_base - to_student, to_base, seed=seed),
        bootstrap_mean(to_base, seed=seed),
        bootstrap_mean(to_student, seed=seed),
        control,
    )


def _other_personas(samples: Sequence[Sample], seed: int) -> list[str] | None:
    """For each sample, another persona of the samples' own, drawn with ``seed``; None when they have only one."""
    personas = sorted({sample.persona for sample in samples})
    if len(personas) < 2:
        return None
    rng = random.Random(seed)
    return [rng.choice([persona for persona in personas if persona != sample.persona]) for sample in samples]


def _per_token_logprobs(
    model: TransformerBridge, pairs: Sequence[DistillationPair], batch_size: int, side: str
) -> list[Float[torch.Tensor, "answer vocab"]]:
    """Each pair's float32 log-probabilities at its answer positions, after the teacher's or the student's prompt."""
    sequences = [getattr(pair, side) for pair in pairs]
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for batch in length_sorted_batches([len(sequence) for sequence in sequences], batch_size):
        n_answers = [pairs[i].n_answer for i in batch]
        logprobs = answer_logits(model, [sequences[i] for i in batch], n_answers).log_softmax(-1)
        for i, rows in zip(batch, logprobs.split(n_answers)):
            out[i] = rows.cpu()
    return out


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """KL(p || q) averaged over the answer's tokens."""
    return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())
