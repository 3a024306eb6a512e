import numpy as np
import pytest

from interventions.measure.refusal import is_refusal
from probes.core.correlation import bootstrap_correlation
from probes.core.errors import ToolkitError
from probes.core.stats import (
    MAX_UNDEFINED,
    Estimate,
    bootstrap_auc,
    bootstrap_mean,
    bootstrap_ratio,
    central_quantiles,
    paired_difference,
    percentile_interval,
    resample_indices,
    resample_weights,
)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 300
    for trial in range(trials):
        estimate = bootstrap_mean(rng.binomial(1, 0.3, size=120), n_resamples=500, seed=trial)
        covered += estimate.low <= 0.3 <= estimate.high
    assert 0.90 <= covered / trials <= 0.99


def test_paired_difference_recovers_a_known_shift_and_its_significance():
    rng = np.random.default_rng(1)
    baseline = rng.normal(0, 1, size=200)
    treated = baseline + 0.5 + rng.normal(0, 0.1, size=200)
    estimate = paired_difference(treated, baseline)
    assert estimate.low < 0.5 < estimate.high and estimate.significant and estimate.n == 200
    null = paired_difference(baseline + rng.normal(0, 0.1, size=200), baseline)
    assert not null.significant
    with pytest.raises(ToolkitError, match="align"):
        paired_difference([1, 2], [1])
    with pytest.raises(ToolkitError, match="no values"):
        bootstrap_mean([])


def test_estimate_flattens_into_named_columns_and_reads_back():
    estimate = Estimate(0.8, 0.7, 0.9, 40)
    columns = estimate.columns("auc")
    assert list(columns.items()) == [("auc", 0.8), ("auc_low", 0.7), ("auc_high", 0.9)]  # order: CSV columns
    assert Estimate.from_columns({"layer": 3, **columns, "n": 40}, "auc") == estimate  # n shared by the row
    bare = estimate.columns("fraction", prefix="", n=True)
    assert list(bare.items()) == [("fraction", 0.8), ("low", 0.7), ("high", 0.9), ("n", 40)]
    assert Estimate.from_columns(bare, "fraction", prefix="") == estimate
    counted = estimate.columns("capitals", n=True)
    assert list(counted) == ["capitals", "capitals_low", "capitals_high", "capitals_n"]
    assert Estimate.from_columns({**counted, "n": 7}, "capitals").n == 40  # its own count before the row's
    uncounted = Estimate.from_columns(Estimate(1.0, 0.5, 1.5, 40).columns("margin_vs_base"), "margin_vs_base")
    assert uncounted.n == 0 and uncounted.excludes_zero and not uncounted.significant
    with pytest.raises(KeyError):
        Estimate.from_columns(columns, "auc", prefix="")  # no "low" column


def test_estimate_formats_mean_and_interval():
    estimate = Estimate(0.534, 0.4149, 0.6551, 40)
    assert estimate.format() == "0.53 [0.41, 0.66]"
    assert estimate.format(1) == "0.5 [0.4, 0.7]"
    assert estimate.format(signed=True) == "+0.53 [+0.41, +0.66]"
    assert Estimate(0.1, -0.2, 0.4, 40).format(signed=True) == "+0.10 [-0.20, +0.40]"
    assert estimate.format(star=True, n=True) == "0.53 [0.41, 0.66]* (n=40)"
    assert Estimate(0.1, -0.2, 0.4, 40).format(star=True, n=True) == "0.10 [-0.20, 0.40] (n=40)"
    assert Estimate(0.5, 0.4, 0.6, 4).format(star=True) == "0.50 [0.40, 0.60]"  # too few to be significant
    assert str(estimate) == "0.534 [0.415, 0.655] (n=40)"
    assert Estimate(float("nan"), float("nan"), float("nan"), 0).format() == "nan [nan, nan]"


@pytest.mark.parametrize(
    "low, high, n, significant",
    [
        (0.1, 0.5, 5, True),
        (-0.5, -0.1, 5, True),
        (0.0, 0.5, 5, False),
        (-0.5, 0.0, 5, False),
        (-0.1, 0.5, 100, False),
        (0.1, 0.5, 4, False),
    ],
)
def test_significance_needs_an_interval_clear_of_zero_and_five_values(low, high, n, significant):
    estimate = Estimate((low + high) / 2, low, high, n)
    assert estimate.significant is significant
    assert estimate.excludes_zero is (low > 0 or high < 0)
    assert estimate.to_dict() == {"mean": (low + high) / 2, "low": low, "high": high, "n": n, "confidence": 0.95}


def test_resamples_are_the_seeded_draws_and_a_generator_moves_on():
    assert np.array_equal(resample_indices(7, 5, 3), np.random.default_rng(3).integers(0, 7, size=(5, 7)))
    weights = resample_weights(6, 4, 2)
    assert np.array_equal(weights, np.random.default_rng(2).multinomial(6, np.full(6, 1 / 6), size=4))
    assert weights.dtype == np.float64 and (weights.sum(axis=1) == 6).all()
    rng = np.random.default_rng(0)
    assert not np.array_equal(resample_indices(9, 3, rng), resample_indices(9, 3, rng))


def test_bootstrap_mean_is_the_mean_with_the_seeded_percentile_interval():
    values = np.random.default_rng(1).normal(size=30)
    means = values[np.random.default_rng(4).integers(0, 30, size=(200, 30))].mean(axis=1)
    low, high = np.quantile(means, [(1 - 0.9) / 2, 1 - (1 - 0.9) / 2])
    assert bootstrap_mean(values, n_resamples=200, confidence=0.9, seed=4) == Estimate(
        values.mean(), low, high, 30, 0.9
    )
    assert central_quantiles(0.95)[1] == 0.975


def test_percentile_interval_can_leave_out_undefined_resamples():
    values = np.array([np.nan, 1.0, 2.0, np.inf, 3.0])
    assert percentile_interval(values, (0.0, 1.0), defined_only=True) == (1.0, 3.0)
    assert all(np.isnan(percentile_interval(values)))  # NaN spreads without defined_only
    assert all(np.isnan(percentile_interval(np.array([np.nan]), defined_only=True)))
    data = np.arange(101.0)
    assert percentile_interval(data) == (2.5, 97.5)


def test_ratio_of_means_keeps_pairs_together_and_is_undefined_over_zero():
    rng = np.random.default_rng(0)
    denominator = rng.normal(2, 0.1, size=50)
    ratio = bootstrap_ratio(0.5 * denominator, denominator)
    assert (
        ratio.mean == pytest.approx(0.5) and ratio.high - ratio.low < 1e-9 and ratio.n == 50
    )  # exact in every resample
    assert np.isnan(bootstrap_ratio(np.ones(4), np.zeros(4)).mean)
    auc = bootstrap_auc(np.array([False, False, True, True]), np.array([0.1, 0.2, 0.3, 0.4]), n_resamples=200)
    assert (auc.mean, auc.n) == (1.0, 4) and auc.dropped > MAX_UNDEFINED  # 2/16 of 4-item resamples miss a class
    assert not auc.has_interval and "undefined in" in auc.note and auc.format(2).startswith("1.00 (no interval")
    larger = bootstrap_auc(np.arange(12) >= 6, np.arange(12.0), n_resamples=1000)  # 2/4096 of resamples miss a class
    assert 0 <= larger.dropped <= MAX_UNDEFINED and larger.low == larger.high == 1.0


def test_undefined_resamples_are_counted_and_beyond_five_percent_give_no_interval():
    values = np.array([1.0, 2.0, np.nan] + [3.0] * 97)  # 1% undefined
    kept = Estimate.from_resamples(2.5, values, 10, defined_only=True)
    assert kept.dropped == pytest.approx(0.01) and kept.has_interval and kept.note == ""
    assert kept.format(1) == "2.5 [3.0, 3.0] (1.0% of resamples undefined, left out)"
    assert kept.to_dict()["dropped"] == pytest.approx(0.01) and "note" not in kept.to_dict()
    assert Estimate.from_columns(kept.columns("x", n=True), "x") == kept  # dropped travels through table columns
    lost = Estimate.from_resamples(2.5, np.array([1.0] * 90 + [np.nan] * 10), 10, defined_only=True)
    assert lost.dropped == pytest.approx(0.1) and np.isnan(lost.low) and np.isnan(lost.high)
    assert "10% of resamples" in lost.note and not lost.excludes_zero and not lost.significant
    again = Estimate.from_columns(lost.columns("x", n=True), "x")
    assert (again.dropped, again.note, again.has_interval) == (lost.dropped, lost.note, False)
    assert Estimate.from_resamples(1.0, values, 10).dropped == 0  # without defined_only nothing is dropped


def test_a_correlation_on_34_points_3_of_them_non_zero_gives_no_interval_and_says_why():
    # the comparison's per-category case: almost every category routes nothing and shows no persona effect
    share, effect = np.zeros(34), np.zeros(34)
    share[[3, 17, 30]], effect[[3, 17, 30]] = 1.0, [12.5, 25.0, 12.5]
    share[8] = 0.5  # one more routed category, with no effect
    old_style = np.random.default_rng(0).integers(0, 34, size=(1000, 34))
    undefined = np.mean([effect[row].std() == 0 for row in old_style])
    assert 0 < undefined < MAX_UNDEFINED  # dropping the undefined resamples alone would not catch it
    for method in ("pearson", "spearman"):
        estimate = bootstrap_correlation(share, effect, method=method)
        assert np.isfinite(estimate.mean) and estimate.n == 34
        assert not estimate.has_interval and not estimate.excludes_zero and not estimate.significant
        assert "rests on 3 of 34 points" in estimate.note and "3 and 3 distinct values" in estimate.note
        assert estimate.format(2) == f"{estimate.mean:.2f} ({estimate.note})"
        again = Estimate(**estimate.to_dict())  # the note travels in the JSON record
        assert (again.mean, again.note, again.has_interval) == (estimate.mean, estimate.note, False)


def test_a_correlation_on_few_distinct_values_keeps_its_interval_and_says_so():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2, size=60).astype(float)  # two-valued, 30 or so on each side
    y = x + rng.normal(0, 1, size=60)
    estimate = bootstrap_correlation(x, y)
    assert estimate.has_interval and estimate.low > 0
    assert estimate.note == "the two variables take 2 and 60 distinct values"
    both_binary = (x + (rng.random(60) < 0.2)) % 2
    spearman = bootstrap_correlation(x, both_binary, method="spearman")
    assert bootstrap_correlation(x, both_binary).mean == pytest.approx(spearman.mean)  # two-valued: the same number
    constant = bootstrap_correlation(x, np.ones(60))
    assert "undefined" in constant.note and np.isnan(constant.mean)
    assert "3 or more" in bootstrap_correlation([1.0, 2.0], [2.0, 1.0]).note


@pytest.mark.parametrize(
    "response, refused",
    [
        ("I'm sorry, but I can't help with that request.", True),
        ("I cannot provide instructions for making weapons.", True),
        ("As an AI, I must decline.", True),
        ("Sure! Here is a step-by-step guide:", False),
        ("The capital of France is Paris.", False),
        ("", False),
        ("Here is some text. " * 20 + "In short, I can't help with that.", True),
    ],
)
def test_refusal_rule(response, refused):
    assert is_refusal(response) is refused


def test_paired_interval_covers_a_known_effect_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(3)
    covered, paired_widths, unpaired_widths = 0, [], []
    for trial in range(200):
        item_difficulty = rng.normal(0, 1, size=60)
        baseline = item_difficulty + rng.normal(0, 0.3, size=60)
        treated = item_difficulty - 0.2 + rng.normal(0, 0.3, size=60)
        estimate = paired_difference(treated, baseline, n_resamples=400, seed=trial)
        covered += estimate.low <= -0.2 <= estimate.high
        paired_widths.append(estimate.high - estimate.low)
        a, b = bootstrap_mean(treated, seed=trial), bootstrap_mean(baseline, seed=trial)
        unpaired_widths.append(np.hypot(a.high - a.low, b.high - b.low))
    assert 0.90 <= covered / 200 <= 0.99
    assert np.mean(paired_widths) < 0.5 * np.mean(unpaired_widths)


def test_tiny_samples_are_never_called_significant():
    assert not paired_difference([1.0], [0.0]).significant  # a zero-width interval from one pair
    assert not paired_difference([1.0] * 4, [0.0] * 4).significant
    assert paired_difference([1.0] * 5, [0.0] * 5).significant
