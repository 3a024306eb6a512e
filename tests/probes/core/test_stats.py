import numpy as np
import pytest

from interventions.measure.refusal import is_refusal
from probes.core.errors import ToolkitError
from probes.core.stats import bootstrap_mean, paired_difference


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
