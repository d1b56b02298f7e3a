"""Applying a method to instructions: evolving one instruction once, and evolution trajectories.

Evolving one instruction once (the evolver's prompt, reading its reply, the information-gain judge,
the answer, the failure rules) is written once, in ``evolution_steps``, for every verb: optimize's
trajectories and dev evaluation, compare, and evolve, which differ only in the rules they judge by
and in calling the LLM from threads or from an event loop.

A trajectory records, per instruction, stage 0 (the original) and each successful evolution after it.
An evolution that cannot be read, or that changed nothing, ends that instruction's trajectory and
says why; so does an LLM call that failed after its retries.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from ..llm.client import LLMError, Llm
from ..llm.replies import evolution_format
from ..storage.data import Item, with_input
from . import parsing
from .failure import Failure, Rules, failure_of
from .judge import Verdict, gain_prompt, read_verdict
from .method import Method


@dataclass(frozen=True)
class Evolution:
    item: Item
    stages: tuple[str, ...]          # stage 0 is the original instruction
    replies: tuple[str, ...] = ()    # the evolver's raw replies, one per round tried
    stopped: Failure | None = None   # why the last round tried produced no new stage


# --- evolving one instruction once: one implementation, a sync and an async driver -----------------
#
# Optimize (trajectories, dev evaluation) and compare call the LLM from worker threads; evolve calls it
# from an event loop, many items in flight. The steps of one item (the evolver's prompt, reading its
# reply, the information-gain judge, the answer, the failure rules after each) are written once, as a
# generator that yields the calls it needs and is sent their replies; ``run_steps`` and ``arun_steps``
# make those calls with Llm.ask and Llm.aask. So both paths send the same prompts with the same
# settings and judge the replies alike.

EVOL, ANSWER = "evol", "answer"   # the role a call goes to


def rollout_id(*parts) -> int:
    """A stable sampling id from ``parts`` (a seed and what names one sampled call): the same call gets
    the same id on every rerun (and cache entry), different calls different ones."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Ask:
    """One call an item's evolution needs: the role that answers it, the prompt, and its settings."""
    role: str
    prompt: str
    reply_format: object = None
    rollout: int | None = None
    temperature: float | None = None

    def options(self) -> dict:
        return {"reply_format": self.reply_format, "rollout": self.rollout, "temperature": self.temperature}


@dataclass(frozen=True)
class Outcome:
    """What became of one instruction evolved once, as far as it went."""
    rewrite: str | None              # the instruction read from the evolver's reply, kept even when it then
                                     # failed (the rejected text); None when none could be read or asked for
    reply: str                       # the evolver's raw reply; "(call failed: ...)" when that call failed;
                                     # "" when an earlier run's evolution was taken up
    failure: Failure | None = None
    answer: str | None = None        # the answer to the rewrite, when one was asked for and given
    evolution_failed: bool = False   # the failure came from the evolution itself, before any judge or answer
    error: str = ""                  # the message of a call that failed after its retries

    @property
    def evolved(self) -> str | None:
        """The new instruction, when the evolution itself succeeded."""
        return None if self.evolution_failed else self.rewrite

    @property
    def answer_text(self) -> str | None:
        """The answer as optimize and compare record it: a failed answer call says so."""
        if self.answer is None and self.error and not self.evolution_failed:
            return f"(call failed: {self.error})"
        return self.answer


Steps = Generator[Ask, object, Outcome]


def evolution_steps(method: Method, instruction: str, *, rules: Rules = Rules.F_R, answer: bool = False,
                    gain_judge: bool = False, rollout: int | None = None, temperature: float | None = None,
                    known: dict | None = None, keep: Callable[[dict], None] | None = None) -> Steps:
    """The steps of evolving ``instruction`` once with ``method``, as a generator of calls (see above).

    The reply is asked for in the method's own fields where the backend takes a schema (replies.py);
    either way the same instruction is read from it. Then, under ``rules``, each step is judged by
    failure.failure_of: the rewrite, the information-gain judge's verdict (``gain_judge``) and the
    answer (``answer``). ``rollout`` and ``temperature`` go to the evolution call (``rollout`` to the
    answer too). ``known`` holds the steps an earlier run finished ({"evolved", "judged"}), which are
    not asked again; ``keep`` is told of each step finished here. A failed call ends the item with
    ``llm_error``."""
    known = known or {}
    rewrite, reply = known.get("evolved"), ""
    if rewrite is None:
        try:
            got = yield Ask(EVOL, method.render(instruction), evolution_format(method.text), rollout, temperature)
        except LLMError as exc:
            return Outcome(None, f"(call failed: {exc})", Failure.LLM_ERROR, evolution_failed=True, error=str(exc))
        reply = got.text
        rewrite = parsing.read_evolution(got.text, got.fields, method.text)
        unchanged = rewrite is not None and parsing.same_instruction(rewrite, instruction)
        failure = failure_of(rules, rewrite=rewrite, unchanged=unchanged)
        if failure is not None:
            return Outcome(rewrite, reply, failure, evolution_failed=True)
        if keep:
            keep({"evolved": rewrite})
    if not answer:
        return Outcome(rewrite, reply)
    try:
        if gain_judge and not known.get("judged"):
            verdict = read_verdict((yield Ask(EVOL, gain_prompt(instruction, rewrite))).text)
            # An unreadable verdict is no evidence of no gain: only 'equal' eliminates.
            failure = failure_of(rules, rewrite=rewrite, equal=verdict is Verdict.EQUAL)
            if failure is not None:
                return Outcome(rewrite, reply, failure)
            if keep:
                keep({"evolved": rewrite, "judged": True})
        failure, text = yield from answer_steps(rewrite, rules=rules, rollout=rollout)
    except LLMError as exc:
        return Outcome(rewrite, reply, Failure.LLM_ERROR, error=str(exc))
    return Outcome(rewrite, reply, failure, answer=text)


def answer_steps(rewrite: str, *, rules: Rules = Rules.F_R, rollout: int | None = None):
    """The answer to an evolved instruction and what ``rules`` find in it, as steps returning (failure
    or None, the answer's text); a failed call raises LLMError into the caller's steps. Apart from the
    evolution so that compare can send a round's answer beside the next round's evolution."""
    text = (yield Ask(ANSWER, rewrite, rollout=rollout)).text
    return failure_of(rules, rewrite=rewrite, answer=text), text


def run_steps(steps: Steps, evol: Llm, answerer: Llm | None = None) -> Outcome:
    """Drive ``steps`` with blocking calls (optimize's and compare's worker threads)."""
    roles = {EVOL: evol, ANSWER: answerer or evol}
    resume, value = steps.send, None
    try:
        while True:
            ask = resume(value)
            try:
                value, resume = roles[ask.role].ask(ask.prompt, **ask.options()), steps.send
            except LLMError as exc:
                value, resume = exc, steps.throw
    except StopIteration as done:
        return done.value


async def arun_steps(steps: Steps, evol: Llm, answerer: Llm | None = None) -> Outcome:
    """Drive ``steps`` with async calls (evolve's event loop, many items in flight)."""
    roles = {EVOL: evol, ANSWER: answerer or evol}
    resume, value = steps.send, None
    try:
        while True:
            ask = resume(value)
            try:
                value, resume = await roles[ask.role].aask(ask.prompt, **ask.options()), steps.send
            except LLMError as exc:
                value, resume = exc, steps.throw
    except StopIteration as done:
        return done.value


def replay(steps: Generator[Ask, object, object], replies) -> Ask | object:
    """Send fresh ``steps`` the replies its calls got so far, in order (a Reply, or the LLMError of a
    call that failed for good): the next call it needs (an Ask), or what it returned once done.

    The steps are pure given their replies, so a Ray worker that holds only an item's replies (plain
    data that crosses processes) continues it exactly where the last worker left it (pipeline.py)."""
    try:
        ask = steps.send(None)
        for got in replies:
            ask = steps.throw(got) if isinstance(got, LLMError) else steps.send(got)
    except StopIteration as done:
        return done.value
    return ask


def evolve_once(llm: Llm, method: Method, instruction: str, *, rollout: int | None = None,
                temperature: float | None = None) -> tuple[str | None, str, Failure | None]:
    """(new instruction or None, raw reply, failure or None) for one round of evolution."""
    outcome = run_steps(evolution_steps(method, instruction, rollout=rollout, temperature=temperature), llm)
    return outcome.evolved, outcome.reply, outcome.failure


def evolve_and_answer(llm: Llm, method: Method, instruction: str) -> Outcome:
    """One round of evolution, answered and judged by F(r): what optimize's dev evaluation and compare
    measure a method by (two calls at most)."""
    return run_steps(evolution_steps(method, instruction, answer=True), llm)


async def aevolve_and_answer(llm: Llm, method: Method, instruction: str) -> Outcome:
    """``evolve_and_answer`` from an event loop (``--batch``: the calls wait for their batch together)."""
    return await arun_steps(evolution_steps(method, instruction, answer=True), llm)


def stage0(item: Item) -> str:
    """What is evolved of an item: its instruction, with its input data below it when it has some
    (Evol-Instruct evolves the two together, so an operator can keep or change the input)."""
    return with_input(item.instruction, str(item.extra.get("input") or ""))


def rounds_steps(method: Method, item: Item, rounds: int):
    """An item evolved ``rounds`` times with ``method``, each round from the last (optimize's
    trajectory), as steps: stopped at the first round that fails."""
    stages = [stage0(item)]
    replies = []
    for _ in range(rounds):
        outcome = yield from evolution_steps(method, stages[-1])
        replies.append(outcome.reply)
        if outcome.failure is not None:
            return Evolution(item, tuple(stages), tuple(replies), outcome.failure)
        stages.append(outcome.evolved)
    return Evolution(item, tuple(stages), tuple(replies))


def evolve_rounds(llm: Llm, method: Method, item: Item, rounds: int) -> Evolution:
    return run_steps(rounds_steps(method, item, rounds), llm)


async def aevolve_rounds(llm: Llm, method: Method, item: Item, rounds: int) -> Evolution:
    return await arun_steps(rounds_steps(method, item, rounds), llm)


@dataclass(frozen=True)
class Trajectory:
    method: Method
    evolutions: tuple[Evolution, ...] = field(default_factory=tuple)

    def render(self, *, max_reply_chars: int = 400) -> str:
        """The trajectory as the optimizer reads it: one block per case, stage by stage."""
        blocks = []
        for number, evo in enumerate(self.evolutions, start=1):
            lines = [f"Case {number}"]
            lines += [f"Stage {k}: {text}" for k, text in enumerate(evo.stages)]
            if evo.stopped is not None:
                k = len(evo.stages)
                if evo.stopped is Failure.UNCHANGED:
                    lines.append(f"Stage {k}: (the rewrite was the same instruction as stage {k - 1})")
                else:
                    reply = " ".join(evo.replies[-1].split())[:max_reply_chars]
                    lines.append(f"Stage {k}: (no rewritten instruction could be read; the reply began: {reply})")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)
