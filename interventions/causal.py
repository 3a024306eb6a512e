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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interventions.evaluate import render_items
from interventions.hooks import (AblateDirection, AddDirection, PatchActivations, capture_residuals, logit_lens,
                                 logits_at)
from interventions.stats import Estimate
from probes.batching import right_pad
from probes.datasets import Item
from probes.errors import ToolkitError
from probes.prompts import Condition, encode, token_groups

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


def paired_items(tokenizer, items: Sequence[Item], persona: Condition, seed: int = 0) -> list[PairedItem]:
    """Target and source prompts of each item (cloze with its answer stem), checked to align."""
    targets = render_items(tokenizer, items, persona, scoring="cloze", seed=seed)
    sources = render_items(tokenizer, items, Condition("none", base_system=persona.base_system), scoring="cloze", seed=seed)
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
def margins(model, tokenizer, sequences: Sequence[list[int]], items: Sequence[PairedItem]) -> np.ndarray:
    """First-token margin of the correct option at the last token of each sequence."""
    tokens = right_pad(sequences, tokenizer.pad_token_id)
    logprobs = logits_at(model, tokens, [len(sequence) - 1 for sequence in sequences]).log_softmax(-1)
    values = []
    for row, paired in enumerate(items):
        values.append(float(logprobs[row, paired.correct] - logprobs[row, list(paired.wrong)].max()))
    return np.array(values)


def _batches(n: int, size: int) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def baseline_margins(model, tokenizer, items: Sequence[PairedItem], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(margin with the persona, margin without it) per item."""
    with_persona, without = [], []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with_persona.append(margins(model, tokenizer, [p.target for p in chosen], chosen))
        without.append(margins(model, tokenizer, [p.source for p in chosen], chosen))
    return np.concatenate(with_persona), np.concatenate(without)


def fraction(numerator: np.ndarray, denominator: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """Ratio of means with a bootstrap CI resampling items (pairs stay together)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(numerator), size=(n_resamples, len(numerator)))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = numerator[draws].mean(axis=1) / denominator[draws].mean(axis=1)
    values = values[np.isfinite(values)]
    point = float(numerator.mean() / denominator.mean()) if denominator.mean() != 0 else float("nan")
    low, high = np.quantile(values, [0.025, 0.975]) if values.size else (float("nan"), float("nan"))
    return Estimate(point, float(low), float(high), len(numerator))


def patching_sweep(model, tokenizer, items: Sequence[PairedItem], layers: Sequence[int], groups: Sequence[str] = GROUPS,
                   batch_size: int = 8, progress: bool = True) -> dict[tuple[int, str], np.ndarray]:
    """Margins of persona runs with no-persona activations patched in, per (layer, group)."""
    results: dict[tuple[int, str], list[np.ndarray]] = {(layer, group): [] for layer in layers for group in groups}
    for batch in tqdm(_batches(len(items), batch_size), desc="patching", unit="batch", disable=not progress):
        chosen = [items[i] for i in batch]
        sources = right_pad([p.source for p in chosen], tokenizer.pad_token_id)
        cache = capture_residuals(model, sources, list(layers))
        for layer in layers:
            for group in groups:
                with PatchActivations(model, {layer: cache[layer]}, [p.pairs(group) for p in chosen]):
                    results[(layer, group)].append(margins(model, tokenizer, [p.target for p in chosen], chosen))
    return {key: np.concatenate(parts) for key, parts in results.items()}


@torch.inference_mode()
def persona_direction(model, tokenizer, items: Sequence[PairedItem], layer: int, batch_size: int = 8) -> torch.Tensor:
    """Mean (persona - no persona) residual after ``layer`` at the final token, over items."""
    differences = []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        targets = capture_residuals(model, right_pad([p.target for p in chosen], tokenizer.pad_token_id), [layer])[layer]
        sources = capture_residuals(model, right_pad([p.source for p in chosen], tokenizer.pad_token_id), [layer])[layer]
        rows = torch.arange(len(chosen))
        differences.append(targets[rows, torch.tensor([len(p.target) - 1 for p in chosen])]
                           - sources[rows, torch.tensor([len(p.source) - 1 for p in chosen])])
    return torch.cat(differences).mean(dim=0)


def steering_margins(model, tokenizer, items, direction: torch.Tensor, layer: int, scale: float, norms,
                     batch_size: int = 8) -> np.ndarray:
    """Margins of no-persona runs with ``direction`` added after ``layer`` at every position."""
    values = []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with AddDirection(model, {layer: direction}, scale=scale, norms=norms):
            values.append(margins(model, tokenizer, [p.source for p in chosen], chosen))
    return np.concatenate(values)


def ablation_margins(model, tokenizer, items, direction: torch.Tensor, layers: Sequence[int], batch_size: int = 8) -> np.ndarray:
    """Margins of persona runs with ``direction`` projected out after every one of ``layers``."""
    values = []
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        with AblateDirection(model, {layer: direction for layer in layers}):
            values.append(margins(model, tokenizer, [p.target for p in chosen], chosen))
    return np.concatenate(values)


def lens_curves(model, tokenizer, items, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Logit-lens log-probability and rank of the correct first token at every layer,
    with and without the persona: arrays [layers, items]."""
    curves: dict[str, list[torch.Tensor]] = {"persona_logprob": [], "persona_rank": [], "none_logprob": [], "none_rank": []}
    for batch in _batches(len(items), batch_size):
        chosen = [items[i] for i in batch]
        for name, sequences in (("persona", [p.target for p in chosen]), ("none", [p.source for p in chosen])):
            logprob, rank = logit_lens(model, right_pad(sequences, tokenizer.pad_token_id),
                                       [len(s) - 1 for s in sequences], [p.correct for p in chosen])
            curves[f"{name}_logprob"].append(logprob)
            curves[f"{name}_rank"].append(rank)
    return {name: torch.cat(parts, dim=1).numpy() for name, parts in curves.items()}
