"""The bootstrap correlation (Pearson or Spearman), honest on degenerate data.

A correlation where either variable has fewer than ``MIN_OFF_MODE`` values away from its most
common one rests on those few points (34 categories, 3 of them non-zero): it keeps its point
value and gets no interval, since the resamples where it is defined are exactly those that hold
the few points, and their interval would overstate. One where a variable takes fewer than
``MIN_DISTINCT`` distinct values keeps its interval and says so in its note (two two-valued
variables give the same Pearson and Spearman value). Undefined resamples are counted and, above
``probes.core.stats.MAX_UNDEFINED``, give no interval (``Estimate.from_resamples``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from probes.core.errors import ToolkitError
from probes.core.stats import Estimate, resample_indices

__all__ = ["MIN_DISTINCT", "MIN_OFF_MODE", "bootstrap_correlation"]

MIN_DISTINCT = 5  # a variable with fewer distinct values is reported as such
MIN_OFF_MODE = 5  # a variable with fewer values off its most common one gives no interval


def bootstrap_correlation(
    x: Sequence[float], y: Sequence[float], *, method: str = "pearson", n_resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Pearson or Spearman correlation with a percentile-bootstrap interval (resampling pairs).

    Degenerate data are reported as such rather than given an interval that overstates:

    - a constant variable (or fewer than 3 pairs): undefined, NaN throughout, and a ``note`` saying why;
    - a variable with fewer than ``MIN_OFF_MODE`` values away from its most common one (34 points, 3 of them
      non-zero): the point value, no interval, and a ``note`` saying on how few points it rests;
    - resamples where a variable is constant are left out; above ``MAX_UNDEFINED`` of them, no interval
      (``Estimate.from_resamples``);
    - a variable with fewer than ``MIN_DISTINCT`` distinct values: the ``note`` says how many each takes (two
      two-valued variables give the same Pearson and Spearman value).

    Args:
        x, y: the paired values.
        method: ``pearson`` or ``spearman`` (Pearson of the ranks, ties averaged).
        n_resamples: bootstrap resamples.
        seed: the resampling seed.

    Returns:
        the ``Estimate`` (``n`` = pairs; ``dropped`` and ``note`` as above).

    Raises:
        ToolkitError: unpaired values or an unknown method.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ToolkitError(f"a correlation needs paired values, got {a.size} and {b.size}")
    if method not in ("pearson", "spearman"):
        raise ToolkitError(f"unknown correlation {method!r}: use pearson or spearman")
    nan, n = float("nan"), int(a.size)
    if n < 3:
        return Estimate(nan, nan, nan, n, note=f"undefined: {n} pairs (a correlation needs 3 or more)")
    if a.std() == 0 or b.std() == 0:
        return Estimate(nan, nan, nan, n, note="undefined: one variable has the same value at every point")
    distinct = [len(np.unique(v)) for v in (a, b)]
    off_mode = min(n - int(np.unique(v, return_counts=True)[1].max()) for v in (a, b))
    values_note = f"the two variables take {distinct[0]} and {distinct[1]} distinct values"
    if method == "spearman":
        a, b = rankdata(a), rankdata(b)
    point = float(np.corrcoef(a, b)[0, 1])
    if off_mode < MIN_OFF_MODE:
        note = f"no interval: it rests on {off_mode} of {n} points, the others sharing one value; {values_note}"
        return Estimate(point, nan, nan, n, note=note)
    draws = resample_indices(a.size, n_resamples, seed)
    xa, yb = a[draws], b[draws]
    xa = xa - xa.mean(axis=1, keepdims=True)
    yb = yb - yb.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (xa * yb).sum(axis=1) / np.sqrt((xa**2).sum(axis=1) * (yb**2).sum(axis=1))
    estimate = Estimate.from_resamples(point, values, n, defined_only=True)
    if min(distinct) < MIN_DISTINCT:
        note = f"{estimate.note}; {values_note}" if estimate.note else values_note
        estimate = replace(estimate, note=note)
    return estimate
