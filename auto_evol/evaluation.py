"""A method's failure rate on the dev set: evolve each dev instruction once, answer it, judge it.

lambda = (number of failed dev items) / |D|. An item fails when its evolution fails (unreadable,
unchanged, call error) or when F(r) flags the evol LLM's answer r to the evolved instruction.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .data import Item
from .failure import Failure, answer_failure
from .llm import Llm
from .method import Method
from .trajectory import answer, evolve_once


@dataclass(frozen=True)
class DevResult:
    item: Item
    evolved: str | None
    answer: str | None
    failure: Failure | None
    reply: str = ""


@dataclass(frozen=True)
class Evaluation:
    method: Method
    results: tuple[DevResult, ...]

    @property
    def failures(self) -> int:
        return sum(r.failure is not None for r in self.results)

    @property
    def rate(self) -> float:
        return self.failures / len(self.results) if self.results else 1.0

    def flags(self) -> list[bool]:
        """Failed or not, per dev item in order: what paired tests compare."""
        return [r.failure is not None for r in self.results]

    def counts(self) -> Counter:
        return Counter(r.failure.value for r in self.results if r.failure is not None)

    @property
    def length_growth(self) -> float | None:
        """Mean ratio of evolved to original length, in words, over the items that evolved."""
        ratios = [len(r.evolved.split()) / max(1, len(r.item.instruction.split()))
                  for r in self.results if r.evolved]
        return sum(ratios) / len(ratios) if ratios else None


def judge(llm: Llm, method: Method, item: Item) -> DevResult:
    """Evolve one dev item with ``method`` and judge the evol LLM's answer to it (two calls at most)."""
    evolved, reply, failure = evolve_once(llm, method, item.instruction)
    if failure is not None:
        return DevResult(item, None, None, failure, reply)
    text, failure = answer(llm, evolved)
    return DevResult(item, evolved, text, failure or answer_failure(text), reply)
