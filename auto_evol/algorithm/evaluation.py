"""A method's failure rate on the dev set: evolve each dev instruction once, answer it, judge it.

lambda = (number of failed dev items) / (number of dev items judged). An item fails when its
evolution fails (unreadable, unchanged) or when F(r) flags the evol LLM's answer r to the evolved
instruction. An item whose LLM call failed after its retries (``llm_error``) says nothing about the
method: it is left out of the rate and counted beside it, so a flaky provider cannot penalise one
candidate at random.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..llm.client import Llm
from ..storage.data import Item
from .failure import Failure
from .method import Method
from .trajectory import arun_steps, evolution_steps, run_steps, stage0


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
        """Items the method failed (call errors not included)."""
        return sum(_failed(r) for r in self.results)

    @property
    def errors(self) -> int:
        """Items whose LLM call failed after its retries: not judged."""
        return sum(r.failure is Failure.LLM_ERROR for r in self.results)

    @property
    def rate(self) -> float:
        """Failed / judged; 1.0 when nothing could be judged (such a method can never win)."""
        judged = len(self.results) - self.errors
        return self.failures / judged if judged else 1.0

    def flags(self) -> list[bool]:
        """Failed or not, per dev item in order: what paired tests compare (a call error counts as
        not failed, so it never argues for either method)."""
        return [_failed(r) for r in self.results]

    def counts(self) -> Counter:
        return Counter(r.failure.value for r in self.results if r.failure is not None)

    @property
    def length_growth(self) -> float | None:
        """Mean ratio of evolved to original length, in words, over the items that evolved."""
        ratios = [len(r.evolved.split()) / max(1, len(r.item.instruction.split()))
                  for r in self.results if r.evolved]
        return sum(ratios) / len(ratios) if ratios else None


def _failed(result: DevResult) -> bool:
    return result.failure is not None and result.failure is not Failure.LLM_ERROR


def judge_item(llm: Llm, method: Method, item: Item) -> DevResult:
    """Evolve one dev item with ``method`` and judge the evol LLM's answer to it (two calls at most)."""
    return dev_result(item, run_steps(dev_steps(method, item), llm))


async def ajudge_item(llm: Llm, method: Method, item: Item) -> DevResult:
    """``judge_item`` from an event loop (a batched evol role: every dev pair in flight at once)."""
    return dev_result(item, await arun_steps(dev_steps(method, item), llm))


def dev_steps(method: Method, item: Item):
    """``judge_item`` as steps (trajectory.py's generator of calls) that return the result as plain data
    (``dev_result`` reads it back): driven here, or by a Ray worker for one (method, dev item) pair."""
    outcome = yield from evolution_steps(method, stage0(item), answer=True)
    return {"evolved": outcome.evolved, "answer": outcome.answer_text, "reply": outcome.reply,
            "failure": outcome.failure.value if outcome.failure is not None else None}


def dev_result(item: Item, data: dict) -> DevResult:
    failure = Failure(data["failure"]) if data["failure"] is not None else None
    return DevResult(item, data["evolved"], data["answer"], failure, data["reply"])
