"""One phase of ``evolve`` for one item, as steps: what the item asks of the LLM and the journal record
it ends in. Pure: no I/O and no LLM here.

Each phase item is a generator (trajectory.py's convention): it yields the calls it needs (``Ask``),
is sent their replies (or thrown the LLMError of a call that failed for good), and returns the record
its phase's journal keeps. The single-process path drives it with async calls (trajectory.arun_steps,
many items on one event loop); the Ray path (pipeline.py) keeps only an item's replies so far and
replays them (trajectory.replay) wherever the next call is made, so a row can cross workers and LLM
stages as plain data. Both paths run this code, which is why their record sets are equal.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from ..llm.client import LLMError
from ..storage.data import with_input
from .contamination import CONTAMINATED
from .failure import Failure, Rules
from .method import Method, pick
from .trajectory import ANSWER, Ask, evolution_steps, rollout_id

ItemSteps = Generator[Ask, object, dict]   # yields calls, returns the journal record


@dataclass(frozen=True)
class RoundPlan:
    """What decides one round's records besides the replies: picklable, so Ray workers get it whole."""
    round: int
    methods: tuple[tuple[Method, float], ...]
    seed: int = 0
    judge: bool = True                      # the information-gain judge's equal / not equal verdict
    retry_temperature: float | None = None  # the evol temperature for an item failed last round (None: as set)
    evol_label: str = ""
    answer_label: str = ""
    contamination: object = None            # --decontaminate: a contamination.BenchmarkIndex, or None

    @property
    def calls_per_item(self) -> int:
        """Calls one item takes at most: its evolution, the judge's verdict (``judge``), its answer."""
        return 3 if self.judge else 2


def rollout(seed: int, seed_id: str, round_: int) -> int:
    """A stable id per (seed, item, round): each round's attempt at an item is its own sample and its
    own cache entry, so a failed item tried again next round is drawn anew, while a rerun of the
    same command with --cache-dir still finds every finished call in the cache."""
    return rollout_id(seed, seed_id, round_)


def round_item(row: dict, plan: RoundPlan, *, known: dict | None = None, keep=None) -> ItemSteps:
    """Evolve one pool row once (trajectory.evolution_steps under the elimination rules), judged and
    answered; returns its journal record, kept or rejected with the reason. The evolver sees the
    instruction with its input below it (Evol-Instruct evolves the two together); an evolved
    instruction carries whatever input it kept, so its own input is empty. ``known``/``keep``: the
    steps an earlier run finished for this item, and where to note each step finished now."""
    instruction, input_text = row["instruction"], row.get("input", "")
    parent = with_input(instruction, input_text)
    method = pick(list(plan.methods), plan.seed, row["seed_id"], plan.round)
    record = {"seed_id": row["seed_id"], "round": plan.round, "parent_instruction": parent, "input": input_text,
              "method": method.name, "method_hash": method.hash,
              "evol_model": plan.evol_label, "answer_model": plan.answer_label}
    retry = row.get("status") == "rejected"
    outcome = yield from evolution_steps(
        method, parent, rules=Rules.ELIMINATION, answer=True, gain_judge=plan.judge,
        rollout=rollout(plan.seed, row["seed_id"], plan.round),
        temperature=plan.retry_temperature if retry else None, known=known, keep=keep)
    hit = (plan.contamination.check(outcome.rewrite)
           if outcome.failure is None and plan.contamination is not None else None)
    if hit is not None:   # a benchmark item (or a light rewording of one): never released, tried again next round
        record.update(status="rejected", instruction=instruction, rejected_instruction=outcome.rewrite,
                      rejected_output=outcome.answer or "", reason=CONTAMINATED,
                      benchmark=hit.benchmark, benchmark_id=hit.item_id, overlap=hit.share)
    elif outcome.failure is None:
        record.update(status="kept", instruction=outcome.rewrite, input="", output=outcome.answer)
    else:
        record.update(status="rejected", instruction=instruction, rejected_instruction=outcome.rewrite or "",
                      rejected_output=outcome.answer or "", reason=outcome.failure.value)
    return record


def seed_answer(row: dict) -> ItemSteps:
    """Answer a seed that came without an answer; a failed call or an empty reply fails this seed only
    (its record goes to the rejects)."""
    entry = {"seed_id": row["seed_id"], "instruction": row["instruction"], "input": row["input"]}
    try:
        text = (yield Ask(ANSWER, with_input(row["instruction"], row["input"]))).text
        reason = None if text.strip() else Failure.EMPTY_ANSWER
    except LLMError:
        reason = Failure.LLM_ERROR
    return {**entry, "output": text} if reason is None else {**entry, "output": "", "reason": reason.value}
