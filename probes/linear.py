"""Linear probes on activations: logistic regression, difference of means, and LDA.

Every probe ends as one weight vector per class (one for a binary target) and a bias in the
raw activation space, so it can be saved, reloaded, read as a direction, and applied inside
the model. Scores are held-out accuracy and AUC, each with a bootstrap 95% CI over test items;
the controls (the same probe fitted to shuffled labels, and a probe restricted to random
directions) show where chance and a random projection sit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression

from probes.core.errors import ToolkitError
from probes.core.files import load_tensors, save_tensors
from probes.core.stats import Estimate, resample_weights, weighted_auc

PROBE_KINDS = ("logistic", "diff-means", "lda")


@dataclass(frozen=True)
class LinearProbe:
    """A fitted linear probe in raw activation space: ``decision(x) = x @ weights.T + bias``.

    ``predict(x)`` gives class names (a binary probe predicts ``classes[1]`` where its score is above 0, a
    multi-class one the class of the largest score); ``direction`` is a binary probe's unit weight vector.

    Args:
        kind: ``logistic``, ``diff-means``, ``lda`` (or ``random-direction`` for the control).
        classes: the class names, sorted; a binary probe's positive class is ``classes[1]``.
        weights: ``[k, d]`` float array: one row per class, or a single row (k = 1) for two classes.
        bias: ``[k]`` float array.
    """

    kind: str
    classes: tuple[str, ...]
    weights: Float[np.ndarray, "k d"]  # k = 1 for two classes (positive class = classes[1])
    bias: Float[np.ndarray, " k"]

    def decision(self, x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n k"]:
        return np.asarray(x, dtype=np.float64) @ self.weights.T + self.bias

    def predict(self, x: Float[np.ndarray, "n d"]) -> np.ndarray:
        scores = self.decision(x)
        if len(self.classes) == 2:
            return np.where(scores[:, 0] > 0, self.classes[1], self.classes[0])
        return np.array(self.classes)[scores.argmax(axis=1)]

    @property
    def direction(self) -> Float[np.ndarray, " d"]:
        """Unit vector of a binary probe (towards ``classes[1]``)."""
        if len(self.classes) != 2:
            raise ToolkitError("a multi-class probe has one direction per class: use .weights")
        return self.weights[0] / np.linalg.norm(self.weights[0])


def fit_probe(kind: str, x: np.ndarray, y: Sequence[str], *, regularisation: float = 0.1, seed: int = 0) -> LinearProbe:
    """Fit a probe of ``kind`` to activations ``x`` [n, d] and labels ``y``.

    Args:
        kind: ``logistic`` (L2 logistic regression on standardised features, folded back into raw-space
            weights), ``diff-means`` (difference of class means; one-vs-rest for more classes) or ``lda``
            (shrinkage LDA).
        x: activations ``[n, d]`` (array-like; converted to float64).
        y: one class label per row; two or more distinct labels.
        regularisation: the logistic probe's inverse L2 strength on standardised features; the default (0.1)
            is firm because probes here see a few hundred examples in hundreds of dimensions.
        seed: the logistic solver's random state.

    Returns:
        the ``LinearProbe`` (classes sorted; one weight row for two classes, one per class otherwise).

    Raises:
        ToolkitError: an unknown kind, or fewer than two classes in ``y``.
    """
    if kind not in PROBE_KINDS:
        raise ToolkitError(f"unknown probe {kind!r}: use one of {', '.join(PROBE_KINDS)}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    classes = tuple(sorted(set(y.tolist())))
    if len(classes) < 2:
        raise ToolkitError(f"a probe needs two classes in its training data, got {list(classes)}")
    if kind == "diff-means":
        return _difference_of_means(x, y, classes)
    if kind == "lda":
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)
        return LinearProbe(kind, classes, np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_))
    # logistic on standardised features, folded back into raw-space weights
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=regularisation, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    weights = np.atleast_2d(model.coef_) / scale
    bias = np.atleast_1d(model.intercept_) - weights @ mean
    return LinearProbe(kind, classes, weights, bias)


def _difference_of_means(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> LinearProbe:
    means = {label: x[y == label].mean(axis=0) for label in classes}
    if len(classes) == 2:
        low, high = means[classes[0]], means[classes[1]]
        weight = high - low
        return LinearProbe("diff-means", classes, weight[None, :], np.array([-weight @ (low + high) / 2]))
    weights, biases = [], []
    for label in classes:
        rest = x[y != label].mean(axis=0)
        weight = means[label] - rest
        weights.append(weight)
        biases.append(-weight @ (means[label] + rest) / 2)
    return LinearProbe("diff-means", classes, np.stack(weights), np.array(biases))


@dataclass(frozen=True)
class Score:
    """A probe's held-out accuracy and AUC, each an ``Estimate`` over the same test items."""

    accuracy: Estimate
    auc: Estimate

    @property
    def n(self) -> int:
        return self.auc.n

    def to_dict(self) -> dict:
        """Table columns: ``accuracy``, ``accuracy_low``, ``accuracy_high``, ``auc``, ``auc_low``,
        ``auc_high``, ``n``."""
        return {**self.accuracy.columns("accuracy"), **self.auc.columns("auc"), "n": self.n}


def _probabilities(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _auc(y: np.ndarray, scores: np.ndarray, classes: tuple[str, ...], weights: np.ndarray) -> np.ndarray:
    """AUC (binary, or macro one-vs-rest over class probabilities) for each weighting."""
    if len(classes) == 2:
        return weighted_auc(y == classes[1], scores[:, 0], weights)
    probabilities = _probabilities(scores)
    return np.mean([weighted_auc(y == label, probabilities[:, k], weights) for k, label in enumerate(classes)], axis=0)


def score_probe(probe: LinearProbe, x: np.ndarray, y: Sequence[str], *, n_resamples: int = 500, seed: int = 0) -> Score:
    """Held-out accuracy and AUC with percentile-bootstrap 95% CIs (resampling test items).

    Args:
        probe: the fitted probe.
        x: test activations ``[n, d]``.
        y: the test labels, one per row.
        n_resamples: bootstrap resamples.
        seed: the resampling seed.

    Returns:
        a ``Score`` with ``accuracy`` and ``auc`` estimates (binary AUC, or macro one-vs-rest AUC over softmax
        class probabilities for more classes); ``Score.to_dict()`` gives table columns.

    Raises:
        ToolkitError: no test items.
    """
    y = np.asarray(y)
    if len(y) == 0:
        raise ToolkitError("no test items to score the probe on")
    scores = probe.decision(x)
    correct = (probe.predict(x) == y).astype(np.float64)
    weights = resample_weights(len(y), n_resamples, seed)
    accuracy = Estimate.from_resamples(correct.mean(), weights @ correct / len(y), len(y))
    point_auc = _auc(y, scores, probe.classes, np.ones((1, len(y))))[0]
    auc = Estimate.from_resamples(point_auc, _auc(y, scores, probe.classes, weights), len(y), defined_only=True)
    return Score(accuracy, auc)


def shuffled_label_control(kind: str, x_train, y_train, x_test, y_test, *, seed: int = 0) -> Score:
    """The same probe fitted to training labels in random order: where chance sits."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(y_train))
    return score_probe(fit_probe(kind, x_train, shuffled, seed=seed), x_test, y_test, seed=seed)


def random_direction_control(x_train, y_train, x_test, y_test, *, seed: int = 0) -> Score:
    """A logistic probe that may only read random directions (one per class, at least one):
    what a random projection of the same activations separates."""
    classes = sorted(set(np.asarray(y_train).tolist()))
    k = 1 if len(classes) == 2 else len(classes)
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((np.asarray(x_train).shape[1], k))
    basis /= np.linalg.norm(basis, axis=0, keepdims=True)
    inner = fit_probe("logistic", np.asarray(x_train) @ basis, y_train, seed=seed)
    probe = LinearProbe("random-direction", inner.classes, inner.weights @ basis.T, inner.bias)
    return score_probe(probe, x_test, y_test, seed=seed)


def as_numpy(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    return (
        tensor.detach().cpu().double().numpy()
        if isinstance(tensor, torch.Tensor)
        else np.asarray(tensor, dtype=np.float64)
    )


def save_probe(path: str | Path, probe: LinearProbe, metadata: Mapping) -> Path:
    """Write ``probe`` (weights, bias, kind and classes) with ``metadata`` as safetensors, atomically.

    Args:
        path: the ``.safetensors`` file to write.
        probe: the probe.
        metadata: JSON-serialisable facts to keep with it (its ``kind`` and ``classes`` are added).

    Returns:
        ``path``, as a ``Path``.
    """
    return save_tensors(
        path,
        {"weights": probe.weights, "bias": probe.bias},
        {**metadata, "kind": probe.kind, "classes": list(probe.classes)},
    )


def load_probe(path: str | Path) -> tuple[LinearProbe, dict]:
    """Read back a probe written by ``save_probe``.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        ``(probe, metadata)``.

    Raises:
        ToolkitError: no readable toolkit file at ``path``, or one that holds no probe (e.g. a direction file).
    """
    tensors, metadata = load_tensors(path)
    if "weights" not in tensors or "classes" not in metadata:
        raise ToolkitError(f"{path} holds no probe (weights and classes): it may be a direction file")
    probe = LinearProbe(
        metadata["kind"], tuple(metadata["classes"]), tensors["weights"].numpy(), tensors["bias"].numpy()
    )
    return probe, metadata
