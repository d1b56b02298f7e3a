"""Honest numbers for small dev sets: bootstrap intervals, paired differences, a paired acceptance rule.

Failures are 0/1 per dev item. Two methods judged on the same items are compared item by item
(paired): resampling items keeps each item's pair together, which is what makes a difference on 50
items meaningful at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_ITEMS = 10  # fewer items than this give intervals too wide to say anything


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.1%} [{self.low:.1%}, {self.high:.1%}]"


def _check(n: int) -> None:
    if n < MIN_ITEMS:
        raise ValueError(f"{n} dev items are too few for bootstrap intervals (at least {MIN_ITEMS})")


def bootstrap_rate(failures: Sequence[bool], *, confidence: float = 0.95, samples: int = 2000,
                   seed: int = 0) -> Interval:
    """Failure rate with a percentile bootstrap interval over items."""
    x = np.asarray(failures, dtype=float)
    _check(len(x))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_difference(candidate: Sequence[bool], baseline: Sequence[bool], *, confidence: float = 0.95,
                      samples: int = 2000, seed: int = 0) -> Interval:
    """Failure rate of ``candidate`` minus ``baseline`` on the same items, with a paired bootstrap interval.
    Negative means the candidate fails less."""
    a, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b):
        raise ValueError("paired results need the same dev items")
    _check(len(a))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(float((a - b).mean()), float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))


def paired_better(candidate: Sequence[bool], incumbent: Sequence[bool], *, confidence: float = 0.95,
                  samples: int = 2000, seed: int = 0) -> bool:
    """True when the candidate fails less than the incumbent at ``confidence`` (one-sided, paired):
    the upper end of the one-sided interval of the difference is below zero."""
    a, b = np.asarray(candidate, dtype=float), np.asarray(incumbent, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        return False
    if not (a != b).any():
        return False
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    return bool(np.quantile(diffs, confidence) < 0)
