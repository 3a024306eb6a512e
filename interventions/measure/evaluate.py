"""Evaluate the model under one persona condition on a set of items.

Multiple-choice items are scored by log-likelihood (accuracy, with the chance level and the
per-item margin of the correct option); other items are answered by generation and checked
with the refusal rule. Every mean comes with its n and a bootstrap 95% confidence interval.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from interventions.measure.generation import generate
from interventions.measure.refusal import is_refusal
from interventions.measure.scoring import score_choices
from probes.core.datasets import Item
from probes.core.errors import ToolkitError
from probes.core.personas import Persona
from probes.core.prompts import Condition
from probes.core.rendering import SCORING_MODES, continuations, render_items
from probes.core.stats import bootstrap_mean

DEFAULT_ANSWER_PREFIX = "Answer:"
DEFAULT_NORMALISATION = {"letter": "none", "cloze": "tokens"}
METRIC_FIELD = {"accuracy": "correct", "refusal_rate": "refused"}  # metric -> per-item row field


def evaluate(
    model: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    condition: Condition,
    *,
    scoring: str = "letter",
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    normalise: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    personas: Mapping[str, Persona] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Results as a JSON-ready dict: settings, summary with CIs, per-category and per-item rows."""
    if not items:
        raise ToolkitError("no items to evaluate")
    multiple_choice = [item.is_multiple_choice for item in items]
    if any(multiple_choice) and not all(multiple_choice):
        raise ToolkitError("the items mix multiple-choice and open questions: evaluate them separately")
    result = {
        "model": model.cfg.model_name,
        "condition": condition.to_dict(),
        "condition_label": condition.label,
        "seed": seed,
    }
    if all(multiple_choice):
        if scoring not in SCORING_MODES:
            raise ToolkitError(f"unknown scoring mode {scoring!r}: use one of {', '.join(SCORING_MODES)}")
        normalise = normalise or DEFAULT_NORMALISATION[scoring]
        prompts = render_items(
            tokenizer, items, condition, scoring=scoring, answer_prefix=answer_prefix, personas=personas, seed=seed
        )
        scored = score_choices(
            model, tokenizer, prompts, [continuations(item, scoring) for item in items],
            [item.answer for item in items], normalise=normalise, batch_size=batch_size, progress=progress,
        )
        rows = [
            {
                "id": item.id, "category": item.category, "persona": prompt.persona,
                "placement": prompt.placement, "prompt_sha256": prompt.sha256, "answer": item.answer,
                "predicted": score.predicted, "correct": score.correct, "margin": score.margin,
                "logprobs": list(score.logprobs),
            }
            for item, prompt, score in zip(items, prompts, scored)
        ]
        result.update(
            task="multiple_choice",
            settings={"scoring": scoring, "answer_prefix": answer_prefix, "normalise": normalise},
            metric="accuracy",
            chance=sum(1 / len(item.choices) for item in items) / len(items),
            margin=bootstrap_mean([row["margin"] for row in rows], seed=seed).to_dict(),
        )
    else:
        prompts = render_items(tokenizer, items, condition, personas=personas, seed=seed)
        responses = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            progress=progress,
        )
        rows = [
            {
                "id": item.id, "category": item.category, "persona": prompt.persona,
                "placement": prompt.placement, "prompt_sha256": prompt.sha256, "response": response,
                "refused": is_refusal(response),
            }
            for item, prompt, response in zip(items, prompts, responses)
        ]
        result.update(
            task="generation",
            settings={"max_new_tokens": max_new_tokens, "decoding": "greedy", "refusal_rule": "keyword"},
            metric="refusal_rate",
        )
    values = [float(row[METRIC_FIELD[result["metric"]]]) for row in rows]
    result["summary"] = bootstrap_mean(values, seed=seed).to_dict()
    result["by_category"] = _by_category([row["category"] for row in rows], values, seed)
    result["items"] = rows
    return result


def metric_values(result: Mapping) -> list[float]:
    """Per-item values of a result's main metric, in item order."""
    field = METRIC_FIELD[result["metric"]]
    return [float(row[field]) for row in result["items"]]


def _by_category(categories: Sequence[str], values: Sequence[float], seed: int) -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for category, value in zip(categories, values):
        groups[category].append(value)
    return {category: bootstrap_mean(group, seed=seed).to_dict() for category, group in sorted(groups.items())}
