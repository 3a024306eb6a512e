"""The toolkit's statistics: one estimate type and the bootstrap primitives behind it.

Every number a report, table or figure shows with an uncertainty is an ``Estimate``: a mean
(or a difference, ratio, AUC, correlation, norm...) with its percentile-bootstrap confidence
interval and the sample size. In memory it stays an ``Estimate``; on disk it is flattened into
table columns with ``Estimate.columns`` (``auc``, ``auc_low``, ``auc_high``) and read back
with ``Estimate.from_columns``; in text it is written by ``Estimate.format``
(``0.53 [0.41, 0.66]``).

Primitives (each seeded, so the same seed draws the same resamples):

- ``resample_indices`` / ``resample_weights``: bootstrap resamples of n items, as index rows or
  as multiplicity rows (for statistics computed with item weights, e.g. the AUC);
- ``percentile_interval`` and ``Estimate.from_resamples``: the interval from resampled values;
- ``bootstrap_mean``, ``paired_difference``, ``bootstrap_ratio`` (ratio of means) and
  ``bootstrap_auc`` (binary AUC; ``weighted_auc`` is its weighted form); the correlation is
  ``probes.core.correlation``'s.

Statistics that are undefined in some resamples (a ratio over a zero mean, an AUC of a resample
missing a class, a correlation of a resample where one variable is constant) leave those resamples
out; the estimate records the share left out (``Estimate.dropped``), and above
``MAX_UNDEFINED`` (5%) it gives no interval: the defined resamples are then a biased subset (those
that happen to hold the few points the statistic rests on), and their interval would overstate.
An estimate without an interval says why in ``Estimate.note``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from probes.core.errors import ToolkitError

MIN_SIGNIFICANT_N = 5
MAX_UNDEFINED = 0.05  # above this share of undefined resamples, an estimate gives no interval
QUANTILES_95 = (0.025, 0.975)  # the percentile 95% interval


@dataclass(frozen=True)
class Estimate:
    """A mean (or difference, ratio, AUC...) with its percentile-bootstrap confidence interval and the sample size.

    Args:
        mean: the point estimate.
        low, high: the interval's bounds.
        n: the sample size (items the bootstrap resampled).
        confidence: the interval's coverage (default 0.95).
        dropped: the share of bootstrap resamples left out because the statistic was undefined in them.
        note: what the reader must know about the estimate (why it has no interval, or the few values it rests on).
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    dropped: float = 0.0
    note: str = ""

    @property
    def has_interval(self) -> bool:
        """Whether both bounds are numbers (an estimate without one says why in ``note``)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high))

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below zero, whatever n is."""
        return self.low > 0 or self.high < 0

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero (meaningful for differences). A bootstrap over
        fewer than ``MIN_SIGNIFICANT_N`` values cannot show its own uncertainty (one value gives
        a zero-width interval), so such an estimate is never called significant."""
        return self.n >= MIN_SIGNIFICANT_N and self.excludes_zero

    def to_dict(self) -> dict:
        """``{"mean", "low", "high", "n", "confidence"}`` (the JSON form of a lone estimate), with ``dropped`` and
        ``note`` where they are set."""
        flat = asdict(self)
        for key in ("dropped", "note"):
            if not flat[key]:
                del flat[key]
        return flat

    def columns(self, name: str, *, prefix: str | None = None, n: bool = False) -> dict:
        """The estimate as table columns: ``name`` holds the mean, ``{prefix}low`` and
        ``{prefix}high`` the interval, and with ``n`` also ``{prefix}n`` the sample size.
        ``prefix`` defaults to ``f"{name}_"``: ``columns("auc")`` gives ``auc``, ``auc_low``,
        ``auc_high``; ``columns("fraction", prefix="", n=True)`` gives ``fraction``, ``low``,
        ``high``, ``n``. The confidence level is not written (tables hold 95% intervals); ``{prefix}dropped`` and
        ``{prefix}note`` are, where they are set."""
        prefix = f"{name}_" if prefix is None else prefix
        flat = {name: self.mean, f"{prefix}low": self.low, f"{prefix}high": self.high}
        if n:
            flat[f"{prefix}n"] = self.n
        if self.dropped:
            flat[f"{prefix}dropped"] = self.dropped
        if self.note:
            flat[f"{prefix}note"] = self.note
        return flat

    @classmethod
    def from_columns(cls, row: Mapping, name: str, *, prefix: str | None = None, confidence: float = 0.95) -> Estimate:
        """The estimate that ``columns(name, prefix=prefix)`` flattened into ``row``. The sample
        size is read from ``{prefix}n``, else from the row's shared ``n``; a row with neither
        gives ``n = 0`` (such an estimate is never ``significant``: use ``excludes_zero``)."""
        prefix = f"{name}_" if prefix is None else prefix
        n = row.get(f"{prefix}n", row.get("n", 0))
        dropped, note = row.get(f"{prefix}dropped"), row.get(f"{prefix}note")  # absent, or blank in a CSV read back
        dropped = float(dropped) if isinstance(dropped, (int, float)) and np.isfinite(dropped) else 0.0
        return cls(
            row[name],
            row[f"{prefix}low"],
            row[f"{prefix}high"],
            n,
            confidence,
            dropped,
            note if isinstance(note, str) else "",
        )

    @classmethod
    def from_resamples(cls, point: float, resampled: np.ndarray, n: int, *, defined_only: bool = False) -> Estimate:
        """``point`` with the percentile 95% interval of its bootstrap ``resampled`` values. With ``defined_only``,
        resamples where the statistic is undefined are left out and their share is ``dropped``; above
        ``MAX_UNDEFINED`` the estimate has no interval and its ``note`` says why."""
        if not defined_only:
            return cls(float(point), *percentile_interval(resampled), n)
        values = np.asarray(resampled, dtype=float)
        dropped = float(np.mean(~np.isfinite(values))) if values.size else 1.0
        if dropped > MAX_UNDEFINED:
            note = (
                f"no interval: the statistic is undefined in {dropped:.0%} of resamples (more than "
                f"{MAX_UNDEFINED:.0%}), so the defined ones are a biased subset"
            )
            return cls(float(point), float("nan"), float("nan"), n, dropped=dropped, note=note)
        return cls(float(point), *percentile_interval(values, defined_only=True), n, dropped=dropped)

    def format(self, digits: int = 2, *, signed: bool = False, star: bool = False, n: bool = False) -> str:
        """``"0.53 [0.41, 0.66]"``: the mean and interval with ``digits`` decimals; ``signed`` writes
        a ``+`` before positive numbers, ``star`` appends ``*`` when the estimate is ``significant``,
        ``n`` appends `` (n=40)``. An estimate without an interval that says why (``note``) is written
        ``"0.10 (no interval: ...)"``; a note beside an interval, or a share of undefined resamples left out, is
        appended in brackets."""
        spec = f"{'+' if signed else ''}.{digits}f"
        if not self.has_interval and self.note:
            text = f"{self.mean:{spec}} ({self.note})"
        else:
            text = f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"
            remarks = ([self.note] if self.note else []) + (
                [f"{self.dropped:.1%} of resamples undefined, left out"] if self.dropped else []
            )
            if star and self.significant:
                text += "*"
            if remarks:
                text += f" ({'; '.join(remarks)})"
        return text + (f" (n={self.n})" if n else "")

    def __str__(self) -> str:
        return self.format(3, n=True)


def resample_indices(n: int, n_resamples: int, rng: np.random.Generator | int) -> np.ndarray:
    """``[n_resamples, n]`` item indices drawn with replacement (one bootstrap resample a row);
    ``rng`` is a generator (drawn from, so successive calls differ) or a seed."""
    return np.random.default_rng(rng).integers(0, n, size=(n_resamples, n))


def resample_weights(n: int, n_resamples: int, rng: np.random.Generator | int) -> np.ndarray:
    """``[n_resamples, n]`` bootstrap multiplicities (how often each item is drawn), as floats:
    for statistics computed with item weights."""
    return np.random.default_rng(rng).multinomial(n, np.full(n, 1 / n), size=n_resamples).astype(np.float64)


def central_quantiles(confidence: float) -> tuple[float, float]:
    """The quantiles bounding the central ``confidence`` share: ``((1 - c) / 2, 1 - (1 - c) / 2)``.
    (In floating point the lower one is not exactly 0.025 at 95%: ``bootstrap_mean`` uses these,
    the other estimates ``QUANTILES_95``, so that their numbers stay what they always were.)"""
    tail = (1 - confidence) / 2
    return tail, 1 - tail


def percentile_interval(
    resampled: np.ndarray, quantiles: Sequence[float] = QUANTILES_95, *, defined_only: bool = False
) -> tuple[float, float]:
    """The percentile interval of bootstrap ``resampled`` values. With ``defined_only``,
    resamples where the statistic is undefined (NaN or infinite, e.g. a ratio over a zero mean)
    are left out first, and no defined resample gives ``(nan, nan)``."""
    values = np.asarray(resampled, dtype=float)
    if defined_only:
        values = values[np.isfinite(values)]
        if not values.size:
            return float("nan"), float("nan")
    low, high = np.quantile(values, list(quantiles))
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (resampling items).

    Args:
        values: one number per item, a flat sequence.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, strictly between 0 and 1.
        seed: the resampling seed (the same seed draws the same resamples).

    Returns:
        the ``Estimate``: mean, interval, ``n = len(values)`` and ``confidence``.

    Raises:
        ToolkitError: no values (or not a flat sequence), or a confidence outside (0, 1).
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ToolkitError("cannot estimate a mean from no values")
    if not 0 < confidence < 1:
        raise ToolkitError(f"confidence must be between 0 and 1, got {confidence}")
    means = data[resample_indices(data.size, n_resamples, seed)].mean(axis=1)
    low, high = percentile_interval(means, central_quantiles(confidence))
    return Estimate(float(data.mean()), low, high, int(data.size), confidence)


def paired_difference(
    treated: Sequence[float], baseline: Sequence[float], n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Mean of ``treated - baseline`` over the same items, with a bootstrap 95% interval.

    Args:
        treated, baseline: one number per item each, aligned item by item.
        n_resamples: bootstrap resamples (the pairs are resampled together).
        seed: the resampling seed.

    Returns:
        the ``Estimate`` of the mean paired difference.

    Raises:
        ToolkitError: the two sequences differ in shape, or are empty.
    """
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ToolkitError(f"paired values must align item by item, got {a.size} and {b.size}")
    return bootstrap_mean(a - b, n_resamples=n_resamples, seed=seed)


def bootstrap_ratio(
    numerator: np.ndarray, denominator: np.ndarray, *, n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Ratio of means ``mean(numerator) / mean(denominator)`` with a bootstrap 95% CI resampling
    items (each item's numerator and denominator stay together); NaN where the denominator's
    mean is zero."""
    numerator, denominator = np.asarray(numerator), np.asarray(denominator)
    draws = resample_indices(len(numerator), n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = numerator[draws].mean(axis=1) / denominator[draws].mean(axis=1)
    point = float(numerator.mean() / denominator.mean()) if denominator.mean() != 0 else float("nan")
    return Estimate.from_resamples(point, values, len(numerator), defined_only=True)


def weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Binary AUC under each row of item ``weights`` [b, n] (bootstrap multiplicities): the
    weighted share of (positive, negative) pairs ranked correctly, ties counting half. NaN for
    a row that leaves a class out."""
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    totals = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bi,ij,bj->b", w_pos, wins, w_neg) / totals


def bootstrap_auc(positive: np.ndarray, scores: np.ndarray, *, n_resamples: int = 500, seed: int = 0) -> Estimate:
    """AUC of ``scores`` for the ``positive`` items with a bootstrap 95% CI resampling items
    (resamples missing a class are left out)."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    values = weighted_auc(positive, scores, resample_weights(n, n_resamples, seed))
    point = weighted_auc(positive, scores, np.ones((1, n)))[0]
    return Estimate.from_resamples(point, values, n, defined_only=True)
