"""Evol method optimization: a candidate method written from the feedback on the current one.

The optimization continues the analysis conversation (feedback.py): the optimizer is shown the
current method after its own analysis of the trajectory and asked to rewrite it. When no method can
be read from the reply, the candidate is the current method unchanged, marked unreadable, so the
step still has m candidates and the failure is counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..llm.client import LLMError, Llm
from ..llm.replies import OPTIMIZATION
from . import parsing
from .evaluation import Evaluation
from .feedback import Feedback
from .method import Method

OPTIMIZATION_PROMPT = """\
You improve instruction-evolving methods. This is the method that produced the trajectories above:

=== Current method ===
{method}
=== End of current method ===

The instruction to evolve is given to the method after its text (after its last '#Instruction#:'
line, or at '{{instruction}}' where the method has that placeholder).

Using the failed cases you named, write an optimized method:
- fix what made those cases fail, without making the cases that evolved well any worse;
- the optimized method must raise complexity at least as much as the current one does;
- keep the reply format the current method asks for, including the line that introduces the final
  instruction.

Reply with a line that says 'Optimized Method:' and then the full text of the optimized method,
with nothing after it.
"""


@dataclass(frozen=True)
class Candidate:
    index: int
    method: Method
    feedback: str
    readable: bool                 # False: the optimizer's reply held no usable method
    reply: str = ""
    evaluation: Evaluation | None = None


def propose(llm: Llm, current: Method, feedback: Feedback, *, index: int, rollout: int, name: str,
            made_by: str) -> Candidate:
    """Ask the optimizer for a better method; fall back to ``current`` when none can be read."""
    try:
        reply = llm.ask(_prompt(current), rollout=rollout, reply_format=OPTIMIZATION,
                        history=feedback.conversation).text
    except LLMError as exc:
        reply = f"(call failed: {exc})"
    return _candidate(reply, current, feedback, index=index, name=name, made_by=made_by)


async def apropose(llm: Llm, current: Method, feedback: Feedback, *, index: int, rollout: int, name: str,
                   made_by: str) -> Candidate:
    """``propose`` on an event loop (optimize: each candidate as soon as its own analysis is read)."""
    try:
        reply = (await llm.aask(_prompt(current), rollout=rollout, reply_format=OPTIMIZATION,
                                history=feedback.conversation)).text
    except LLMError as exc:
        reply = f"(call failed: {exc})"
    return _candidate(reply, current, feedback, index=index, name=name, made_by=made_by)


def _prompt(current: Method) -> str:
    return OPTIMIZATION_PROMPT.format(method=current.text.strip())


def _candidate(reply: str, current: Method, feedback: Feedback, *, index: int, name: str, made_by: str) -> Candidate:
    text = parsing.optimized_method(reply)
    if text is None:
        return Candidate(index, current, feedback.text, readable=False, reply=reply)
    method = Method(name=name, text=text, parent=current.name, made_by=made_by)
    return Candidate(index, method, feedback.text, readable=True, reply=reply)
