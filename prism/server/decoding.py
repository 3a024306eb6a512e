"""Batched decoding for serving: one forward pass per step over the live rows, each row sampled on its own.

Requests that arrive together share every forward pass (left-padded prefill, then one token per
row per step through the KV cache), but each row's next token is chosen from its own logits
only, with its own ``torch.Generator`` seeded with its request's seed:

- ``temperature == 0``: greedy (the arg max);
- otherwise Hugging Face ``generate``'s arithmetic, in float32 on the CPU: the logits divided by
  the temperature, top-p filtering (``top_p < 1``), softmax, one multinomial draw.

So a request's text does not depend on what else is in its batch (up to the rounding of batched
matrix products), the same seed gives the same text alone or batched, and a request alone gets
the text the toolkit's ``generate`` gives for the same prompt, settings and seed (``generate``
seeds the global generator with ``seed`` for its first batch).

Prompts of much the same length are prefilled together and the groups' caches joined, so a long
prompt does not make every short one pay for its padding. Rows leave the batch when they finish
or their client goes away: their rows of the KV cache, the attention mask and the positions are
dropped, and so are their routes (``Routed.resume``). ``prism.server.text.TextStream`` turns a
row's tokens into text as they come.

Log-probabilities, for the rows that ask for them (``Sampling.logprobs``), are those of the
model's own distribution (float32 log-softmax of the logits, before temperature and top-p): each
chosen token's, with the ``logprobs`` most likely tokens at that step. A row with ``echo`` also
gets every prompt token's (``None`` for the first), from the same prefill that routes and answers
it: its last hidden states are unembedded a slice of positions at a time, so no pass holds the
logits of a whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch.nn.functional import pad
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prism.routing import Routed
from probes.core.batching import left_pad, positions_from_mask
from probes.core.devices import model_device

__all__ = ["BatchDecoder", "Sampling", "TokenLogprob", "next_tokens", "prefill_groups"]

LOGIT_SLICE = 256  # prompt positions unembedded at once for an echo's log-probabilities
TokenLogprob = tuple  # (token id, its log-probability, ((id, log-probability) of the most likely tokens, best first))


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded.

    Attributes:
        max_tokens: the most tokens generated (generation also stops at EOS or a stop string).
        temperature: 0 for greedy decoding; above 0, the sampling temperature.
        top_p: nucleus sampling's probability mass, in (0, 1] (sampling only).
        seed: the seed of the row's own generator (sampling only).
        stop: strings that end the text where they first appear (not included).
        logprobs: report each token's log-probability with this many most likely alternatives (None: report none).
        echo: report the prompt tokens' log-probabilities too (with ``logprobs``).
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    echo: bool = False


def next_tokens(
    logits: Float[torch.Tensor, "batch vocab"], samplings: Sequence[Sampling], generators: Sequence[torch.Generator]
) -> list[int]:
    """Each row's next token from its own logits, settings and generator (see the module docstring).

    Args:
        logits: the last position's logits, one row per sequence.
        samplings: each row's settings.
        generators: each row's CPU generator (drawn from only when the row samples).

    Returns:
        one token id per row.
    """
    chosen = logits.float().argmax(dim=-1).tolist()
    sampled = [row for row, sampling in enumerate(samplings) if sampling.temperature > 0]
    if not sampled:
        return chosen
    scores = logits[sampled].to(device="cpu", dtype=torch.float32)
    scores = scores / torch.tensor([[samplings[row].temperature] for row in sampled], dtype=torch.float32)
    if any(samplings[row].top_p < 1 for row in sampled):
        # as transformers' TopPLogitsWarper: drop the least likely tokens whose mass stays within 1 - top_p
        cut = torch.tensor(
            [[1 - samplings[row].top_p if samplings[row].top_p < 1 else -1.0] for row in sampled], dtype=torch.float32
        )
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= cut
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    probabilities = scores.softmax(dim=-1)
    for index, row in enumerate(sampled):
        chosen[row] = int(torch.multinomial(probabilities[index : index + 1], 1, generator=generators[row]))
    return chosen


def token_logprobs(logprobs: Float[torch.Tensor, "n vocab"], tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """Each row's token with its log-probability and the ``top`` most likely tokens (``logprobs``: log-softmaxed)."""
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
    if top <= 0:
        return [(token, value, ()) for token, value in zip(tokens, chosen)]
    values, ids = logprobs.topk(top, dim=-1)
    return [
        (token, value, tuple(zip(row_ids, row_values)))
        for token, value, row_ids, row_values in zip(tokens, chosen, ids.tolist(), values.tolist())
    ]


def prefill_groups(lengths: Sequence[int], slack: float = 0.25, allowance: int = 16) -> list[list[int]]:
    """Rows grouped for prefill: by length, a row joining a group only while the group's padding stays within ``slack``
    of its real tokens plus ``allowance`` tokens per row (a pass has a fixed cost; padding costs as much as tokens)."""
    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda index: (lengths[index], index)):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(lengths[index] for index in group) + lengths[row]
            if (len(group) + 1) * lengths[row] - real <= slack * real + allowance * (len(group) + 1):
                group.append(row)
                continue
        groups.append([row])
    return groups


class BatchDecoder:
    """Decode several prompts together through the model's KV cache, each row sampled on its own.

    ``start()`` runs the prefill and returns each row's first token; ``advance(fed)`` feeds the
    tokens of the rows that go on (rows left out of ``fed`` leave the batch) and returns their next
    tokens. Rows are named by their index in ``prompts`` throughout.

    Prompts of much the same length are prefilled together (left-padded; ``prefill_groups``), the
    groups one pass each, and their caches are then joined, left-padded to the longest, into the
    one batch every later step runs: padding never costs more than the group rule allows, however
    different the prompts' lengths. (A model whose cache is not plain full attention, e.g. with
    sliding-window layers, is prefilled in one padded pass.)

    Args:
        hf_model: the Hugging Face causal LM (the bridged model's ``original_model``, so bridge hooks fire).
        prompts: each row's prompt token ids (non-empty).
        samplings: each row's settings (its generator is seeded with ``seed``).
        pad_id: the padding token id (left padding, masked out).
        routed: the ``Routed`` block the model runs in, if any: the rows' routes follow them as they are joined and
            as they leave (``Routed.routes``, ``Routed.resume``).
    """

    def __init__(
        self,
        hf_model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        samplings: Sequence[Sampling],
        *,
        pad_id: int,
        routed: Routed | None = None,
    ) -> None:
        self.hf, self.routed, self.pad_id = hf_model, routed, pad_id
        self.device = model_device(hf_model)
        self.prompts = [list(prompt) for prompt in prompts]
        self.samplings = list(samplings)
        self.generators = [torch.Generator().manual_seed(sampling.seed) for sampling in samplings]
        self.rows: list[int] = []  # the live rows, in batch order
        self.passes = 0
        self.prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}  # echo rows: None, then one per prompt token
        self.logprobs: dict[int, TokenLogprob] = {}  # rows with logprobs: the token each was just given

    @torch.inference_mode()
    def _forward(
        self,
        cache: DynamicCache,
        ids: Int[torch.Tensor, "batch seq"],
        mask: Int[torch.Tensor, "batch seq"],
        positions: Int[torch.Tensor, "batch seq"],
        rows: Sequence[int],
        prefill: bool = False,
    ) -> list[int]:
        echo = [index for index, row in enumerate(rows) if self.samplings[row].echo] if prefill else []
        if echo:  # the hidden states of every position, unembedded a slice at a time for the echoed rows
            hidden = self.hf.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            ).last_hidden_state
            logits = self._unembed(hidden[:, -1:])[:, -1]
            for index in echo:
                self.prompt_logprobs[rows[index]] = self._prompt_logprobs(
                    hidden[index], ids[index], mask[index], self.samplings[rows[index]].logprobs or 0
                )
        else:
            logits = self.hf(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        self.passes += 1
        tokens = next_tokens(logits, [self.samplings[row] for row in rows], [self.generators[row] for row in rows])
        asked = [index for index, row in enumerate(rows) if self.samplings[row].logprobs is not None]
        if asked:
            top = max(self.samplings[rows[index]].logprobs for index in asked)
            reported = token_logprobs(logits[asked].float().log_softmax(-1), [tokens[index] for index in asked], top)
            for index, (token, value, best) in zip(asked, reported):
                self.logprobs[rows[index]] = (token, value, best[: self.samplings[rows[index]].logprobs])
        return tokens

    def _unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from last hidden states, as the model's own head makes them (soft-capped where the model caps)."""
        logits = self.hf.lm_head(hidden)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _prompt_logprobs(
        self,
        hidden: Float[torch.Tensor, "seq d"],
        ids: Int[torch.Tensor, " seq"],
        mask: Int[torch.Tensor, " seq"],
        top: int,
    ) -> list[TokenLogprob | None]:
        """Each real prompt token's log-probability given the tokens before it (None for the first)."""
        real = mask.bool().nonzero()[:, 0]
        hidden, ids = hidden[real], ids[real].tolist()
        reported: list[TokenLogprob | None] = [None]
        for start in range(0, len(ids) - 1, LOGIT_SLICE):
            end = min(start + LOGIT_SLICE, len(ids) - 1)
            logprobs = self._unembed(hidden[start:end]).float().log_softmax(-1)
            reported += token_logprobs(logprobs, ids[start + 1 : end + 1], top)
        return reported

    def start(self) -> dict[int, int]:
        """Prefill every prompt; each row's first generated token."""
        plain = all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.hf.config).layers)
        groups = prefill_groups([len(p) for p in self.prompts]) if plain else [list(range(len(self.prompts)))]
        tokens, parts = {}, []
        for group in groups:
            ids, mask = (
                tensor.to(self.device) for tensor in left_pad([self.prompts[row] for row in group], self.pad_id)
            )
            positions, cache = positions_from_mask(mask), DynamicCache(config=self.hf.config)
            tokens.update(zip(group, self._forward(cache, ids, mask, positions, group, prefill=True)))
            parts.append((cache, mask, positions[:, -1], self.routed.routes if self.routed is not None else None))
        width = max(mask.shape[1] for _, mask, _, _ in parts)
        self._cache = parts[0][0]
        if len(parts) > 1:  # join the groups' caches, left-padded to the longest
            for index, layer in enumerate(self._cache.layers):
                joined = [part[0].layers[index] for part in parts]
                layer.keys = torch.cat([pad(piece.keys, (0, 0, width - piece.keys.shape[-2], 0)) for piece in joined])
                layer.values = torch.cat(
                    [pad(piece.values, (0, 0, width - piece.values.shape[-2], 0)) for piece in joined]
                )
        self._mask = torch.cat([pad(mask, (width - mask.shape[1], 0)) for _, mask, _, _ in parts])
        self._last = torch.cat([last for _, _, last, _ in parts])
        if self.routed is not None:
            self.routed.resume(torch.cat([routes for _, _, _, routes in parts]))
        self.rows = [row for group in groups for row in group]
        return tokens

    def advance(self, fed: Mapping[int, int]) -> dict[int, int]:
        """Feed each continuing row's last token; rows not in ``fed`` leave. The next token of each row fed."""
        if not fed:
            self.rows = []
            return {}
        if set(fed) != set(self.rows):
            keep = [index for index, row in enumerate(self.rows) if row in fed]
            selected = torch.tensor(keep, dtype=torch.long, device=self.device)
            for layer in self._cache.layers:
                layer.batch_select_indices(selected)
            self._mask, self._last = self._mask[selected], self._last[selected]
            self.rows = [self.rows[index] for index in keep]
            if self.routed is not None:
                self.routed.resume(self.routed.routes[selected.to(self.routed.routes.device)])
        ids = torch.tensor([[fed[row]] for row in self.rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._last = self._last + 1
        return dict(zip(self.rows, self._forward(self._cache, ids, self._mask, self._last[:, None], self.rows)))
