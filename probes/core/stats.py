"""Means with bootstrap confidence intervals, and paired differences."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from probes.core.errors import ToolkitError

MIN_SIGNIFICANT_N = 5


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile-bootstrap confidence interval and the sample size."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero (meaningful for differences). A bootstrap over
        fewer than ``MIN_SIGNIFICANT_N`` values cannot show its own uncertainty (one value gives
        a zero-width interval), so such an estimate is never called significant."""
        return self.n >= MIN_SIGNIFICANT_N and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def bootstrap_mean(
    values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (resampling items)."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ToolkitError("cannot estimate a mean from no values")
    if not 0 < confidence < 1:
        raise ToolkitError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, data.size, size=(n_resamples, data.size))
    means = data[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size), confidence)


def paired_difference(
    treated: Sequence[float], baseline: Sequence[float], n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Mean of ``treated - baseline`` over the same items, with a bootstrap interval."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ToolkitError(f"paired values must align item by item, got {a.size} and {b.size}")
    return bootstrap_mean(a - b, n_resamples=n_resamples, seed=seed)


def bootstrap_correlation(
    x: Sequence[float], y: Sequence[float], *, method: str = "pearson", n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Pearson or Spearman correlation with a percentile-bootstrap interval (resampling pairs)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ToolkitError(f"a correlation needs paired values, got {a.size} and {b.size}")
    if method not in ("pearson", "spearman"):
        raise ToolkitError(f"unknown correlation {method!r}: use pearson or spearman")
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), int(a.size))
    if method == "spearman":
        from scipy.stats import rankdata

        a, b = rankdata(a), rankdata(b)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, a.size, size=(n_resamples, a.size))
    xa, yb = a[draws], b[draws]
    xa = xa - xa.mean(axis=1, keepdims=True)
    yb = yb - yb.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (xa * yb).sum(axis=1) / np.sqrt((xa**2).sum(axis=1) * (yb**2).sum(axis=1))
    values = values[np.isfinite(values)]
    low, high = np.quantile(values, [0.025, 0.975])
    return Estimate(float(np.corrcoef(a, b)[0, 1]), float(low), float(high), int(a.size))
