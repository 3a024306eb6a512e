"""Persona directions: what a persona adds to the residual stream, and how they relate.

A persona direction at one layer is the mean, over the same queries, of the activation with the
persona minus the activation without it (paired by query). Bootstrap CIs resample queries.
``shared_structure`` answers "one shared persona direction, or one per persona?" with the mean
pairwise cosine and the share of the directions' energy along their common first component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from jaxtyping import Float

from probes.core.errors import ToolkitError
from probes.core.stats import Estimate, resample_indices


def _check_paired(with_persona: np.ndarray, without: np.ndarray) -> None:
    if with_persona.shape != without.shape:
        raise ToolkitError(
            f"persona and no-persona activations must pair query by query: {with_persona.shape} vs {without.shape}"
        )


def persona_differences(
    with_persona: Float[np.ndarray, "n d"], without: Float[np.ndarray, "n d"]
) -> Float[np.ndarray, "n d"]:
    """Per-query differences of activations with and without a persona (their mean is the persona direction).

    Args:
        with_persona: activations ``[n, d]`` of the queries under the persona.
        without: activations ``[n, d]`` of the same queries, in the same order, without it.

    Returns:
        ``with_persona - without`` as float64 ``[n, d]``.

    Raises:
        ToolkitError: the two arrays differ in shape.
    """
    _check_paired(with_persona, without)
    return np.asarray(with_persona, dtype=np.float64) - np.asarray(without, dtype=np.float64)


def norm_estimate(differences: np.ndarray, *, n_resamples: int = 500, seed: int = 0) -> Estimate:
    """Norm of the mean difference (the direction's length), with a bootstrap CI over queries."""
    draws = resample_indices(len(differences), n_resamples, seed)
    values = np.linalg.norm(differences[draws].mean(axis=1), axis=1)
    return Estimate.from_resamples(np.linalg.norm(differences.mean(axis=0)), values, len(differences))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def cosine_estimate(
    differences_a: np.ndarray, differences_b: np.ndarray, *, n_resamples: int = 500, seed: int = 0
) -> Estimate:
    """Cosine between two mean directions measured on the same queries, CI resampling queries."""
    if len(differences_a) != len(differences_b):
        raise ToolkitError("cosine CIs resample queries: both directions need the same queries")
    draws = resample_indices(len(differences_a), n_resamples, seed)
    a, b = differences_a[draws].mean(axis=1), differences_b[draws].mean(axis=1)
    values = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    point = cosine(differences_a.mean(axis=0), differences_b.mean(axis=0))
    return Estimate.from_resamples(point, values, len(differences_a))


def cosine_matrix(directions: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(directions)
    stacked = np.stack([directions[name] for name in names]).astype(np.float64)
    unit = stacked / (np.linalg.norm(stacked, axis=1, keepdims=True) + 1e-12)
    return names, unit @ unit.T


@dataclass(frozen=True)
class SharedStructure:
    mean_pairwise_cosine: float
    first_component_share: float  # fraction of the directions' summed squared norm along one axis
    n_directions: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def shared_structure(directions: Mapping[str, np.ndarray]) -> SharedStructure:
    """How much several persona directions have in common.

    Args:
        directions: name -> direction vector ``[d]`` (at least two).

    Returns:
        a ``SharedStructure``: ``mean_pairwise_cosine`` (over distinct pairs), ``first_component_share`` (the
        share of the directions' summed squared norm along their first singular vector, uncentred) and
        ``n_directions``.

    Raises:
        ToolkitError: fewer than two directions.
    """
    names, matrix = cosine_matrix(directions)
    if len(names) < 2:
        raise ToolkitError("shared structure needs at least two directions")
    off_diagonal = matrix[~np.eye(len(names), dtype=bool)]
    stacked = np.stack([directions[name] for name in names]).astype(np.float64)
    singular = np.linalg.svd(stacked, compute_uv=False)
    return SharedStructure(float(off_diagonal.mean()), float(singular[0] ** 2 / (singular**2).sum()), len(names))
