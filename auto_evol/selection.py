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


def halving_rungs(n_items: int, n_candidates: int, *, min_slice: int = 4, finalists: int = 2) -> list[int]:
    """Dev-set prefix sizes for successive halving: a first slice doubling at each halving until at
    most ``finalists`` candidates remain, who are then judged on the whole set.

    The first slice is the dev set divided by 2^(halvings + 1) (at least ``min_slice`` items): with
    m = 5 and 50 items, rungs of 6 and 12 items, then the last two on all 50 (half the calls of
    judging every candidate on every item).
    """
    halvings, alive = 0, n_candidates
    while alive > finalists:
        alive = -(-alive // 2)
        halvings += 1
    size = max(min_slice, n_items // 2 ** (halvings + 1))
    sizes = []
    for _ in range(halvings):
        if size >= n_items:
            break
        sizes.append(size)
        size *= 2
    return sizes + [n_items]


def successive_halving(n_candidates: int, n_items: int, judge, *, min_slice: int = 4, finalists: int = 2):
    """Score candidates on growing prefixes of the dev set, dropping the worse half at each rung.

    ``judge(pairs)`` gets a list of (candidate, item) pairs and returns one failure flag per pair, in
    order (so a caller can run a rung's pairs concurrently). Returns (survivor, failures per
    candidate): the finalists have been judged on every item, dropped candidates on a prefix. Ties
    keep the lower index, so the result does not depend on timing.
    """
    failures: list[list[bool]] = [[] for _ in range(n_candidates)]
    alive = list(range(n_candidates))
    for size in halving_rungs(n_items, n_candidates, min_slice=min_slice, finalists=finalists):
        pairs = [(c, i) for c in alive for i in range(len(failures[c]), size)]
        for (c, _), failed in zip(pairs, judge(pairs)):
            failures[c].append(bool(failed))
        if size < n_items:
            alive.sort(key=lambda c: (sum(failures[c][:size]) / size, c))
            alive = sorted(alive[: -(-len(alive) // 2)])
    survivor = min(alive, key=lambda c: (sum(failures[c]) / n_items, c))
    return survivor, failures
