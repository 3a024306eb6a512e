"""A sample's answer as token sequences, and the logits that predict it: what distillation and fidelity read.

A ``DistillationPair`` holds one answer twice: after the teacher's prompt (the persona in the system
prompt) and after the student's (no persona). ``answer_logits`` runs many sequences as one
right-padded batch and returns the logits at the positions that predict each one's answer.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

import torch
from jaxtyping import Float

from prism.samples import Sample
from probes.core.batching import right_pad
from probes.core.devices import model_device
from probes.core.personas import Persona
from probes.core.prompts import Condition, encode, render

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["DistillationPair", "answer_logits", "distillation_pair", "retain_pair"]


class DistillationPair(NamedTuple):
    """One sample's token ids: the same answer after the teacher's and after the student's prompt."""

    teacher: list[int]
    student: list[int]
    n_answer: int


def distillation_pair(
    tokenizer, sample: Sample, persona_length: str = "min", personas: Mapping[str, Persona] | None = None
) -> DistillationPair | None:
    """The sample's persona answer after the teacher's prompt (its persona at ``persona_length``, in the system
    prompt; the persona is read from ``personas``, default the built-in library) and after the student's (no
    persona), or None when the answer is empty."""
    answer = tokenizer(sample.answer_persona, add_special_tokens=False)["input_ids"]
    if not answer:
        return None
    teacher = encode(
        tokenizer,
        render(tokenizer, sample.query, Condition(sample.persona, persona_length, "system"), personas=personas),
    )
    student = encode(tokenizer, render(tokenizer, sample.query, Condition("none")))
    return DistillationPair(teacher + answer, student + answer, len(answer))


def retain_pair(tokenizer, query: str) -> DistillationPair:
    """A retain query's plain prompt as a pair whose "answer" is every prompt position's next token: one token is
    appended so that the prompt's last position, which predicts the answer's first token, is read too (causal
    attention: the appended token changes nothing before it, and its own output is not read)."""
    ids = encode(tokenizer, render(tokenizer, query, Condition("none")))
    sequence = ids + [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return DistillationPair(sequence, sequence, len(ids))


def answer_logits(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], n_answers: Sequence[int]
) -> Float[torch.Tensor, "answers vocab"]:
    """float32 logits at the positions that predict each sequence's answer tokens, rows after rows:
    [sum(n_answers), vocab].

    The sequences run as one right-padded batch with an attention mask; a real token keeps the position it has
    alone (positions count from the row's start), so each row's logits are those of its unpadded sequence.
    """
    hf = model.original_model
    device = model_device(hf)
    tokens = right_pad(sequences, 0).to(device)  # the padding id does not matter: masked, its outputs unread
    lengths = torch.tensor([len(sequence) for sequence in sequences], device=device)
    mask = (torch.arange(tokens.shape[1], device=device) < lengths[:, None]).long()
    # the answer's n tokens are predicted from the n positions before the sequence's last
    rows = torch.cat([torch.full((n,), row, device=device) for row, n in enumerate(n_answers)])
    columns = torch.cat(
        [
            torch.arange(len(sequence) - n - 1, len(sequence) - 1, device=device)
            for sequence, n in zip(sequences, n_answers)
        ]
    )
    with _autocast(hf):
        hidden = hf.model(input_ids=tokens, attention_mask=mask, use_cache=False).last_hidden_state
        return hf.lm_head(hidden[rows, columns]).float()


def _autocast(hf_model: torch.nn.Module):
    """bfloat16 autocast for a float32 model on CUDA; elsewhere the model runs in its own dtype."""
    parameter = next(hf_model.parameters())
    if parameter.device.type == "cuda" and parameter.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
