"""The unit every data set is made of: one benchmark item."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Item", "LETTERS"]

LETTERS = "ABCDEFGHIJ"  # option letters of multiple-choice items, in order


@dataclass(frozen=True)
class Item:
    """One benchmark item. ``turns`` holds every user turn, ``prompt`` is the first."""

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
