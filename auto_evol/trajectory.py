"""Applying a method to instructions: evolution trajectories and the evol LLM's answers.

A trajectory records, per instruction, stage 0 (the original) and each successful evolution after it.
An evolution that cannot be read, or that changed nothing, ends that instruction's trajectory and
says why; so does an LLM call that failed after its retries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import parsing
from .data import Item
from .failure import Failure
from .llm import LLMError, Llm
from .method import Method


@dataclass(frozen=True)
class Evolution:
    item: Item
    stages: tuple[str, ...]          # stage 0 is the original instruction
    replies: tuple[str, ...] = ()    # the evolver's raw replies, one per round tried
    stopped: Failure | None = None   # why the last round tried produced no new stage

    @property
    def final(self) -> str:
        return self.stages[-1]


def evolve_once(llm: Llm, method: Method, instruction: str) -> tuple[str | None, str, Failure | None]:
    """(new instruction or None, raw reply, failure or None) for one round of evolution."""
    try:
        reply = llm.ask(method.render(instruction)).text
    except LLMError as exc:
        return None, f"(call failed: {exc})", Failure.LLM_ERROR
    evolved = parsing.evolved_instruction(reply, bare_allowed=parsing.ends_with_final_header(method.text))
    if evolved is None:
        return None, reply, Failure.UNREADABLE_EVOLUTION
    if parsing.same_instruction(evolved, instruction):
        return None, reply, Failure.UNCHANGED
    return evolved, reply, None


def evolve(llm: Llm, method: Method, item: Item, rounds: int) -> Evolution:
    stages = [item.instruction]
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
