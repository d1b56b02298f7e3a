import numpy as np
import pytest

from auto_evol.algorithm.stats import bootstrap_rate, paired_better, paired_difference


def test_bootstrap_interval_covers_the_rate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.random(20) < 0.3
    large = rng.random(400) < 0.3
    a, b = bootstrap_rate(small), bootstrap_rate(large)
    assert a.low <= a.estimate <= a.high and b.low <= b.estimate <= b.high
    assert (b.high - b.low) < (a.high - a.low)
    assert bootstrap_rate(small, seed=3) == bootstrap_rate(small, seed=3)


def test_paired_difference_sees_what_unpaired_rates_hide():
    rng = np.random.default_rng(2)
    base = rng.random(50) < 0.5
    better = base.copy()
    better[np.flatnonzero(base)[:8]] = False         # the same items, 8 fewer failures
    diff = paired_difference(better, base)
    assert diff.estimate == pytest.approx(-8 / 50) and diff.high < 0
    assert paired_better(better, base, confidence=0.95)
    assert not paired_better(base, better, confidence=0.95)
    assert not paired_better(base, base)                # identical: never better


def test_too_few_items_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        bootstrap_rate([True, False, True])
