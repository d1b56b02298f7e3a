"""Applying a method to instructions: evolution trajectories and the evol LLM's answers.

A trajectory records, per instruction, stage 0 (the original) and each successful evolution after it.
An evolution that cannot be read, or that changed nothing, ends that instruction's trajectory and
says why; so does an LLM call that failed after its retries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import parsing
from .data import Item, with_input
from .failure import Failure
from .llm import LLMError, Llm
from .method import Method
from .replies import evolution_format


@dataclass(frozen=True)
class Evolution:
    item: Item
    stages: tuple[str, ...]          # stage 0 is the original instruction
    replies: tuple[str, ...] = ()    # the evolver's raw replies, one per round tried
    stopped: Failure | None = None   # why the last round tried produced no new stage


def evolve_once(llm: Llm, method: Method, instruction: str, *, rollout: int | None = None,
                temperature: float | None = None) -> tuple[str | None, str, Failure | None]:
    """(new instruction or None, raw reply, failure or None) for one round of evolution.

    The reply is asked for in the method's own fields where the backend takes a schema (replies.py);
    either way the same instruction is read from it."""
    try:
        reply = llm.ask(method.render(instruction), rollout=rollout, temperature=temperature,
                        reply_format=evolution_format(method.text))
    except LLMError as exc:
        return None, f"(call failed: {exc})", Failure.LLM_ERROR
    evolved, text, failure = judge_evolution(reply.text, reply.fields, method, instruction)
    return (None if failure else evolved), text, failure


def judge_evolution(text: str, fields: dict | None, method: Method,
                    instruction: str) -> tuple[str | None, str, Failure | None]:
    """What became of one evolution, from the evolver's reply: the part every caller shares. An
    unchanged rewrite is returned with its failure, so a caller can keep it as the rejected text."""
    evolved = parsing.read_evolution(text, fields, method.text)
    if evolved is None:
        return None, text, Failure.UNREADABLE_EVOLUTION
    if parsing.same_instruction(evolved, instruction):
        return evolved, text, Failure.UNCHANGED
    return evolved, text, None


def stage0(item: Item) -> str:
    """What is evolved of an item: its instruction, with its input data below it when it has some
    (Evol-Instruct evolves the two together, so an operator can keep or change the input)."""
    return with_input(item.instruction, str(item.extra.get("input") or ""))


def evolve(llm: Llm, method: Method, item: Item, rounds: int) -> Evolution:
    stages = [stage0(item)]
    replies = []
    for _ in range(rounds):
        evolved, reply, failure = evolve_once(llm, method, stages[-1])
        replies.append(reply)
        if failure is not None:
            return Evolution(item, tuple(stages), tuple(replies), failure)
        stages.append(evolved)
    return Evolution(item, tuple(stages), tuple(replies))


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


def answer(llm: Llm, instruction: str) -> tuple[str, Failure | None]:
    """The evol LLM's answer to an instruction, or a failure when the call itself failed."""
    try:
        return llm.ask(instruction).text, None
    except LLMError as exc:
        return f"(call failed: {exc})", Failure.LLM_ERROR
