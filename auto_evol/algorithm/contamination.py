"""Decontamination: is an instruction a copy, or a light rewording, of a benchmark item?

Evolution rewrites seeds toward harder versions of familiar problems, so a benchmark's test problem
in the seeds (or an evolution that lands on one) would come back in the training set and inflate the
very score the fine-tuned model is judged by. Code and math data sets are decontaminated before
release by long n-gram overlap; this is that check.

Texts are normalised (NFKC, case-folded, punctuation dropped, whitespace collapsed: ``\\w+`` words)
and cut into n-grams of ``n`` words (13 by default, the common practice since GPT-3's
decontamination). An instruction is contaminated by a benchmark item when the n-grams they share
are at least ``SHARE`` of the n-grams of the shorter of the two: a verbatim copy shares all of them,
an evolution that wraps the whole problem in new constraints shares all of the problem's, and a
copy with a word changed here and there keeps most n-grams that do not cross a change. A clean
instruction that merely shares a stock phrase with a benchmark item ("how much money does she have
left at the end of the") shares one or two 13-grams out of dozens, below the share.

Measured (benchmarks/decontaminate_bench.py, one core of two shared): 1,319 GSM8K problems indexed
in 0.05 s; 100,000 records (GSM8K problems, as they are, evolved and reworded) checked against them
in 2.2 s, with 100 planted benchmark problems: 50/50 copies inside an evolution, 25/25 with two
words replaced, 21/25 with three.

Texts shorter than ``n`` words have one n-gram, the whole text, which matches only an identical
short text: a five-word seed is never flagged by a long problem that contains it.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# The reason an evolve reject carries (beside the elimination rules' Failure values): an evolution
# may be fine and still must not be released. Not a Failure: optimize's failure rates never see it.
CONTAMINATED = "contaminated"
NGRAM = 13
# Shared n-grams over the shorter text's n-grams at which an item is contaminated. Measured with
# 13-grams, GSM8K's 6,154 first training problems against its last 1,319: 8 reach 0.1, each the same
# problem told again (other names or numbers: 0.16-0.95); the next highest share is 0.071, then 0.029
# (stock phrases); every other problem shares none. Of 300 benchmark problems with 1 / 2 / 3 / 5
# words replaced at random, 299 / 281 / 239 / 165 are still caught; a copy inside a longer
# evolution, all of them.
SHARE = 0.1

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised words of ``text``: NFKC, case-folded, punctuation and whitespace dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    """The hashes of ``text``'s n-grams (its whole word sequence when shorter than ``n``)."""
    w = words(text)
    if not w:
        return set()
    if len(w) < n:
        return {hash(tuple(w))}
    return {hash(tuple(w[i:i + n])) for i in range(len(w) - n + 1)}


@dataclass(frozen=True)
class Hit:
    """The benchmark item an instruction overlaps, and by how much (shared n-grams over the shorter's)."""
    benchmark: str      # the benchmark's name, as given on the command line
    item_id: str        # the benchmark item's id
    share: float


class BenchmarkIndex:
    """The n-grams of one or more benchmarks' items, for checking many instructions against them.

    Picklable (Ray workers get it whole): a dict from n-gram hash to the items holding it. Python's
    string hash is salted per process, so the index is rebuilt from its texts when unpickled."""

    def __init__(self, items: Iterable[tuple[str, str, str]], n: int = NGRAM, share: float = SHARE) -> None:
        """``items``: (benchmark name, item id, text)."""
        if n < 1:
            raise ValueError(f"n-grams of {n} words")
        self.n, self.share = n, share
        self.items: list[tuple[str, str, str]] = list(items)
        self._build()

    def _build(self) -> None:
        self.sizes: list[int] = []
        self.index: dict[int, list[int]] = {}
        for i, (_, _, text) in enumerate(self.items):
            grams = ngrams(text, self.n)
            self.sizes.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(i)

    def __getstate__(self) -> dict:
        return {"n": self.n, "share": self.share, "items": self.items}

    def __setstate__(self, state: dict) -> None:
        self.n, self.share, self.items = state["n"], state["share"], state["items"]
        self._build()

    def __len__(self) -> int:
        return len(self.items)

    def check(self, text: str) -> Hit | None:
        """The benchmark item ``text`` is contaminated by (the most overlapping one), or None."""
        grams = ngrams(text, self.n)
        if not grams:
            return None
        shared: Counter = Counter()
        index = self.index
        for g in grams:
            holders = index.get(g)
            if holders:
                shared.update(holders)
        if not shared:
            return None
        best, share = None, 0.0
        for i, count in shared.items():
            s = count / min(len(grams), self.sizes[i])
            if s > share:
                best, share = i, s
        if share < self.share:
            return None
        name, item_id, _ = self.items[best]
        return Hit(name, item_id, round(share, 3))
