"""Evaluate the model under one persona condition on a set of items.

Multiple-choice items are scored by log-likelihood (accuracy, with the chance level and the
per-item margin of the correct option); other items are answered by generation and checked
with the refusal rule. Both go through the task machinery of ``interventions.measure.tasks``
(an unregistered task built from the arguments), as the study and ``prism compare`` do. Every
mean comes with its n and a bootstrap 95% confidence interval.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from interventions.measure.engines import Engine
from interventions.measure.tasks import DEFAULT_ANSWER_PREFIX, Task, choice_result
from probes.core.devices import precision
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.personas import Persona
from probes.core.prompts import Condition
from probes.core.rendering import SCORING_MODES
from probes.core.stats import bootstrap_mean

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
    engine: Engine | None = None,
) -> dict:
    """Evaluate ``items`` under ``condition``: multiple choice by log-likelihood, else by generation.

    Args:
        model, tokenizer: the bridged model and its tokenizer (``load_model``).
        items: multiple-choice items (accuracy and answer margin) or open ones (refusal rate);
            not a mix.
        condition: the persona condition every prompt is rendered under.
        scoring: ``letter`` (options listed, letters scored) or ``cloze`` (option texts scored).
        answer_prefix: text that opens the assistant turn when scoring.
        normalise: score normalisation, ``none``, ``tokens`` or ``chars`` (default: none for letter, tokens for cloze).
        max_new_tokens: generation length for open items.
        batch_size: prompts per forward pass.
        personas: a persona library in place of the built-in one.
        seed: the random persona's and the bootstrap's seed.
        progress: show progress bars.
        engine: what generates open items' answers (``interventions.measure.engines``; default: ``model``).

    Returns:
        a JSON-ready dict: the settings, ``summary`` (mean, 95% CI, n), ``by_category`` and
        per-item rows (``items``: each with the rendered prompt and its SHA-256); multiple choice adds the chance
        level and the mean margin.

    Raises:
        ToolkitError: no items, a mix of multiple-choice and open items, an unknown scoring mode or
            normalisation, or a prompt longer than the model's context.
    """
    if not items:
        raise ToolkitError("no items to evaluate")
    multiple_choice = [item.is_multiple_choice for item in items]
    if any(multiple_choice) and not all(multiple_choice):
        raise ToolkitError("the items mix multiple-choice and open questions: evaluate them separately")
    result = {
        "model": model.cfg.model_name,
        **precision(model),
        "condition": condition.to_dict(),
        "condition_label": condition.label,
        "seed": seed,
    }
    if all(multiple_choice):
        if scoring not in SCORING_MODES:
            raise ToolkitError(f"unknown scoring mode {scoring!r}: use one of {', '.join(SCORING_MODES)}")
        normalise = normalise or DEFAULT_NORMALISATION[scoring]
        task = Task(
            "multiple_choice",
            "choice",
            None,
            ("accuracy", "margin"),
            scoring=scoring,
            normalise=normalise,
            answer_prefix=answer_prefix,
        )
    else:
        task = Task("generation", "refusal", None, ("refusal_rate",), max_new_tokens=max_new_tokens)
    prompts = task.render(tokenizer, items, condition, personas=personas, seed=seed)
    records = task.measure(
        model,
        tokenizer,
        items,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        engine=engine,
    )
    metrics = [task.item_metrics(item, record) for item, record in zip(items, records)]
    rows = [
        {
            "id": item.id,
            "category": item.category,
            "persona": prompt.persona,
            "placement": prompt.placement,
            "prompt_sha256": prompt.sha256,
            "prompt": prompt.text,
            **_item_fields(task, item, record, values),
        }
        for item, prompt, record, values in zip(items, prompts, records, metrics)
    ]
    if task.is_choice:
        result.update(
            task="multiple_choice",
            settings={"scoring": scoring, "answer_prefix": answer_prefix, "normalise": normalise},
            metric="accuracy",
            chance=sum(values["chance"] for values in metrics) / len(items),
            margin=bootstrap_mean([row["margin"] for row in rows], seed=seed).to_dict(),
        )
    else:
        result.update(
            task="generation",
            settings={
                "max_new_tokens": max_new_tokens,
                "decoding": "greedy",
                "refusal_rule": "keyword",
                **({"engine": engine.name} if engine is not None and engine.name != "hf" else {}),
            },
            metric="refusal_rate",
        )
    values = [float(row[METRIC_FIELD[result["metric"]]]) for row in rows]
    result["summary"] = bootstrap_mean(values, seed=seed).to_dict()
    result["by_category"] = _by_category([row["category"] for row in rows], values, seed)
    result["items"] = rows
    return result


def _item_fields(task: Task, item: Item, record: Mapping, values: Mapping) -> dict:
    """An item row's measured fields: the prediction and margin, or the response and refusal."""
    if task.is_choice:
        choice = choice_result(item, record)
        return {
            "answer": item.answer,
            "predicted": choice.predicted,
            "correct": choice.correct,
            "margin": values["margin"],
            "logprobs": list(choice.logprobs),
        }
    return {"response": record["response"], "refused": bool(values["refusal_rate"])}


def _by_category(categories: Sequence[str], values: Sequence[float], seed: int) -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for category, value in zip(categories, values):
        groups[category].append(value)
    return {category: bootstrap_mean(group, seed=seed).to_dict() for category, group in sorted(groups.items())}
