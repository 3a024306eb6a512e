"""Structure of the study figures (axes, series, labels), not pixels."""

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from figures import prism
from figures import probes as probe_plots
from figures import study as plots

CATEGORIES = ("writing", "math", "coding")


def _effect(task, spec, length, placement, category, metric, delta, reference="none[empty]", n=12):
    condition = f"{spec}/{length}/{placement}[empty]"
    return {
        "task": task,
        "condition": condition,
        "persona_spec": spec,
        "length": length,
        "placement": placement,
        "base_system": "empty",
        "category": category,
        "metric": metric,
        "reference": reference,
        "n": n,
        "delta": delta,
        "low": delta - 0.1,
        "high": delta + 0.1,
        "significant": abs(delta) > 0.1,
    }


@pytest.fixture()
def by_category():
    rows = []
    for c, category in enumerate(CATEGORIES):
        for length in ("min", "short", "long"):
            rows.append(_effect("mtbench", "expert", length, "system", category, "judge_score", 0.1 * c - 0.05))
        rows.append(
            _effect(
                "mtbench",
                "expert",
                "long",
                "system",
                category,
                "judge_score",
                0.3,
                reference="random/long/system[empty]",
            )
        )
        for p, persona in enumerate(("math", "writing", "critic")):
            rows.append(_effect("capitals", persona, "min", "system", category, "margin", -0.2 * p))
    return rows


def _bars(ax):
    return [patch for patch in ax.patches if isinstance(patch, matplotlib.patches.Rectangle)]


def test_delta_by_category_draws_one_bar_per_length_and_category(by_category):
    fig = plots.generation_by_category(by_category, "mtbench", "judge_score")
    (ax,) = fig.axes
    assert isinstance(fig, Figure) and len(_bars(ax)) == 3 * len(CATEGORIES)
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(CATEGORIES)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"expert persona, {l}" for l in ("min", "short", "long")
    ]
    assert "judge score" in ax.get_ylabel() and "n=12" in ax.get_title()
    assert sum(t.get_text() == "*" for t in ax.texts) == 3  # only the significant bars (|delta| > 0.1)


def test_heatmap_holds_every_persona_and_category(by_category):
    fig = plots.persona_lift_heatmap(by_category, "capitals", "margin")
    ax = fig.axes[0]
    data = ax.images[0].get_array()
    assert data.shape == (3, len(CATEGORIES))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["critic", "math", "writing"]
    assert np.allclose(data[0], -0.4) and np.allclose(data[1], 0.0)
    assert len(fig.axes) == 2  # with its colour bar


def test_expert_bars_compare_with_baseline_and_random(by_category):
    fig = plots.expert_lift_bars(by_category, "mtbench", "judge_score")
    (ax,) = fig.axes
    assert len(_bars(ax)) == 2 * len(CATEGORIES)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["expert − no persona", "expert − random persona"]


def test_refusal_and_placement_figures():
    cells = [
        {
            "task": "harmbench",
            "condition": label,
            "persona_spec": spec,
            "length": length,
            "placement": "system",
            "metric": "refusal_rate",
            "n": 12,
            "mean": mean,
            "low": 0.0,
            "high": mean + 0.1,
        }
        for label, spec, length, mean in (
            ("none[empty]", "none", None, 0.0),
            ("safety-monitor/long/system[empty]", "safety-monitor", "long", 0.25),
            ("math/min/system[empty]", "math", "min", 0.05),
        )
    ]
    (ax,) = plots.refusal_with_safety_persona(cells).axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "none" and labels[1].startswith("safety-monitor") and len(_bars(ax)) == 3
    assert [t.get_text() for t in ax.texts] == ["0/12", "3/12", "1/12"] and "the same" not in ax.get_title()
    (none,) = plots.refusal_with_safety_persona([{**cell, "mean": 0.0, "high": 0.0} for cell in cells]).axes
    assert [t.get_text() for t in none.texts] == ["0/12"] * 3 and "persona changed no refusal" in none.get_title()
    matplotlib.pyplot.close("all")
    effects = {
        model: [
            _effect("ifeval", "expert", "long", placement, "all", "strict", d)
            for placement, d in (("system", 0.2), ("user", 0.1))
        ]
        for model in ("a", "b")
    }
    fig = plots.placement_deltas(effects)
    assert [ax.get_title() for ax in fig.axes] == ["a (Fig. 1d analogue)", "b (Fig. 1d analogue)"]
    assert all(len(_bars(ax)) == 2 for ax in fig.axes)


def test_figures_say_so_when_there_is_nothing_to_draw():
    (ax,) = plots.generation_by_category([], "mtbench", "judge_score").axes
    assert "no expert persona results" in ax.texts[0].get_text()


def test_probe_curves_show_every_kind_and_both_controls_per_split():
    rows = []
    for split in ("held-out", "in-distribution"):
        for layer in (-1, 0, 1, 2):
            for probe, auc in (
                ("logistic", 0.6 + 0.1 * layer),
                ("diff-means", 0.7),
                ("logistic (shuffled labels)", 0.5),
                ("diff-means (shuffled labels)", 0.5),
                ("random direction", 0.52),
            ):
                rows.append(
                    {
                        "target": "t",
                        "position": "mean",
                        "split": split,
                        "layer": layer,
                        "probe": probe,
                        "auc": auc,
                        "auc_low": auc - 0.05,
                        "auc_high": auc + 0.05,
                        "n": 40,
                    }
                )
    fig = probe_plots.probe_curves(rows, "t", "mean")
    assert [ax.get_title() for ax in fig.axes] == ["held-out (test n=40)", "in-distribution (test n=40)"]
    for ax in fig.axes:
        labels = sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_"))
        assert labels == ["control: random direction", "control: shuffled labels (logistic)", "diff-means", "logistic"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["emb", "0", "1", "2"]
    names = ["a", "b", "c"]
    heat = probe_plots.cosine_heatmap(names, np.eye(3), "cosines")
    assert heat.axes[0].images[0].get_array().shape == (3, 3)


def _system(name, value):
    row = {"system": name}
    for key in ("capitals", "harmbench", "mtbench", "overall"):
        row.update({key: value, f"{key}_low": value - 5, f"{key}_high": value + 5})
    return row


def test_prism_comparison_draws_every_system_in_every_panel():
    table = [_system("base", 50.0), _system("PRISM", 55.0), _system("expert prompt", 45.0)]
    fig = prism.comparison_bars(table)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert len(_bars(ax)) == 3
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["base", "PRISM", "expert prompt"]


def test_prism_comparison_shows_knowledge_over_its_sources_when_the_table_has_it():
    table = [
        {**_system(name, value), "knowledge": value, "knowledge_low": value - 2, "knowledge_high": value + 2}
        for name, value in (("base", 50.0), ("PRISM", 55.0))
    ]
    fig = prism.comparison_bars(table)
    assert fig.axes[0].get_title() == "Knowledge accuracy (mean of sources)"
    assert prism.comparison_bars([_system("base", 50.0)]).axes[0].get_title() == "Capitals accuracy"


def test_route_and_margin_by_source_draws_every_router_and_every_system_change():
    datasets = ("capitals", "currencies", "harmbench")
    rates = [
        {
            "router": router,
            "dataset": d,
            "knowledge": d != "harmbench",
            "route_rate": rate,
            "route_rate_low": rate,
            "route_rate_high": rate,
            "n": 16,
        }
        for router, rate in (("probe gate", 0.1), ("MiniLM", 0.4))
        for d in datasets
    ]
    knowledge = [
        {
            "source": d,
            "system": s,
            "margin_vs_base": delta,
            "margin_vs_base_low": delta - 0.2,
            "margin_vs_base_high": delta + 0.2,
        }
        for d in datasets[:2]
        for s, delta in (("PRISM", -0.1), ("expert prompt", -0.8))
    ]
    knowledge += [{"source": d, "system": "base"} for d in datasets[:2]]  # base has no change of its own
    fig = prism.route_and_margin_by_source(rates, knowledge)
    left, right = fig.axes[:2]
    assert len(_bars(left)) == 2 * 3 and [t.get_text() for t in left.get_xticklabels()][0] == "capitals\n(n=16)"
    assert [t.get_text() for t in right.get_yticklabels()] == ["capitals", "currencies"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["PRISM", "expert prompt"]
    points = [line for line in right.get_lines() if line.get_marker() == "o"]
    assert sorted(round(x, 2) for line in points for x in line.get_xdata()) == [-0.8, -0.8, -0.1, -0.1]


def test_route_rates_and_routing_vs_effect_figures():
    rates = [
        {"system": s, "dataset": d, "route_rate": r, "n": 8}
        for s, r in (("base", 0.0), ("PRISM", 0.5), ("MiniLM -> LoRA", 0.9))
        for d in ("capitals", "harmbench")
    ]
    fig = prism.route_rates(rates)
    assert len(_bars(fig.axes[0])) == 2 * 2  # routed systems only, one bar per data set
    categories = [
        {"dataset": "capitals", "category": c, "n": 4, "route_share": s, "persona_effect": e}
        for c, s, e in (("Asia", 0.1, -3.0), ("Europe", 0.2, -1.0), ("Africa", 0.6, 2.0))
    ]
    correlation = {m: {"mean": 0.9, "low": 0.1, "high": 1.0, "n": 3} for m in ("pearson", "spearman")}
    fig = prism.routing_vs_effect(categories, correlation)
    assert "Pearson +0.90" in fig.axes[0].get_title() and len(fig.axes[0].collections) == 1


def test_gate_sweep_plots_both_read_positions_with_controls():
    rows = [
        {
            "layer": l,
            "position": p,
            "auc": 0.8,
            "auc_low": 0.7,
            "auc_high": 0.9,
            "shuffled_auc": 0.5,
            "random_auc": 0.55,
            "n_test": 30,
        }
        for l in range(4)
        for p in ("last", "mean")
    ]
    quality = {
        "embedding": {"auc": 0.85, "low": 0.75, "high": 0.95},
        "self_classify": {"auc": 0.6, "low": 0.5, "high": 0.7},
    }
    fig = prism.gate_sweep(rows, quality)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert (
        "probe, last token(s)" in labels
        and "shuffled labels (mean)" in labels
        and "MiniLM router (any block)" in labels
    )


def test_route_by_source_draws_every_router_per_source_with_the_targets():
    def row(source, route, rate):
        cells = {}
        for name in ("gate", "embedding", "self_classify", "length_only"):
            cells |= {
                f"{name}_route_rate": rate,
                f"{name}_route_rate_low": max(0, rate - 0.1),
                f"{name}_route_rate_high": min(1, rate + 0.1),
                f"{name}_passes": True,
            }
        return {"source": source, "route": route, "n": 24, **cells}

    table = [row("mtbench", "persona", 0.95), row("geo:city", "base", 0.05), row("mmlu", "base", 0.2)]
    fig = prism.route_by_source(table)
    ax = fig.axes[0]
    assert len(ax.patches) == 4 * 3  # four routers, three sources
    assert [t.get_text() for t in ax.get_xticklabels()] == ["geo:city (n=24)", "mmlu (n=24)", "mtbench (n=24)"]
    assert {t.get_text() for t in ax.texts} == {"target <= 10%", "target >= 90%"}
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["in-model probe gate", "MiniLM router"]


def test_a_comparison_panel_where_every_system_scores_the_same_writes_the_values_and_says_so():
    table = [
        {
            "system": s,
            "knowledge": k,
            "knowledge_low": k - 5,
            "knowledge_high": k + 5,
            "knowledge_n": 64,
            "harmbench": 0.0,
            "harmbench_low": 0.0,
            "harmbench_high": 0.0,
            "harmbench_n": 8,
            "mtbench": 45.0,
            "mtbench_low": 40.0,
            "mtbench_high": 50.0,
            "overall": 30.0 + k / 10,
            "overall_low": 25.0,
            "overall_high": 45.0,
        }
        for s, k in (("base", 60.0), ("expert prompt", 55.0), ("PRISM", 61.0))
    ]
    fig = prism.comparison_bars(table)
    knowledge, refusal, judge, _ = fig.axes
    assert "cannot separate" in refusal.get_title() and [t.get_text() for t in refusal.texts] == ["0/8"] * 3
    assert "cannot separate" in judge.get_title() and [t.get_text() for t in judge.texts] == ["45.0"] * 3
    assert "cannot separate" not in knowledge.get_title() and not knowledge.texts
    assert all(len(ax.collections) >= 1 for ax in fig.axes)  # a mark at every mean, a score of 0 included
    matplotlib.pyplot.close("all")


def test_routing_vs_effect_without_an_interval_says_why():
    categories = [
        {
            "dataset": "capitals",
            "category": f"c{i}",
            "n": 2,
            "route_share": float(i < 3),
            "persona_effect": 10.0 * (i < 3),
            "expert": "expert prompt (long)",
        }
        for i in range(34)
    ]
    note = "no interval: it rests on 3 of 34 points, the others sharing one value; the two variables take 2 and 2"
    correlation = {
        m: {"mean": 1.0, "low": float("nan"), "high": float("nan"), "n": 34, "note": note}
        for m in ("pearson", "spearman")
    }
    (ax,) = prism.routing_vs_effect(categories, correlation).axes
    title = ax.get_title()
    assert ax.get_xlabel() == "persona's effect in the category (expert prompt (long) - base, 0-100 scale)"
    assert "Pearson +1.00, Spearman +1.00 (n=34 categories)" in title and "rests on 3 of 34 points" in title
    assert "[" not in title
    matplotlib.pyplot.close("all")


def test_the_causal_refusal_bars_say_when_no_condition_changes_refusal():
    from figures import interventions

    rows = [
        {"condition": c, "multiple": m, "rate": 0.0, "low": 0.0, "high": 0.0, "n": 8}
        for c, m in (("no persona", 0), ("persona prompt", 0), ("persona direction", 2.0))
    ]
    (ax,) = interventions.refusal_bars(rows).axes
    assert [t.get_text() for t in ax.texts] == ["0/8"] * 3 and "cannot separate" in ax.get_title()
    matplotlib.pyplot.close("all")
