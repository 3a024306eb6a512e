"""How an item becomes a prompt: its question text, its answer continuations, its rendering.

Multiple-choice items are shown in one of two scoring modes: ``letter`` lists the options as
"A. ..." and the answers are the letters; ``cloze`` shows the question alone and the answers are
the options' own texts. ``render_items`` renders a list of items under a persona condition (and
a prompt format, ``probes.core.formats``), the one place every command turns items into prompts.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from probes.core.errors import ToolkitError
from probes.core.formats import DEFAULT_FORMAT
from probes.core.items import LETTERS, Item
from probes.core.personas import Persona
from probes.core.prompts import Condition, RenderedPrompt, render

__all__ = ["SCORING_MODES", "ScoringMode", "question_text", "continuations", "render_items"]

ScoringMode = Literal["letter", "cloze"]
SCORING_MODES = ("letter", "cloze")


def question_text(item: Item, mode: ScoringMode) -> str:
    """The query shown to the model: options listed for letter mode, the question alone for cloze."""
    if not item.is_multiple_choice:
        raise ToolkitError(f"item {item.id} has no choices and answer: it cannot be scored as multiple choice")
    if mode == "cloze":
        return item.prompt
    if mode != "letter":
        raise ToolkitError(f"unknown scoring mode {mode!r}: use one of {', '.join(SCORING_MODES)}")
    options = "\n".join(f"{LETTERS[index]}. {choice}" for index, choice in enumerate(item.choices))
    return f"{item.prompt}\n{options}"


def continuations(item: Item, mode: ScoringMode) -> list[str]:
    if mode == "letter":
        return [f" {LETTERS[index]}" for index in range(len(item.choices))]
    return [f" {choice.strip()}" for choice in item.choices]


def render_items(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    condition: Condition,
    *,
    scoring: str | None = None,
    answer_prefix: str = "",
    personas: Mapping[str, Persona] | None = None,
    seed: int = 0,
    prompt_format: str = DEFAULT_FORMAT,
) -> list[RenderedPrompt]:
    """Render each item's first turn under ``condition`` (options listed for letter scoring).

    Args:
        tokenizer: the model's tokenizer (its chat template renders the prompts).
        items: the items; with ``scoring`` set, each must be multiple choice.
        condition: the persona condition every prompt is rendered under.
        scoring: ``letter`` (options listed as "A. ..."), ``cloze`` (the question alone), or None (the prompt as is).
        answer_prefix: text that begins the assistant turn. In cloze mode an item's own answer stem
            (``meta["answer_stem"]``, e.g. "The capital of France is") takes its place.
        personas: a persona library in place of the built-in one.
        seed: the random persona's seed.
        prompt_format: how the question and the answer prefix or stem are laid out (``plain``, ``qa``).

    Returns:
        one ``RenderedPrompt`` per item, in order.

    Raises:
        ToolkitError: an unknown scoring mode or format, an item without choices when scoring, or a bad condition for
            an item (see ``render``).
    """
    return [
        render(
            tokenizer,
            question_text(item, scoring) if scoring else item.prompt,
            condition,
            personas=personas,
            item_id=item.id,
            item_category=item.category,
            answer_prefix=item.meta.get("answer_stem", answer_prefix) if scoring == "cloze" else answer_prefix,
            seed=seed,
            prompt_format=prompt_format,
        )
        for item in items
    ]
