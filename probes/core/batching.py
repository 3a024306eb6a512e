"""Batches of token sequences for the hooked model.

Sequences are right-padded and run without an attention mask: under causal attention a real
token never attends to the padding after it, so its activations equal those of the unpadded
sequence. Batches are built from length-sorted sequences to waste little compute on padding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int

from probes.core.errors import ToolkitError


def check_batch_size(batch_size: int) -> None:
    """One line for a batch size below 1 (before any work that would otherwise start)."""
    if batch_size < 1:
        raise ToolkitError(f"batch size must be at least 1, got {batch_size}")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    check_batch_size(batch_size)
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Int[torch.Tensor, "batch seq"]:
    width = max(len(sequence) for sequence in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return tokens


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[torch.Tensor, "batch seq"], Int[torch.Tensor, "batch seq"]]:
    """Left-padded tokens and their attention mask, as generation needs them."""
    width = max(len(sequence) for sequence in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence) :] = 1
    return tokens, mask


def positions_from_mask(mask: Int[torch.Tensor, "batch seq"]) -> Int[torch.Tensor, "batch seq"]:
    """Position ids of left-padded rows: each real token's index among its row's real tokens
    (padding gets 0), so a padded row runs exactly as it would alone."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def window_covers(hf_model: torch.nn.Module, length: int) -> bool:
    """Padding takes cache slots; with sliding-window attention a padded batch is exact only
    while every sequence (padding included) fits in the window."""
    window = getattr(hf_model.config, "sliding_window", None)
    return window is None or length + 1 < window


def check_context(lengths: Sequence[int], n_ctx: int, labels: Sequence[str]) -> None:
    """Raise one line for the first sequence longer than the model's context window."""
    for length, label in zip(lengths, labels):
        if length > n_ctx:
            raise ToolkitError(
                f"prompt {label} has {length} tokens but the model's context is {n_ctx}: shorten or drop it"
            )
