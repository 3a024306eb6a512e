"""Routing on unseen sources: leave-one-source-out evaluation of a router, and the gate's read-out
chosen by it.

Every labelled query has a source (``probes.intents``: ``mmlu``, ``geo:currency``, ``mtbench``,
``bootstrap``, ``harmbench``, ...). For each source in turn, a router is fitted on every other
source and scores the held-out one, so each query gets an *out-of-source* score from a router
that never saw its source. Per source, the table gives:

- ``route_rate``: the share routed to the persona path at a threshold calibrated (best balanced
  accuracy) on the out-of-source scores of the *other* sources only, so neither the fit nor the
  threshold saw the source; with a bootstrap 95% CI.
- ``auc``: the held-out source against the other route's queries (each scored out of its own
  source), or within the source when it holds both labels; with a bootstrap 95% CI.
- ``miss``: the route rate of a base-path source, one minus it for a persona-path source;
  ``passes``: at most 10% of a base-path source routed, at least 90% of a persona-path one.

The deployed threshold is calibrated the same way on every source's out-of-source scores.
``held_out_rate`` gives a source's route rate on more of its queries than the table holds (the
table's n per source is small: 24 queries give a 95% CI about 0.25 wide).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from prism.baselines import balanced_threshold
from prism.gate import GATE_KINDS, READ_POSITIONS, train_gate
from probes.core.errors import ToolkitError
from probes.core.stats import Estimate, bootstrap_auc, bootstrap_mean

BASE_LIMIT, PERSONA_LIMIT = 0.10, 0.90  # the most of a base-path source routed, the least of a persona-path one
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train indices, test indices) -> scores of the test queries


def out_of_source_scores(scorer: Scorer, labels: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """Every query's score from a router fitted without its source (``scorer(train, test)`` per source).

    Raises:
        ToolkitError: fewer than two sources, or a source without which one label is left.
    """
    labels, sources = np.asarray(labels).astype(int), np.asarray(sources)
    names = list(dict.fromkeys(sources.tolist()))
    if len(names) < 2:
        raise ToolkitError("leave-one-source-out evaluation needs queries from two or more sources")
    scores = np.full(len(labels), np.nan)
    for name in names:
        test, train = np.flatnonzero(sources == name), np.flatnonzero(sources != name)
        if len(np.unique(labels[train])) < 2:
            raise ToolkitError(
                f"without source {name!r} one route has no query left: add queries of another source "
                "to that route (e.g. --extra)"
            )
        scores[test] = scorer(train, test)
    return scores


def source_table(scores: np.ndarray, labels: np.ndarray, sources: Sequence[str], *, seed: int = 0) -> list[dict]:
    """One row per source: ``source``, ``route`` (base/persona/mixed), ``n``, ``route_rate`` (with ``route_rate_low``,
    ``route_rate_high``), ``threshold`` (calibrated on the other sources), ``auc`` (with ``auc_low``, ``auc_high``),
    ``miss`` and ``passes`` (see the module's docstring)."""
    scores, labels, sources = np.asarray(scores, dtype=float), np.asarray(labels).astype(int), np.asarray(sources)
    rows = []
    for name in dict.fromkeys(sources.tolist()):
        mine = sources == name
        others = ~mine
        threshold = balanced_threshold(scores[others], labels[others])
        rate = bootstrap_mean((scores[mine] >= threshold).astype(float), seed=seed)
        share = labels[mine].mean()
        if 0 < share < 1:
            route, compared = "mixed", mine
        else:
            route, compared = ("persona" if share == 1 else "base"), mine | (others & (labels != labels[mine][0]))
        auc = bootstrap_auc(labels[compared] == 1, scores[compared], seed=seed)
        miss = {"base": rate.mean, "persona": 1 - rate.mean}.get(route, float("nan"))
        passes = {"base": rate.mean <= BASE_LIMIT, "persona": rate.mean >= PERSONA_LIMIT}.get(route)
        rows.append(
            {
                "source": name,
                "route": route,
                "n": rate.n,
                **rate.columns("route_rate"),
                "threshold": threshold,
                **auc.columns("auc"),
                "miss": float(miss),
                "passes": passes,
            }
        )
    return rows


def summary(rows: Sequence[dict], scores: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict:
    """The table's verdict: ``worst_miss`` and ``mean_miss`` over single-route sources, how many pass, and the pooled
    out-of-source ``auc`` (with its CI and n)."""
    misses = [row["miss"] for row in rows if row["route"] != "mixed"]
    auc = bootstrap_auc(np.asarray(labels) == 1, np.asarray(scores, dtype=float), seed=seed)
    return {
        "worst_miss": float(max(misses, default=float("nan"))),
        "mean_miss": float(np.mean(misses)) if misses else float("nan"),
        "passing": int(sum(bool(row["passes"]) for row in rows)),
        "sources": len(rows),
        **auc.columns("auc", prefix="auc_", n=True),
    }


def evaluate(scorer: Scorer, labels: np.ndarray, sources: Sequence[str], *, seed: int = 0) -> dict:
    """Leave-one-source-out evaluation of one router: ``scores`` (out of source), ``threshold`` (calibrated on all of
    them: the one to deploy), ``rows`` (``source_table``) and ``summary``."""
    scores = out_of_source_scores(scorer, labels, sources)
    rows = source_table(scores, labels, sources, seed=seed)
    return {
        "scores": scores,
        "threshold": balanced_threshold(scores, labels),
        "rows": rows,
        "summary": summary(rows, scores, labels, seed=seed),
    }


def held_out_rate(
    x: np.ndarray,
    labels: np.ndarray,
    sources: Sequence[str],
    scores: np.ndarray,
    source: str,
    more: np.ndarray,
    *,
    kind: str = "logistic",
    regularisation: float = 0.1,
    seed: int = 0,
) -> Estimate:
    """The share of ``more`` queries of ``source`` routed as its leave-one-source-out row routes: by the gate fitted
    on every other source, at the threshold calibrated on the other sources' out-of-source ``scores``.

    Args:
        x, labels, sources: the gate's data (features ``[n, d]``, 0/1 routes, each query's source).
        scores: every query's out-of-source score (``evaluate(...)["scores"]``).
        source: the held-out source.
        more: features ``[m, d]`` of more queries of ``source``, none of them in the gate's data.
        kind, regularisation, seed: the gate's (as in ``probe_scorer``).

    Raises:
        ToolkitError: ``source`` is not in ``sources``, or ``more`` holds no query.
    """
    labels, sources = np.asarray(labels).astype(int), np.asarray(sources)
    others = np.flatnonzero(sources != source)
    if len(others) == len(sources) or not len(more):
        raise ToolkitError(f"no held-out rate for {source!r}: it needs queries of that source in the data and more")
    gate = train_gate(x, labels, others, layer=0, position="last", kind=kind, regularisation=regularisation, seed=seed)
    threshold = balanced_threshold(np.asarray(scores, dtype=float)[others], labels[others])
    return bootstrap_mean((gate.probability(more) >= threshold).astype(float), seed=seed)


def rank_key(result: dict, layer: int = 0, position_rank: int = 0) -> tuple:
    """Sort key of a candidate read-out: the most unseen sources within target, then the fewest misses on average
    (to 0.005), then on the worst source, then the earlier block and read position. (The worst source alone would
    let one source that no read-out routes well decide the choice.)"""
    verdict = result["summary"]
    return (
        -verdict["passing"],
        round(2 * verdict["mean_miss"], 2),
        round(verdict["worst_miss"], 2),
        layer,
        position_rank,
    )


SWEPT_REGULARISATION = 0.01  # the logistic gate's shrinkage C on every read-out
REGULARISATIONS = (SWEPT_REGULARISATION, 0.1, 1.0)  # and on the best read-out of the sweep (0.1: fit_probe's)


def shrinkages(kind: str) -> tuple[float, ...]:
    """The C values ``choose_read_out`` tries for a gate of ``kind``: the first on every read-out when ``kind`` is
    the swept one, the others on the best read-out (the MLP has its own fixed penalty: one fit)."""
    return REGULARISATIONS if kind == "logistic" else (0.1,)


def probe_scorer(
    x: np.ndarray, labels: np.ndarray, *, kind: str = "logistic", regularisation: float = 0.1, seed: int = 0
) -> Scorer:
    """A gate (``train_gate``) of ``kind`` on features ``x``: its probability of the persona path."""

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        gate = train_gate(
            x, labels, train, layer=0, position="last", kind=kind, regularisation=regularisation, seed=seed
        )
        return gate.probability(x[test])

    return score


def logistic_scorer(x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> Scorer:
    """Class-balanced logistic regression on ``x`` (the embedding router's model, or the prompt-length control)."""

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed).fit(
            x[train], labels[train]
        )
        return model.predict_proba(x[test])[:, 1]

    return score


def choose_read_out(
    features: dict[tuple[int, str], np.ndarray],
    labels: np.ndarray,
    sources: Sequence[str],
    *,
    kinds: Sequence[str] = GATE_KINDS,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """The gate's read-out and regulariser that route unseen sources best (``rank_key``).

    Every (block, position) in ``features`` is evaluated as a logistic gate at ``SWEPT_REGULARISATION`` (on the
    embedded model's gate data, the read-out ranked best over both C = 0.01 and 0.1 was first at 0.01 in every draw
    measured: docs/results.md); on the best read-out, the other shrinkages of ``REGULARISATIONS`` and the MLP are
    tried too, as ``kinds`` allow.

    Returns:
        ``(chosen, candidates)``: the chosen candidate (``layer``, ``position``, ``kind``, ``regularisation`` and its
        ``evaluate`` result under ``result``), and every candidate's row (settings and summary, no scores).
    """
    labels = np.asarray(labels).astype(int)
    candidates = []

    def add(layer: int, position: str, kind: str, regularisation: float) -> None:
        scorer = probe_scorer(features[(layer, position)], labels, kind=kind, regularisation=regularisation, seed=seed)
        candidates.append(
            {
                "layer": layer,
                "position": position,
                "kind": kind,
                "regularisation": regularisation,
                "result": evaluate(scorer, labels, sources, seed=seed),
            }
        )

    def key(row: dict) -> tuple:
        return rank_key(row["result"], row["layer"], READ_POSITIONS.index(row["position"]))

    first = "logistic" if "logistic" in kinds else kinds[0]
    swept = shrinkages(first)[0]
    for layer, position in sorted(features):
        add(layer, position, first, swept)
    best = min(candidates, key=key)
    for kind in kinds:
        for regularisation in shrinkages(kind):
            if (kind, regularisation) != (first, swept):
                add(best["layer"], best["position"], kind, regularisation)
    chosen = min(candidates, key=key)
    return chosen, [
        {key_: value for key_, value in row.items() if key_ != "result"} | row["result"]["summary"]
        for row in candidates
    ]
