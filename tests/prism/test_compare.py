"""``prism compare`` per source, on synthetic cells: knowledge per source, route rates per router and data set,
the report's verdicts; and the gate's training data leaving out the sources the comparison asks."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from prism.compare import (
    COMPARE_BUDGETS,
    DATASETS,
    KNOWLEDGE,
    CompareBudget,
    _cached,
    evaluation_items,
    excluded_sources,
)
from prism.compare_report import ROUTERS, format_table, summarise, write_outputs
from prism.compare_sources import KNOWLEDGE_SOURCES, below_base, format_sources, source_findings
from prism.summary import CompareSummary
from prism.train import labelled_prompts
from prism.workdir import PrismDirectory
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.stats import Estimate
from probes.intents import intent_queries

SYSTEMS = ("base", "expert prompt", "PRISM")
N = 12


def _items() -> dict[str, list[Item]]:
    return {
        d: [Item(f"{d}/{i}", d, f"{d} question {i}?", ("Asia", "Europe")[i % 2]) for i in range(N)] for d in DATASETS
    }


def _cells(items):
    """base: margins 1..N, correct on even items; PRISM: the same but 1 nat lower on currencies and 0.5 higher on
    continents, routed on the first quarter of each set; expert prompt: 2 nats lower everywhere, always routed."""
    rng = np.random.default_rng(0)
    cells = {}
    for system in SYSTEMS:
        for d in DATASETS:
            rows = []
            for i, item in enumerate(items[d]):
                row = {
                    "id": item.id,
                    "category": item.category,
                    "routed": system == "expert prompt" or (system == "PRISM" and i < N // 4),
                }
                if d in KNOWLEDGE:
                    shift = {"PRISM": {"currencies": -1.0, "continents": 0.5}.get(d, 0.0), "expert prompt": -2.0}.get(
                        system, 0.0
                    )
                    row.update(
                        margin=float(i + 1) + shift,
                        correct=float(i % 2 == 0 or (system == "PRISM" and d == "continents")),
                    )
                elif d == "harmbench":
                    row.update(refused=float(rng.random() < 0.5), response="")
                else:
                    row.update(rating=int(rng.integers(1, 11)), response="")
                rows.append(row)
            cells[(system, d)] = rows
    return cells


def _routes(items):
    """The probe gate routes every MT-Bench query and nothing else; MiniLM every third query; self-classify none."""
    everything = [(d, i) for d in DATASETS for i in range(len(items[d]))]
    return {
        "probe gate": np.array([d == "mtbench" for d, _ in everything]),
        "MiniLM": np.array([k % 3 == 0 for k in range(len(everything))]),
        "self-classify": np.zeros(len(everything), dtype=bool),
    }


@pytest.fixture(scope="module")
def summary():
    items = _items()
    return summarise(_cells(items), SYSTEMS, items, _routes(items), seed=0)


def test_knowledge_per_source_holds_each_systems_accuracy_margin_and_paired_change(summary):
    rows = {(r["source"], r["system"]): r for r in summary["knowledge"]}
    assert {s for s, _ in rows} == set(KNOWLEDGE) and len(rows) == len(KNOWLEDGE) * len(SYSTEMS)
    base = rows[("capitals", "base")]
    assert base["accuracy"] == pytest.approx(50.0) and base["margin"] == pytest.approx((N + 1) / 2) and base["n"] == N
    assert "margin_vs_base" not in base and base["route_rate"] == 0
    currencies = rows[("currencies", "PRISM")]
    assert (
        currencies["margin_vs_base"],
        currencies["margin_vs_base_low"],
        currencies["margin_vs_base_high"],
    ) == pytest.approx((-1, -1, -1))
    assert currencies["below_base"] is True and currencies["route_rate"] == pytest.approx(0.25)
    continents = rows[("continents", "PRISM")]
    assert continents["margin_vs_base"] == pytest.approx(0.5) and continents["below_base"] is False
    assert continents["accuracy"] == 100.0 and continents["accuracy_vs_base"] == pytest.approx(50.0)
    assert rows[("capitals", "PRISM")]["margin_vs_base"] == 0 and rows[("capitals", "PRISM")]["below_base"] is False
    assert all(
        rows[(d, "expert prompt")]["margin_vs_base"] == pytest.approx(-2) and rows[(d, "expert prompt")]["below_base"]
        for d in KNOWLEDGE
    )


def test_the_table_keeps_its_columns_and_pools_the_knowledge_sources(summary):
    table = {row["system"]: row for row in summary["table"]}
    prism, base = table["PRISM"], table["base"]
    assert prism["capitals"] == pytest.approx(50.0) and prism["continents"] == 100.0 and prism["capitals_n"] == N
    accuracies = [prism[d] for d in KNOWLEDGE]
    assert prism["knowledge"] == pytest.approx(np.mean(accuracies)) and prism["knowledge_n"] == N * len(KNOWLEDGE)
    assert prism["knowledge_margin_vs_base"] == pytest.approx(np.mean([0, 0.5, -1, 0]))
    assert (
        prism["knowledge_margin_vs_base_low"]
        <= prism["knowledge_margin_vs_base"]
        <= prism["knowledge_margin_vs_base_high"]
    )
    assert prism["currencies_margin_vs_base"] == pytest.approx(-1) and prism["continents_margin"] == pytest.approx(
        (N + 1) / 2 + 0.5
    )
    assert (prism["margin"], prism["margin_vs_base"]) == (prism["capitals_margin"], prism["capitals_margin_vs_base"])
    assert prism["overall"] == pytest.approx(np.mean([prism["knowledge"], prism["harmbench"], prism["mtbench"]]))
    assert base["overall_low"] <= base["overall"] <= base["overall_high"]
    assert "| knowledge acc. |" in format_table(summary["table"]).splitlines()[0]
    rates = {(r["system"], r["dataset"]): r for r in summary["route_rates"]}
    assert (
        rates[("PRISM", "currencies")]["route_rate"] == 0.25
        and rates[("expert prompt", "mtbench")]["route_rate_low"] == 1
    )


def test_route_rates_per_router_split_the_decisions_by_data_set(summary):
    rates = {(r["router"], r["dataset"]): r for r in summary["router_rates"]}
    assert set(rates) == {(router, d) for router in ROUTERS for d in DATASETS}
    for d in DATASETS:
        gate = rates[("probe gate", d)]
        assert gate["n"] == N and gate["knowledge"] == (d in KNOWLEDGE)
        assert (gate["route_rate"], gate["route_rate_low"], gate["route_rate_high"]) == (
            (1, 1, 1) if d == "mtbench" else (0, 0, 0)
        )
        assert rates[("self-classify", d)]["route_rate"] == 0
    minilm = np.array([k % 3 == 0 for k in range(N * len(DATASETS))]).reshape(len(DATASETS), N).mean(axis=1)
    assert [rates[("MiniLM", d)]["route_rate"] for d in DATASETS] == pytest.approx(minilm)
    assert 0 <= rates[("MiniLM", "capitals")]["route_rate_low"] <= rates[("MiniLM", "capitals")]["route_rate_high"] <= 1


def test_the_report_says_per_source_whether_prism_falls_below_base(summary, tmp_path):
    lines = source_findings(summary["knowledge"], excluded_sources())
    assert lines[0] == "PRISM's knowledge margin is significantly below base on 1 of 4 knowledge sources: currencies."
    assert any(
        line.startswith("- currencies (geo:currency left out of the gate's data)")
        and "significantly below base;" in line
        for line in lines
    )
    assert any(
        line.startswith("- capitals (no intent source asks it)") and "not significantly below" in line for line in lines
    )
    seen = source_findings(summary["knowledge"], ["geo:city"])
    assert "The gate trained on the kind of fact of continents, currencies." in seen[0]
    kept = [r for r in summary["knowledge"] if r["source"] != "currencies"]
    assert source_findings(kept, excluded_sources())[0] == (
        "PRISM's knowledge margin is not significantly below base on any of the 3 knowledge sources."
    )
    text = format_sources(summary["knowledge"], summary["router_rates"])
    assert "| currencies | 12 | 50.0 [" in text and text.count("| yes |") == 1
    assert (
        "| mtbench | 12 | 1.00 [1.00, 1.00] | " in text and "| capitals (knowledge) | 12 | 0.00 [0.00, 0.00] |" in text
    )

    work = PrismDirectory(tmp_path)
    write_outputs(work, {**summary, "excluded_sources": list(excluded_sources())}, COMPARE_BUDGETS["smoke"])
    report = work.report.read_text()
    assert (
        "significantly below base on 1 of 4 knowledge sources: currencies" in report
        and "figures/by_source.png" in report
    )
    assert (
        work.figure("by_source").is_file()
        and len(json.loads(work.knowledge_table.with_suffix(".json").read_text())) == 12
    )
    assert work.router_rates.read_text().startswith(
        "router,dataset,knowledge,route_rate,route_rate_low,route_rate_high,n"
    )
    printed = CompareSummary(work.compare, tuple(summary["table"]), summary)
    assert printed.knowledge("currencies") == Estimate(-1.0, -1.0, -1.0, N)
    assert "| currencies | 12 |" in printed.format() and "| data set (share routed" in printed.format()


def test_a_cell_of_other_items_is_refused(summary):
    items = _items()
    cells = _cells(items)
    cells[("PRISM", "capitals")] = cells[("PRISM", "capitals")][::-1]
    with pytest.raises(ToolkitError, match="'PRISM' and base cells of capitals hold different items"):
        summarise(cells, SYSTEMS, items, _routes(items))
    assert below_base(Estimate(-1, -2, -0.5, 12)) and not below_base(Estimate(-1, -2, 0.1, 12))
    assert not below_base(Estimate(-1, -2, -0.5, 3))  # too few items to call it
    assert not below_base(Estimate(-2e-6, -4e-6, -1e-6, 16))  # arithmetic, not a fall


def test_the_budget_sizes_every_data_set_and_the_smoke_one_stays_small():
    smoke = COMPARE_BUDGETS["smoke"]
    assert [smoke.size(d) for d in KNOWLEDGE] == [16] * 4 and smoke.size("city-countries") == smoke.city_countries
    items = evaluation_items(
        CompareBudget(capitals=3, continents=4, currencies=5, city_countries=6, harmbench=2, mtbench=2)
    )
    assert {d: len(items[d]) for d in DATASETS} == {
        "capitals": 3,
        "continents": 4,
        "currencies": 5,
        "city-countries": 6,
        "harmbench": 2,
        "mtbench": 2,
    }


def test_gate_training_data_leave_out_every_source_the_comparison_asks():
    assert excluded_sources() == ("geo:city", "geo:continent", "geo:currency")
    assert KNOWLEDGE_SOURCES["capitals"] == () and KNOWLEDGE_SOURCES["currencies"] == ("geo:currency",)
    kept = labelled_prompts("intents", [], per_source=4)
    assert set(excluded_sources()) <= set(kept.sources)  # without the exclusion they are drawn
    left = labelled_prompts("intents", [], per_source=4, exclude_sources=excluded_sources())
    assert not set(excluded_sources()) & set(left.sources)
    assert set(left.sources) == set(kept.sources) - set(excluded_sources())
    with pytest.raises(ToolkitError, match="unknown intent source to leave out 'geo:tides'"):
        intent_queries(per_source=4, exclude_sources=["geo:tides"])


def test_a_saved_cell_is_reused_only_when_whole_and_made_with_the_same_judge(tmp_path):
    plan = COMPARE_BUDGETS["smoke"]
    path = tmp_path / "cell.json"
    cell = {"budget": asdict(plan), "seed": 0, "trained": "abc", "judge": "self:m", "rows": [{"rating": 7}]}
    path.write_text(json.dumps(cell))
    assert _cached(path, plan, 0, "abc", "self:m") == [{"rating": 7}]
    assert _cached(path, plan, 0, "abc", "endpoint:gpt-4o-mini") is None  # another judge: judged again
    path.write_text(json.dumps(cell)[:40])  # cut off by an interruption
    assert _cached(path, plan, 0, "abc", "self:m") is None
    path.write_text("[1, 2]")
    assert _cached(path, plan, 0, "abc", "self:m") is None


def test_a_missing_or_damaged_self_classify_file_fails_in_one_line(tmp_path):
    work = PrismDirectory(tmp_path)
    with pytest.raises(ToolkitError, match="run `prism train`") as caught:
        work.self_classify_threshold()
    work.self_classify.parent.mkdir(parents=True)
    work.self_classify.write_text('{"thresh')
    with pytest.raises(ToolkitError, match="is damaged") as damaged:
        work.self_classify_threshold()
    assert "\n" not in str(caught.value) + str(damaged.value)


def test_the_routing_correlation_on_34_categories_3_of_them_moved_is_reported_without_an_interval():
    from prism.compare_findings import correlation_line
    from probes.core.correlation import bootstrap_correlation

    categories = [
        {
            "dataset": "capitals",
            "category": f"c{i}",
            "n": 2,
            "route_share": 0.5 * (i in (3, 8, 17, 30)),
            "persona_effect": {3: 12.5, 17: 25.0, 30: 12.5}.get(i, 0.0),
        }
        for i in range(34)
    ]
    share, effect = [c["route_share"] for c in categories], [c["persona_effect"] for c in categories]
    correlation = {m: bootstrap_correlation(share, effect, method=m).to_dict() for m in ("pearson", "spearman")}
    line = correlation_line(correlation, categories)
    assert "34 categories; 4 with any query routed, 3 where the persona changed the score" in line
    assert "no interval: it rests on 3 of 34 points" in line and "[" not in line
    assert line.count("rests on") == 1  # one note for both when they share it
    assert "undefined" in correlation_line(
        {m: bootstrap_correlation(share, [0.0] * 34, method=m).to_dict() for m in ("pearson", "spearman")}, categories
    )


def test_table_1_shows_the_persona_carried_beside_knowledge_and_the_closing_lines_say_it():
    from prism.compare_findings import trade_off

    items = _items()
    cells = _cells(items)
    for d in DATASETS:  # the long expert prompt: 3 nats below base on knowledge, the same refusals as everyone
        cells[("expert prompt (long)", d)] = [
            {**row, "margin": row["margin"] - 1.0} if d in KNOWLEDGE else dict(row)
            for row in cells[("expert prompt", d)]
        ]
    for system in ("base", "expert prompt (long)", "PRISM"):
        for row in cells[(system, "harmbench")]:
            row["refused"] = 0.0
    systems = ("base", "expert prompt", "expert prompt (long)", "PRISM")
    fidelity = {
        **Estimate(0.53, 0.5, 0.57, 96).columns("fidelity"),
        "n": 96,
        **Estimate(0.33, 0.25, 0.4, 96).columns("other_persona_fidelity"),
    }
    adapters = {"prism": {"teacher_length": "long", "fidelity": fidelity}}
    summary = summarise(cells, systems, items, _routes(items), seed=0, adapters=adapters)
    rows = {row["system"]: row for row in summary["table"]}
    assert rows["PRISM"]["fidelity_n"] == 96 and rows["PRISM"]["teacher_length"] == "long"
    assert "fidelity" not in rows["expert prompt (long)"] and "fidelity" not in rows["base"]
    unmeasured = summarise(
        cells, systems, items, _routes(items), adapters={"prism": {"teacher_length": "long", "fidelity": None}}
    )
    assert "| not measured (no held-out sample) |" in format_table(unmeasured["table"]).splitlines()[-1]
    assert "What the persona path carries: not measured" in trade_off(unmeasured["table"])[-1]
    table = format_table(summary["table"]).splitlines()
    assert "| persona carried (held-out fidelity; other persona) |" in table[0]
    assert "| 0.53 [0.50, 0.57] of the long persona; 0.33 [0.25, 0.40] |" in table[-1] and "| - |" in table[2]
    lines = trade_off(summary["table"], summary["route_rates"])
    assert lines[0].startswith("- expert prompt: knowledge margin vs base -2.00 [-2.00, -2.00] nats (significant)")
    assert lines[1].startswith(
        "- expert prompt (long): knowledge margin vs base -3.00 [-3.00, -3.00] nats (significant)"
    )
    assert "PRISM: knowledge margin vs base" in lines[2] and "routing 25% of the knowledge questions" in lines[2]
    assert "0.53 [0.50, 0.57] (n=96) of the long persona's effect" in lines[3]
    assert "0.33 [0.25, 0.40]: the adapter carries more than every persona shares." in lines[3]
    assert [line for line in lines if "cannot separate" in line] == []  # the min expert prompt's refusals differ
    weak = {**fidelity, **Estimate(0.1, 0.05, 0.15, 96).columns("fidelity")}
    weaker = summarise(
        cells, systems, items, _routes(items), adapters={"prism": {"teacher_length": "long", "fidelity": weak}}
    )
    assert "carries less than another persona's prompt" in trade_off(weaker["table"])[3]
    summary_min = summarise(cells, ("base", "expert prompt (long)", "PRISM"), items, _routes(items), seed=0)
    closing = trade_off(summary_min["table"])
    assert "- HarmBench refusal is 0/12 for every system: this column cannot separate them." in closing
    assert summary_min["categories"] == [] or {c["dataset"] for c in summary_min["categories"]} <= set(DATASETS)
