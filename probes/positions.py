"""Where each token of a forward pass sits in its sequence, and where each sequence's prompt ends.

A consumer may run one batch of sequences in several forward passes: a shared persona prefix run once
for every row, a left-padded suffix on its cache, option tokens or generated tokens one pass at a time.
An edit that means "the last prompt token of each sequence" must find that token in whichever pass
carries it. ``PassTracker`` reads every pass's inputs (attention mask, cache length) on the model's
decoder and gives the pass's ``PassLayout``: each column's position in its sequence (-1 for padding) and
the prompt length of each sequence a row stands for.

Where each prompt ends is declared by the consumer that knows (``prompts(lengths)`` around the passes
of one batch); without a declaration, the tokens of a pass that starts its sequences (an empty cache)
are the prompt, and later cached passes of the same rows continue it.

    with PassTracker(model) as tracker, prompts([12, 9]):
        model(tokens)              # tracker.layout(): positions [2, seq] and the prompt of each row
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Bool, Int
from transformer_lens.model_bridge import TransformerBridge

from probes.core.errors import ToolkitError
from probes.core.internals import decoder

_DECLARED: ContextVar[tuple[int, ...] | None] = ContextVar("declared_prompt_lengths", default=None)


@contextmanager
def prompts(lengths: Sequence[int]) -> Iterator[None]:
    """Declare the prompt length (in real tokens) of each sequence of the batch the passes inside run.

    A pass with one row per sequence maps row ``r`` to ``lengths[r]``; a pass of one row over several
    sequences is a prefix they share (its cache is copied to every row afterwards).

    Raises:
        ToolkitError: no lengths, or a length below 1.
    """
    lengths = tuple(int(length) for length in lengths)
    if not lengths or min(lengths) < 1:
        raise ToolkitError(f"every sequence needs a prompt of at least one token, got lengths {list(lengths)}")
    token = _DECLARED.set(lengths)
    try:
        yield
    finally:
        _DECLARED.reset(token)


@dataclass(frozen=True)
class PassLayout:
    """One forward pass: ``positions[r, c]``, the position in its sequence of column ``c`` of row ``r`` (-1 for
    padding), and ``prompt_lengths[r]``, the prompt length of every sequence row ``r`` stands for (one
    sequence, or several for a shared prefix), or None where no one said where the prompt ends."""

    positions: Int[torch.Tensor, "batch seq"]
    prompt_lengths: tuple[tuple[int, ...], ...] | None

    def select(self, chosen: str | Sequence[int]) -> Bool[torch.Tensor, "batch seq"]:
        """The columns to edit: ``"all"`` real tokens, the ``"prompt"``, what is ``"generated"`` after it, or
        listed positions of each sequence's prompt (negative counts from the prompt's end).

        Raises:
            ToolkitError: a listed position outside a prompt; a shared-prefix row whose sequences disagree
                on a column; prompt boundaries that were not declared and cannot be inferred.
        """
        real = self.positions >= 0
        if chosen == "all":
            return real
        if self.prompt_lengths is None:
            raise ToolkitError(
                "cannot tell where each sequence's prompt ends in a cached pass: run the batch's passes "
                "inside probes.positions.prompts(lengths), or use positions='all'"
            )
        groups = [len(lengths) for lengths in self.prompt_lengths]
        lengths = [length for group in self.prompt_lengths for length in group]
        if isinstance(chosen, str):
            return self._per_row(self._by_prompt(chosen, lengths, groups), groups)
        for position in chosen:
            for length in lengths:
                if not -length <= position < length:
                    raise ToolkitError(f"position {position} is outside a prompt of {length} tokens")
        targets = torch.tensor(
            [[p if p >= 0 else length + p for p in chosen] for length in lengths], device=self.positions.device
        )
        expanded = self._expand(groups)
        return self._per_row((expanded[:, :, None] == targets[:, None, :]).any(-1) & (expanded >= 0), groups)

    def _expand(self, groups: list[int]) -> torch.Tensor:
        sizes = torch.tensor(groups, device=self.positions.device)
        return self.positions.repeat_interleave(sizes, dim=0)

    def _by_prompt(self, chosen: str, lengths: list[int], groups: list[int]) -> torch.Tensor:
        expanded = self._expand(groups)
        ends = torch.tensor(lengths, device=expanded.device)[:, None]
        inside = expanded < ends
        return (inside if chosen == "prompt" else ~inside) & (expanded >= 0)

    @staticmethod
    def _per_row(mask: torch.Tensor, groups: list[int]) -> torch.Tensor:
        if all(group == 1 for group in groups):
            return mask
        rows, start = [], 0
        for group in groups:
            part = mask[start : start + group]
            if not (part == part[:1]).all():
                raise ToolkitError(
                    "the chosen positions fall inside a prefix the sequences share for some of them "
                    "only: score with share_prefix=False"
                )
            rows.append(part[0])
            start += group
        return torch.stack(rows)


class PassTracker:
    """Context manager: reads each forward pass's inputs on the model's decoder (see the module docstring).

    Args:
        model: the bridged model.
    """

    def __init__(self, model: TransformerBridge) -> None:
        self.model = model
        self._layout: PassLayout | None = None
        self._started: tuple[tuple[int, ...], ...] | None = None  # prompts of the last uncached pass
        self._handle = None

    def __enter__(self) -> "PassTracker":
        self._layout = self._started = None
        self._handle = decoder(self.model).register_forward_pre_hook(self._see, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        self._layout = None

    def layout(self, batch: int, seq: int) -> PassLayout:
        """The layout of the pass in progress.

        Raises:
            ToolkitError: the pass did not go through the model's decoder (its inputs were not seen).
        """
        layout = self._layout
        if layout is None or tuple(layout.positions.shape) != (batch, seq):
            raise ToolkitError(
                f"a forward pass of shape ({batch}, {seq}) bypassed the model's decoder: its positions "
                "are unknown; run the model through the bridge or its Hugging Face module"
            )
        return layout

    def _see(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        batch, seq = ids.shape[:2]
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] >= seq:
            real = mask.long()
            positions = (real.cumsum(1) - 1)[:, -seq:].masked_fill(real[:, -seq:] == 0, -1)
        else:
            positions = (past + torch.arange(seq, device=ids.device)).expand(batch, seq)
        declared = _DECLARED.get()
        if declared is not None:
            lengths = _declared_rows(declared, batch)
        elif past == 0:  # a pass that starts its sequences: its real tokens are the prompt
            self._started = lengths = tuple((int(n),) for n in (positions >= 0).sum(1).tolist())
        else:  # a cached pass continues the sequences the last uncached pass started
            lengths = self._started if self._started is not None and len(self._started) == batch else None
        self._layout = PassLayout(positions, lengths)


def _declared_rows(declared: tuple[int, ...], batch: int) -> tuple[tuple[int, ...], ...]:
    if batch == len(declared):
        return tuple((length,) for length in declared)
    if batch == 1:
        return (declared,)  # a prefix every sequence of the batch shares
    raise ToolkitError(
        f"a forward pass of {batch} rows inside prompts() declared for {len(declared)} sequences: "
        "declare one length per row"
    )
