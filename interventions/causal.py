"""What a persona does, causally, to knowledge retrieval: patching, steering, ablation, logit lens.

Every experiment runs on multiple-choice items the model can answer and reads one continuous
metric from a single forward pass: the margin of the correct option's first token over the best
wrong option's first token, at the last prompt token (after the answer stem). Items whose
options share a first token are left out. For each item there are two prompts: the target (with
the persona) and the source (the same query without it); their query and everything after it
line up token by token from the end.

Fractions are ratios of means over items with a bootstrap 95% CI:
- patching recovers (patched - persona) / (no persona - persona) of the persona's effect;
- steering reproduces (steered - no persona) / (persona - no persona);
- ablation restores (ablated - persona) / (no persona - persona).

Steering and ablation act on the answer position (the last token) after one block, with the
persona direction measured there: the mean (persona - no persona) residual. Ablation is mean
ablation: the persona run's projection on the direction is set to the no-persona mean, which
removes the persona's shift along it and nothing else.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interventions.hooks import AblateDirection, AddDirection, PatchActivations
from probes.core.batching import left_pad, positions_from_mask, right_pad, window_covers
from probes.core.devices import model_device
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.models import eager_attention
from probes.core.personas import Persona
from probes.core.prompts import Condition, encode, token_groups
from probes.core.rendering import render_items
from probes.core.stats import Estimate, bootstrap_ratio
from probes.passes import HookDidNotFire
from probes.positions import prompts as declare_prompts
from probes.readouts import capture_residuals, final_residuals, logit_lens, logits_at

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

GROUPS = ("query", "after_query", "final")


@dataclass(frozen=True)
class PairedItem:
    item: Item
    target: list[int]  # token ids with the persona
    source: list[int]  # token ids without it
    correct: int  # first token of the correct option
    wrong: tuple[int, ...]  # first tokens of the wrong options
    groups: dict[str, list[int]]  # target positions by role
    persona_positions: list[int]

    def pairs(self, group: str) -> list[tuple[int, int]]:
        """(target position, source position) for a group; aligned from the end."""
        shift = len(self.target) - len(self.source)
        return [(position, position - shift) for position in self.groups[group]]


def paired_items(
    tokenizer, items: Sequence[Item], persona: Condition, seed: int = 0, personas: Mapping[str, Persona] | None = None
) -> list[PairedItem]:
    """Target and source prompts of each item (cloze with its answer stem), checked to align; the persona is read from
    ``personas`` (default: the built-in library)."""
    targets = render_items(tokenizer, items, persona, scoring="cloze", personas=personas, seed=seed)
    sources = render_items(
        tokenizer, items, Condition("none", base_system=persona.base_system), scoring="cloze", seed=seed
    )
    paired = []
    for item, target, source in zip(items, targets, sources):
        target_ids, source_ids = encode(tokenizer, target), encode(tokenizer, source)
        groups = token_groups(tokenizer, target)
        tail = len(target_ids) - groups["query"][0]
        if tail > len(source_ids) or target_ids[-tail:] != source_ids[-tail:]:
            continue  # the query tokenised differently next to the persona: no clean alignment
        firsts = [tokenizer(f" {choice.strip()}", add_special_tokens=False)["input_ids"][0] for choice in item.choices]
        correct = firsts[item.answer]
        wrong = tuple(token for index, token in enumerate(firsts) if index != item.answer)
        if correct in wrong:
            continue
        paired.append(PairedItem(item, target_ids, source_ids, correct, wrong, groups, groups["persona"]))
    if not paired:
        raise ToolkitError("no item has distinct first tokens and aligned prompts: use other items")
    return paired


@torch.inference_mode()
def margins(
    model: TransformerBridge,
    tokenizer,
    sequences: Sequence[list[int]],
    items: Sequence[PairedItem],
    *,
    left_padded: bool = False,
) -> np.ndarray:
    """First-token margin of the correct option at the last token of each sequence.

    Right padding keeps positions counted from the start (patching pairs); left padding, with
    its attention mask and position ids, puts every sequence's last token at position -1, so
    an intervention at ``positions=[-1]`` touches exactly the answer position of each row."""
    if not left_padded:
        tokens = right_pad(sequences, tokenizer.pad_token_id)
        return _margins_from(
            logits_at(model, tokens, [len(sequence) - 1 for sequence in sequences]).log_softmax(-1), items
        )
    tokens, mask = left_pad(sequences, tokenizer.pad_token_id)
    logits = logits_at(
        model,
        tokens,
        [tokens.shape[1] - 1] * len(sequences),
        attention_mask=mask,
        position_ids=positions_from_mask(mask),
    )
    return _margins_from(logits.log_softmax(-1), items)


def _margins_from(logprobs: torch.Tensor, items: Sequence[PairedItem]) -> np.ndarray:
    return np.array(
        [float(logprobs[row, p.correct] - logprobs[row, list(p.wrong)].max()) for row, p in enumerate(items)]
    )


def _batches(n: int, size: int) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def baseline_margins(
    model: TransformerBridge, tokenizer, items: Sequence[PairedItem], batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """(margin with the persona, margin without it) per item."""
    with_persona, without = [], []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with_persona.append(margins(model, tokenizer, [p.target for p in chosen], chosen))
        without.append(margins(model, tokenizer, [p.source for p in chosen], chosen))
    return np.concatenate(with_persona), np.concatenate(without)


def fraction(numerator: np.ndarray, denominator: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """The share of the persona's effect an intervention recovers, reproduces or restores: a
    ratio of means over items with a bootstrap CI resampling items (pairs stay together)."""
    return bootstrap_ratio(numerator, denominator, n_resamples=n_resamples, seed=seed)


def patching_sweep(
    model: TransformerBridge,
    tokenizer,
    items: Sequence[PairedItem],
    layers: Sequence[int],
    groups: Sequence[str] = GROUPS,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[tuple[int, str], np.ndarray]:
    """Margins of persona runs with no-persona activations patched in, per (layer, group).

    Every group lies in the query or after it, so the tokens before the query (template and
    persona) are the same in every patched run: they run once per batch and each (layer, group)
    then runs only the query onwards from a copy of their cache."""
    results: dict[tuple[int, str], list[np.ndarray]] = {(layer, group): [] for layer in layers for group in groups}
    for batch in tqdm(_batches(len(items), batch_size), desc="patching", unit="batch", disable=not progress):
        chosen = [items[i] for i in batch]
        sources = right_pad([p.source for p in chosen], tokenizer.pad_token_id)
        cache = capture_residuals(model, sources, list(layers))
        run = _TargetAfterPrefix(model, tokenizer, chosen)
        for layer in layers:
            for group in groups:
                with PatchActivations(model, {layer: cache[layer]}, run.pairs(group)):
                    results[(layer, group)].append(run.margins())
    return {key: np.concatenate(parts) for key, parts in results.items()}


class _TargetAfterPrefix:
    """Persona prompts split at the query: the prefix runs once (left-padded so every prefix
    ends at the same column, with its own position ids), then ``margins`` runs the rest from a
    copy of the prefix cache as often as needed. Falls back to whole prompts when a sliding
    attention window would not cover the padded sequence."""

    def __init__(self, model: TransformerBridge, tokenizer, chosen: Sequence[PairedItem]) -> None:
        self.model, self.tokenizer, self.chosen = model, tokenizer, chosen
        hf = model.original_model
        self.starts = [p.groups["query"][0] for p in chosen]
        prefixes = [p.target[:start] for p, start in zip(chosen, self.starts)]
        suffixes = [p.target[start:] for p, start in zip(chosen, self.starts)]
        self.cached = window_covers(hf, max(map(len, prefixes)) + max(map(len, suffixes)))
        if not self.cached:
            self.starts = [0] * len(chosen)
            return
        with torch.inference_mode():
            device = model_device(hf)
            tokens, prefix_mask = (tensor.to(device) for tensor in left_pad(prefixes, tokenizer.pad_token_id))
            self.prefix_cache = hf(
                input_ids=tokens,
                attention_mask=prefix_mask,
                position_ids=positions_from_mask(prefix_mask),
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
        self.suffix = right_pad(suffixes, tokenizer.pad_token_id).to(device)
        steps = torch.arange(self.suffix.shape[1], device=device)[None, :]
        suffix_mask = (steps < torch.tensor([len(s) for s in suffixes], device=device)[:, None]).long()
        self.mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        self.positions = torch.tensor(self.starts, device=device)[:, None] + steps
        self.last = [len(s) - 1 for s in suffixes]

    def pairs(self, group: str) -> list[list[tuple[int, int]]]:
        """(target position, source position) for each row, positions in the sequences: the intervention finds
        them in whichever pass runs them."""
        return [list(p.pairs(group)) for p in self.chosen]

    @torch.inference_mode()
    def margins(self) -> np.ndarray:
        if not self.cached:
            return margins(self.model, self.tokenizer, [p.target for p in self.chosen], self.chosen)
        with declare_prompts([len(p.target) for p in self.chosen]):  # the suffix pass continues each whole prompt
            logprobs = logits_at(
                self.model,
                self.suffix,
                self.last,
                attention_mask=self.mask,
                position_ids=self.positions,
                past_key_values=copy.deepcopy(self.prefix_cache),
                use_cache=True,
            ).log_softmax(-1)
        return _margins_from(logprobs, self.chosen)


@torch.inference_mode()
def persona_attention(
    model: TransformerBridge, tokenizer, items: Sequence[PairedItem], batch_size: int = 8
) -> np.ndarray:
    """Attention the final (answer) position pays to the persona's tokens in each block, summed
    over those tokens and averaged over heads (read at ``blocks.{i}.attn.hook_pattern``): [layers, items].

    The patterns exist only under eager attention: the model runs eager for this call and gets its
    previous attention kernel back afterwards (``eager_attention``)."""
    hook_names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    missing = [name for name in hook_names if name not in model.hook_dict]
    if missing:
        raise ToolkitError(f"this model exposes no attention pattern hook ({missing[0]}): attention cannot be read")
    masses = []
    with eager_attention(model):
        for batch in _batches(len(items), batch_size):
            chosen = [items[i] for i in batch]
            per_layer: dict[str, torch.Tensor] = {}

            def read(pattern: torch.Tensor, hook) -> None:  # [batch, heads, query, key], on its block's device
                device = pattern.device
                finals = torch.tensor([len(p.target) - 1 for p in chosen], device=device)
                persona = torch.zeros(len(chosen), pattern.shape[-1], device=device)
                for row, p in enumerate(chosen):
                    persona[row, p.persona_positions] = 1.0
                final_row = pattern[torch.arange(len(chosen), device=device), :, finals]  # [batch, heads, key]
                per_layer[hook.name] = (final_row.float() * persona[:, None, :]).sum(-1).mean(-1).cpu()

            tokens = right_pad([p.target for p in chosen], tokenizer.pad_token_id).to(model_device(model))
            with model.hooks(fwd_hooks=[(name, read) for name in hook_names]):
                model.original_model.model(input_ids=tokens)
            if len(per_layer) != len(hook_names):
                raise HookDidNotFire(
                    "attention pattern hooks did not fire: the model's attention implementation hides the weights"
                )
            masses.append(torch.stack([per_layer[name] for name in hook_names]))
    return torch.cat(masses, dim=1).numpy()


@torch.inference_mode()
def persona_direction(
    model: TransformerBridge, tokenizer, items: Sequence[PairedItem], layer: int, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean persona - no-persona residual, mean no-persona residual) after ``layer`` at the
    final token, over items."""
    differences, plain = [], []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        target_final = final_residuals(model, [p.target for p in chosen], layer, tokenizer.pad_token_id)
        source_final = final_residuals(model, [p.source for p in chosen], layer, tokenizer.pad_token_id)
        differences.append(target_final - source_final)
        plain.append(source_final)
    return torch.cat(differences).mean(dim=0), torch.cat(plain).mean(dim=0)


def steering_margins(
    model: TransformerBridge,
    tokenizer,
    items,
    direction: torch.Tensor,
    layer: int,
    scale: float,
    norms,
    batch_size: int = 8,
) -> np.ndarray:
    """Margins of no-persona runs with ``direction`` added after ``layer`` at the answer position."""
    values = []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with AddDirection(model, {layer: direction}, scale=scale, norms=norms, positions=[-1]):
            values.append(margins(model, tokenizer, [p.source for p in chosen], chosen, left_padded=True))
    return np.concatenate(values)


def ablation_margins(
    model: TransformerBridge,
    tokenizer,
    items,
    direction: torch.Tensor,
    layer: int,
    baseline: float,
    batch_size: int = 8,
) -> np.ndarray:
    """Margins of persona runs with the shift along ``direction`` removed after ``layer`` at the
    answer position (its projection set to ``baseline``, the no-persona mean)."""
    values = []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with AblateDirection(model, {layer: direction}, positions=[-1], baseline={layer: baseline}):
            values.append(margins(model, tokenizer, [p.target for p in chosen], chosen, left_padded=True))
    return np.concatenate(values)


def lens_curves(model: TransformerBridge, tokenizer, items, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Logit-lens log-probability and rank of the correct first token at every layer,
    with and without the persona: arrays [layers, items]."""
    curves: dict[str, list[torch.Tensor]] = {
        "persona_logprob": [],
        "persona_rank": [],
        "none_logprob": [],
        "none_rank": [],
    }
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        for name, sequences in (("persona", [p.target for p in chosen]), ("none", [p.source for p in chosen])):
            logprob, rank = logit_lens(
                model,
                right_pad(sequences, tokenizer.pad_token_id),
                [len(s) - 1 for s in sequences],
                [p.correct for p in chosen],
            )
            curves[f"{name}_logprob"].append(logprob)
            curves[f"{name}_rank"].append(rank)
    return {name: torch.cat(parts, dim=1).numpy() for name, parts in curves.items()}
