"""Verifiable instructions: attached deterministically, checked strictly and loosely."""

from __future__ import annotations

import pytest

from interventions.measure.instructions import attach_instructions, check_response
from probes.core.datasets import load_dataset
from probes.core.errors import ToolkitError
from probes.core.items import Item


def test_verifiable_instructions_are_attached_deterministically_and_checked():
    base = load_dataset("mtbench")[:20]
    attached = attach_instructions(base, seed=0)
    assert attached == attach_instructions(base, seed=0)
    assert attached != attach_instructions(base, seed=1)
    lowercase = Item("q", "t", "Tell me about cats.", "writing")
    (item,) = attach_instructions([lowercase], types=["change_case:english_lowercase"])
    assert item.prompt.startswith("Tell me about cats.") and "lowercase" in item.prompt
    assert check_response(item, "cats are small furry animals.") == (True, True)
    assert check_response(item, "Cats are small furry animals.") == (False, False)
    (quoted,) = attach_instructions([lowercase], types=["startend:quotation"])
    assert check_response(quoted, '"Cats purr."')[0] and not check_response(quoted, "Cats purr.")[0]
    with pytest.raises(ToolkitError, match="unknown instruction type"):
        attach_instructions([lowercase], types=["no:such"])
