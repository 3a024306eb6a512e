"""Leave-one-source-out evaluation and the read-out it chooses, on planted data (no model)."""

import numpy as np
import pytest

from prism.summary import TrainSummary
from prism.unseen import (
    choose_read_out,
    evaluate,
    held_out_rate,
    logistic_scorer,
    out_of_source_scores,
    probe_scorer,
    source_table,
)
from probes.core.errors import ToolkitError
from probes.core.stats import Estimate

SOURCES = ["mmlu"] * 10 + ["geo:city"] * 10 + ["mtbench"] * 10 + ["harmbench"] * 10
LABELS = np.array([0] * 20 + [1] * 20)


def test_every_query_is_scored_by_a_fit_that_never_saw_its_source():
    seen = []

    def scorer(train, test):
        assert not {SOURCES[i] for i in train} & {SOURCES[i] for i in test}
        seen.append(len(test))
        return np.full(len(test), 0.5)

    scores = out_of_source_scores(scorer, LABELS, SOURCES)
    assert seen == [10, 10, 10, 10] and np.isfinite(scores).all()
    with pytest.raises(ToolkitError, match="two or more sources"):
        out_of_source_scores(scorer, LABELS[:10], SOURCES[:10])
    with pytest.raises(ToolkitError, match="without source 'mtbench' one route has no query left"):
        out_of_source_scores(scorer, LABELS[:30], SOURCES[:30])


def test_the_table_calibrates_each_sources_threshold_on_the_others_and_says_what_fails():
    scores = np.concatenate(
        [
            np.linspace(0.0, 0.2, 10),
            np.linspace(0.55, 0.7, 10),  # geo:city sits among the persona side
            np.linspace(0.6, 0.9, 10),
            np.linspace(0.8, 1.0, 10),
        ]
    )
    rows = {row["source"]: row for row in source_table(scores, LABELS, SOURCES)}
    assert rows["mmlu"]["route"] == "base" and rows["mmlu"]["route_rate"] == 0 and rows["mmlu"]["passes"]
    assert rows["geo:city"]["route_rate"] > 0.5 and rows["geo:city"]["passes"] is False
    assert rows["geo:city"]["miss"] == rows["geo:city"]["route_rate"] and rows["harmbench"]["miss"] == 0
    assert rows["mmlu"]["auc"] == 1.0 and rows["geo:city"]["auc"] < rows["mmlu"]["auc"]
    assert rows["mmlu"]["route_rate_low"] <= rows["mmlu"]["route_rate"] <= rows["mmlu"]["route_rate_high"]
    assert all(row["n"] == 10 for row in rows.values())


def test_the_read_out_with_fewer_misses_on_unseen_sources_is_chosen():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((40, 8)) + 3 * LABELS[:, None]
    noise = rng.standard_normal((40, 8))
    chosen, candidates = choose_read_out(
        {(0, "last"): noise, (1, "last"): signal}, LABELS, SOURCES, kinds=("logistic",)
    )
    assert (chosen["layer"], chosen["position"], chosen["kind"]) == (1, "last", "logistic")
    assert chosen["result"]["summary"]["worst_miss"] == 0 and chosen["result"]["summary"]["passing"] == 4
    assert len(candidates) == 2 + 2 and "result" not in candidates[0] and "worst_miss" in candidates[0]
    swept = {(0, 0.01), (1, 0.01)}  # every read-out at the swept shrinkage
    assert {(row["layer"], row["regularisation"]) for row in candidates} == swept | {(1, 0.1), (1, 1.0)}  # the best
    result = evaluate(logistic_scorer(signal, LABELS), LABELS, SOURCES)
    assert result["summary"]["auc"] > 0.95 and 0 < result["threshold"] < 1


def test_more_queries_of_a_held_out_source_are_routed_as_its_row_routes_them():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 6)) + 2 * LABELS[:, None]
    x[:10, 0] += 1.5  # mmlu leans towards the persona side
    result = evaluate(probe_scorer(x, LABELS, regularisation=0.1), LABELS, SOURCES)
    row = next(row for row in result["rows"] if row["source"] == "mmlu")
    own = held_out_rate(x, LABELS, SOURCES, result["scores"], "mmlu", x[:10], regularisation=0.1)
    assert own.n == 10 and own.mean == row["route_rate"]  # the same fit and threshold as the row's
    persona_like = rng.standard_normal((30, 6)) + 2
    assert held_out_rate(x, LABELS, SOURCES, result["scores"], "mmlu", persona_like, regularisation=0.1).mean > 0.8
    with pytest.raises(ToolkitError, match="no held-out rate for 'arc'"):
        held_out_rate(x, LABELS, SOURCES, result["scores"], "arc", x[:10])


def test_the_train_summary_prints_the_table_and_reads_each_routers_route_rate():
    from_row = {"source": "geo:city", "route": "base", "n": 24}
    for name, rate, passes in (("gate", 0.04, True), ("embedding", 0.5, False), ("self_classify", 0.2, False)):
        from_row |= {
            f"{name}_route_rate": rate,
            f"{name}_route_rate_low": 0.0,
            f"{name}_route_rate_high": rate + 0.1,
            f"{name}_passes": passes,
        }
    summary = TrainSummary(
        2,
        "last",
        "logistic",
        0.5,
        0.4,
        Estimate(0.9, 0.8, 0.95, 50),
        {"embedding": Estimate(0.8, 0.7, 0.9, 50)},
        (from_row,),
        {
            "exam_check": {"source": "mmlu", "n": 200, "limit": 0.1}
            | Estimate(0.13, 0.09, 0.16, 200).columns("unseen_route_rate")
            | Estimate(0.07, 0.04, 0.1, 200).columns("deployed_route_rate")
        },
    )
    assert summary.route_rate_of("geo:city", "embedding") == Estimate(0.5, 0.0, 0.6, 24)
    lines = summary.lines()
    assert "unseen sources within target: gate 1, MiniLM 0, self-classify 0 of 1" in lines
    assert lines[-1] == (
        "exam check: 200 mmlu stems outside the gate's data routed 0.13 [0.09, 0.16] by the gate fitted without mmlu, "
        "0.07 [0.04, 0.10] by the deployed gate (target <= 10%)"
    )
    assert lines[-2].split() == [
        "geo:city",
        "base",
        "24",
        "0.04",
        "[0.00,",
        "0.14]",
        "0.50",
        "[0.00,",
        "0.60]",
        "x",
        "0.20",
        "[0.00,",
        "0.30]",
        "x",
    ]
