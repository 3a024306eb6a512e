"""Train/test splits for probes, made before any fitting.

- ``held_out_split``: whole groups (a source's category or subject) go to the test side, so a
  probe cannot win by recognising a data set's format or topic. Every class keeps at least one
  group on each side.
- ``in_distribution_split``: items of the training groups split at random, stratified by class
  (the number to set beside the held-out score).
- ``balance``: subsample every class to the size of the smallest, so chance is 1/k.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from probes.core.errors import ToolkitError


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the labelled items
    test: np.ndarray
    test_groups: tuple[str, ...] = ()

    def check_disjoint(self, groups: Sequence[str]) -> None:
        """Raise if any group has items on both sides (never true of a held-out split)."""
        shared = {groups[i] for i in self.train} & {groups[i] for i in self.test}
        if shared and self.test_groups:
            raise ToolkitError(f"groups on both sides of a held-out split: {sorted(shared)[:3]}")


def _groups_by_class(labels: Sequence[str], groups: Sequence[str]) -> dict[str, list[str]]:
    by_class: dict[str, set[str]] = defaultdict(set)
    for label, group in zip(labels, groups):
        by_class[label].add(group)
    return {label: sorted(members) for label, members in sorted(by_class.items())}


def held_out_split(labels: Sequence[str], groups: Sequence[str], test_fraction: float = 0.3, seed: int = 0) -> Split:
    """Hold out about ``test_fraction`` of each class's groups (at least one, never all).

    A group shared by two classes goes wholly to one side.

    Args:
        labels: one class label per item.
        groups: one group per item (e.g. ``"mmlu:anatomy"``): the unit moved to the test side whole.
        test_fraction: the share of each class's groups to hold out (rounded; at least one, never all).
        seed: the seed that picks the held-out groups.

    Returns:
        a ``Split``: ``train`` and ``test`` index arrays into the items (sorted) and the held-out ``test_groups``.

    Raises:
        ToolkitError: ``labels`` and ``groups`` differ in length, or a class has a single group.
    """
    if len(labels) != len(groups):
        raise ToolkitError("labels and groups must have one entry per item")
    rng = np.random.default_rng(seed)
    test_groups: set[str] = set()
    for label, members in _groups_by_class(labels, groups).items():
        if len(members) < 2:
            raise ToolkitError(
                f"class {label!r} has a single group ({members[0]}): a held-out split needs two or more per class"
            )
        count = min(len(members) - 1, max(1, round(test_fraction * len(members))))
        test_groups.update(rng.choice(members, size=count, replace=False).tolist())
    # a group shared by two classes goes wholly to one side
    test = np.array([i for i, group in enumerate(groups) if group in test_groups])
    train = np.array([i for i, group in enumerate(groups) if group not in test_groups])
    return Split(train, test, tuple(sorted(test_groups)))


def in_distribution_split(
    labels: Sequence[str], indices: np.ndarray, test_fraction: float = 0.3, seed: int = 0
) -> Split:
    """A random split of ``indices``, stratified by class.

    Args:
        labels: one class label per item (indexed by the entries of ``indices``).
        indices: the items to split (e.g. a held-out split's ``train``).
        test_fraction: the share of each class to put on the test side (rounded, at least one item).
        seed: the shuffling seed.

    Returns:
        a ``Split`` with sorted ``train`` and ``test`` index arrays and no ``test_groups``.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    by_class: dict[str, list[int]] = defaultdict(list)
    for index in indices:
        by_class[labels[index]].append(int(index))
    for members in by_class.values():
        members = rng.permutation(members).tolist()
        cut = max(1, round(test_fraction * len(members)))
        test += members[:cut]
        train += members[cut:]
    return Split(np.array(sorted(train)), np.array(sorted(test)))


def balance(indices: np.ndarray, labels: Sequence[str], seed: int = 0) -> np.ndarray:
    """The same number of items from every class (the smallest class's count)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for index in indices:
        by_class[labels[index]].append(int(index))
    if len(by_class) < 2:
        raise ToolkitError(f"a probe needs two classes, got {sorted(by_class) or 'none'}")
    size = min(len(members) for members in by_class.values())
    chosen = [rng.choice(members, size=size, replace=False) for members in by_class.values()]
    return np.sort(np.concatenate(chosen))
