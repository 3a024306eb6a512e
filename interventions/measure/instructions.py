"""Instruction following without a judge: IFEval's verifiable instructions attached to real queries.

The checkers come from the ``if-verifiable`` package (the IFEval instruction registry). Each
query gets one instruction, drawn with a seed from the item id, whose own description is
appended to the query ("... Your entire response should be in English, and in all lowercase
letters."). A response is checked strictly and loosely (the loose check also accepts the
response with its first or last line, or markdown asterisks, removed), as IFEval defines them.
Only instruction types that work offline and fit a short answer are drawn (see
``INSTRUCTION_TYPES``); the sentence counters need NLTK data that is not installed.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Sequence

from probes.core.errors import ToolkitError
from probes.core.items import Item

INSTRUCTION_TYPES = (
    "change_case:english_capital",
    "change_case:english_lowercase",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:constrained_response",
    "detectable_format:json_format",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:title",
    "keywords:existence",
    "keywords:forbidden_words",
    "punctuation:no_comma",
    "startend:end_checker",
    "startend:quotation",
)


def _registry() -> dict:
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as error:  # pragma: no cover - a dependency of the toolkit
        raise ToolkitError(f"instruction checkers unavailable ({error}): run `pip install if-verifiable`") from error
    return INSTRUCTION_DICT


@contextmanager
def _seeded_random(seed: str) -> Iterator[None]:
    """The checkers draw their arguments from the global ``random``: seed it, then restore it."""
    state = random.getstate()
    random.seed(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    try:
        yield
    finally:
        random.setstate(state)


def attach_instructions(
    items: Sequence[Item], *, seed: int = 0, types: Sequence[str] = INSTRUCTION_TYPES
) -> list[Item]:
    """Copies of ``items`` whose prompt ends with one verifiable instruction each."""
    registry = _registry()
    unknown = sorted(set(types) - set(registry))
    if unknown:
        raise ToolkitError(f"unknown instruction type {unknown[0]!r}: use one of {', '.join(INSTRUCTION_TYPES)}")
    attached = []
    for item in items:
        with _seeded_random(f"{seed}:{item.id}"):
            instruction_id = random.choice(sorted(types))
            checker = registry[instruction_id](instruction_id)
            description = checker.build_description()
            kwargs = checker.get_instruction_args() or {}
        prompt = f"{item.prompt.rstrip()} {description}"
        attached.append(
            replace(
                item,
                id=f"ifeval/{item.id}",
                source="ifeval",
                prompt=prompt,
                turns=(prompt,),
                meta={
                    **item.meta,
                    "instruction_id": instruction_id,
                    "instruction_kwargs": kwargs,
                    "query": item.prompt,
                },
            )
        )
    return attached


def check_response(item: Item, response: str) -> tuple[bool, bool]:
    """Whether ``response`` follows the item's instruction: (strict, loose)."""
    import langdetect
    from if_verifiable.common import evaluate_instructions

    langdetect.DetectorFactory.seed = 0  # the case checkers detect the language; make it deterministic

    if "instruction_id" not in item.meta:
        raise ToolkitError(f"item {item.id} carries no instruction: build it with attach_instructions")
    _, scores = evaluate_instructions(
        response=response,
        instruction_id_list=[item.meta["instruction_id"]],
        kwargs_list=[item.meta["instruction_kwargs"]],
        prompt=item.prompt,
        instruction_registry=_registry(),
    )
    return bool(scores.binary_strict), bool(scores.binary_loose)
