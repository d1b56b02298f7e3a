"""Choosing the next method: the lowest failure rate wins; a tie keeps the incumbent.

Three ways to spend the dev set on m candidates: every candidate on every item (full), successive
halving (growing prefixes, the worse half dropped at each rung) and racing (a batch of items at a
time, a candidate dropped once it is clearly worse than the leader on the same items).

Each strategy is written as steps: a generator that yields the (candidate, item) pairs it needs judged
next and is sent their failure flags, in the same order, until it returns (survivor, failures). So the
decision depends on the evidence alone, never on when it arrived: ``drive`` feeds the steps from a
blocking ``judge`` (tests, benchmarks), and optimize feeds them on its event loop, each batch of pairs
as soon as its last flag is in (trajectory.py's evolution steps work the same way).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

Pairs = list[tuple[int, int]]
Steps = Generator[Pairs, list[bool], tuple[int | None, list[list[bool]]]]


def drive(steps: Steps, judge: Callable[[Pairs], Sequence[bool]]) -> tuple[int | None, list[list[bool]]]:
    """Run a strategy's steps with a blocking ``judge(pairs) -> flags``; returns what the steps return."""
    try:
        pairs = steps.send(None)
        while True:
            pairs = steps.send([bool(f) for f in judge(pairs)] if pairs else [])
    except StopIteration as done:
        return done.value


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


def every_item_steps(n_candidates: int, n_items: int, *, incumbent: Sequence[bool] | None = None) -> Steps:
    """Judge every candidate on every item, all pairs asked at once (so they share the calls in flight).
    The result is as for ``successive_halving``; ``incumbent`` plays no part."""
    pairs = [(c, i) for c in range(n_candidates) for i in range(n_items)]
    flags = (yield pairs) if pairs else []
    failures = [flags[c * n_items:(c + 1) * n_items] for c in range(n_candidates)]
    survivor = min(range(n_candidates), key=lambda c: (sum(failures[c]), c)) if n_candidates else None
    return survivor, failures


def halving_steps(n_candidates: int, n_items: int, *, min_slice: int = 4, finalists: int = 2,
                  incumbent: Sequence[bool] | None = None) -> Steps:
    """Score candidates on growing prefixes of the dev set, dropping the worse half at each rung.

    Each rung's (candidate, item) pairs are yielded together (so they are judged concurrently) and
    answered with one failure flag per pair, in order. Returns (survivor, failures per
    candidate): the finalists have been judged on every item, dropped candidates on a prefix. Ties
    keep the lower index, so the result does not depend on timing. ``incumbent`` plays no part:
    halving compares the candidates among themselves. With at most ``finalists`` candidates there is
    nothing to halve and every candidate is judged on every item.
    """
    failures: list[list[bool]] = [[] for _ in range(n_candidates)]
    alive = list(range(n_candidates))
    for size in halving_rungs(n_items, n_candidates, min_slice=min_slice, finalists=finalists):
        pairs = [(c, i) for c in alive for i in range(len(failures[c]), size)]
        for (c, _), failed in zip(pairs, (yield pairs) if pairs else []):
            failures[c].append(bool(failed))
        if size < n_items:
            alive.sort(key=lambda c: (sum(failures[c][:size]) / size, c))
            alive = sorted(alive[: -(-len(alive) // 2)])
    survivor = min(alive, key=lambda c: (sum(failures[c]) / n_items, c)) if alive else None
    return survivor, failures


RACE_Z = 1.7          # one-sided sign test at about 95.5%
RACE_FIRST = 5        # items every candidate sees before any can be dropped
RACE_BATCH = 5        # items added per round of the race


def clearly_worse(flags: Sequence[bool], leader: Sequence[bool], z: float = RACE_Z) -> bool:
    """Whether a candidate failed clearly more of the same items than the leader: its extra failures
    exceed ``z`` x sqrt(items on which the two differ) (a one-sided sign test on paired items)."""
    extra = sum(flags) - sum(leader)
    differ = sum(a != b for a, b in zip(flags, leader))
    return extra > z * math.sqrt(max(differ, 1))


def race_steps(n_candidates: int, n_items: int, *, z: float = RACE_Z, first: int = RACE_FIRST,
               batch: int = RACE_BATCH, incumbent: Sequence[bool] | None = None) -> Steps:
    """Judge the candidates still in the race on the next ``batch`` dev items, then drop every one
    that is clearly worse than the leader (fewest failures) on the items both have seen. The last one
    left is judged on the rest of the dev set; if several last to the end, the fewest failures win.

    ``incumbent`` (its failure flag per dev item, known from its own evaluation) races too: a
    candidate clearly worse than the incumbent on the items it has seen cannot replace it and leaves
    at once, even as the leader; with none left the race ends (survivor None). The incumbent costs no
    call: it was judged on the same items when it won.

    Unlike halving, the cost adapts: far-apart candidates leave after a few items, close ones are
    followed to the end. The steps and the result are as for ``halving_steps``.
    """
    failures: list[list[bool]] = [[] for _ in range(n_candidates)]
    alive = list(range(n_candidates))
    size = min(max(1, first), n_items)
    while alive:
        pairs = [(c, i) for c in alive for i in range(len(failures[c]), size)]
        for (c, _), failed in zip(pairs, (yield pairs) if pairs else []):
            failures[c].append(bool(failed))
        if len(alive) > 1:
            leader = min(alive, key=lambda c: (sum(failures[c]), c))
            alive = [c for c in alive if not clearly_worse(failures[c], failures[leader], z)]
        if incumbent is not None:
            alive = [c for c in alive if not clearly_worse(failures[c], incumbent[:len(failures[c])], z)]
        if size >= n_items:
            break
        # The last one left runs to the end at once, unless the incumbent may still stop it on the way.
        size = n_items if len(alive) == 1 and incumbent is None else min(n_items, size + batch)
    survivor = min(alive, key=lambda c: (sum(failures[c]), c)) if alive else None
    return survivor, failures


def every_item(n_candidates: int, n_items: int, judge, *, incumbent: Sequence[bool] | None = None):
    """``every_item_steps`` driven by a blocking ``judge(pairs) -> flags``."""
    return drive(every_item_steps(n_candidates, n_items, incumbent=incumbent), judge)


def successive_halving(n_candidates: int, n_items: int, judge, *, incumbent: Sequence[bool] | None = None,
                       **settings):
    """``halving_steps`` driven by a blocking ``judge(pairs) -> flags``."""
    return drive(halving_steps(n_candidates, n_items, incumbent=incumbent, **settings), judge)


def race(n_candidates: int, n_items: int, judge, *, incumbent: Sequence[bool] | None = None, **settings):
    """``race_steps`` driven by a blocking ``judge(pairs) -> flags``."""
    return drive(race_steps(n_candidates, n_items, incumbent=incumbent, **settings), judge)


def _halving_first(n_items: int, most_candidates: int) -> int:
    return halving_rungs(n_items, most_candidates)[0]


@dataclass(frozen=True)
class Strategy:
    """One way to spend the dev set on the candidates. ``steps(n_candidates, n_items, *, incumbent)``
    yields the pairs to judge and returns (survivor or None, failure flags per candidate); a candidate
    with fewer flags than items was dropped on the way and cannot replace the incumbent.

    ``first(n_items, most_candidates)``: the items every candidate is judged on whatever the others do
    (with at most ``most_candidates`` of them), so a candidate's first pairs can be sent the moment its
    method is read, before the others are (full: all of them; halving: its first rung, which only
    grows when fewer candidates come; race: the first items of the race). Sending them early changes
    no decision and costs no call the steps would not ask for."""

    name: str
    steps: Callable[..., Steps]
    help: str
    first: Callable[[int, int], int]

    def run(self, n_candidates: int, n_items: int, judge, *, incumbent: Sequence[bool] | None = None):
        """The steps driven by a blocking ``judge(pairs) -> flags``."""
        return drive(self.steps(n_candidates, n_items, incumbent=incumbent), judge)


# The one table of selection strategies: --selection's check, the loop's dispatch and the CLI help
# all read it. A new strategy is one generator above and one line here.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("full", every_item_steps, "every candidate on every dev item", lambda n_items, most: n_items),
    Strategy("halving", halving_steps, "successive halving over the dev set", _halving_first),
    Strategy("race", race_steps, "drop a candidate once it is clearly worse than the leader, or than the incumbent, "
                                 "on the same items", lambda n_items, most: min(max(1, RACE_FIRST), n_items)),
)}
DEFAULT = "full"


def names() -> str:
    """The strategies' names as a sentence: "full, halving or race"."""
    keys = list(STRATEGIES)
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def help_text() -> str:
    """The --selection help, one clause per strategy, from the table."""
    return " | ".join(f"{s.name} ({s.help})" for s in STRATEGIES.values()) + f". [default: {DEFAULT}]"
