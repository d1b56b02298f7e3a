"""Evol method optimization: a candidate method written from the feedback on the current one.

When no method can be read from the optimizer's reply, the candidate is the current method unchanged,
marked unreadable, so the step still has m candidates and the failure is counted.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import parsing
from .evaluation import Evaluation
from .llm import LLMError, Llm
from .method import Method

OPTIMIZATION_PROMPT = """\
You improve instruction-evolving methods. A method is a prompt that an AI model follows to rewrite
an instruction into a more complex one; the instruction is put where the method says {{instruction}}.

=== Current method ===
{method}
=== End of current method ===

=== Feedback on the cases the current method failed ===
{feedback}
=== End of feedback ===

Write an improved method:
- fix the failures named in the feedback without making the other cases worse;
- never reduce how much the method increases complexity;
- keep the reply format the current method asks for, including the '#Finally Rewritten Instruction#'
  line that introduces the final instruction;
- keep exactly one {{instruction}} placeholder where the instruction goes.

Reply with a line that says 'Optimized Method:' and then the full text of the improved method,
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


def propose(llm: Llm, current: Method, feedback: str, *, index: int, rollout: int, name: str,
            made_by: str) -> Candidate:
    """Ask the optimizer for a better method; fall back to ``current`` when none can be read."""
    prompt = OPTIMIZATION_PROMPT.format(method=current.text.strip(), feedback=feedback)
    try:
        reply = llm.ask(prompt, rollout=rollout).text
    except LLMError as exc:
        reply = f"(call failed: {exc})"
    text = parsing.optimized_method(reply)
    if text is None:
        return Candidate(index, current, feedback, readable=False, reply=reply)
    method = Method(name=name, text=text, parent=current.name, made_by=made_by)
    return Candidate(index, method, feedback, readable=True, reply=reply)
