"""Choosing the next method: the lowest failure rate wins; a tie keeps the incumbent."""
from __future__ import annotations

from collections.abc import Sequence


def winner(incumbent_rate: float, candidate_rates: Sequence[float]) -> int | None:
    """Index of the candidate that replaces the incumbent, or None when none beats it.

    Among equally good candidates the first one wins, so the choice does not depend on timing.
    """
    if not candidate_rates:
        return None
    best = min(range(len(candidate_rates)), key=lambda i: (candidate_rates[i], i))
    return best if candidate_rates[best] < incumbent_rate else None


def should_stop(accepted: Sequence[bool], patience: int) -> bool:
    """Stop once the last ``patience`` steps in a row brought no better method."""
    if patience < 1 or len(accepted) < patience:
        return False
    return not any(accepted[-patience:])
