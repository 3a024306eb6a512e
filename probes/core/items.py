"""The unit every data set is made of: one benchmark item."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Item", "LETTERS", "generated_item"]

LETTERS = "ABCDEFGHIJ"  # option letters of multiple-choice items, in order


@dataclass(frozen=True)
class Item:
    """One benchmark item (a question, a request or a multi-turn conversation).

    Args:
        id: unique id within its data set, e.g. ``"mmlu/anatomy/3"`` or ``"capitals/FR"``.
        source: the data set it came from (``mmlu``, ``capitals``, ``mtbench``, ``harmbench``, or a user file's stem).
        prompt: the first user turn, the query text.
        category: the grouping used for stratified sampling and per-category reports (MMLU: super-category).
        subcategory: a finer grouping, or None (MMLU: subject; HarmBench: functional category).
        choices: the option texts of a multiple-choice item, else None.
        answer: 0-based index of the correct choice, else None.
        turns: every user turn in order; ``prompt`` is the first.
        meta: any other fields (e.g. ``answer_stem`` for cloze scoring); not part of equality or hashing.
    """

    id: str
    source: str
    prompt: str
    category: str
    subcategory: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    turns: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_multiple_choice(self) -> bool:
        return self.choices is not None and self.answer is not None


def generated_item(source: str, key: str, text: str, subcategory: str) -> Item:
    """One query of a source built from reference data (``probes.core.facts``, ``probes.core.lexicon``): id
    ``"{source}/{key}"``, ``category`` = the source, ``text`` (first letter capitalised) as its prompt and one turn."""
    prompt = text[0].upper() + text[1:]
    return Item(
        id=f"{source}/{key}", source=source, prompt=prompt, category=source, subcategory=subcategory, turns=(prompt,)
    )
