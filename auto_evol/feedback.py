"""Evol trajectory analysis: the optimizer LLM names the cases that failed to evolve, and why."""
from __future__ import annotations

from .llm import Llm
from .method import Method
from .trajectory import Trajectory

ANALYSIS_PROMPT = """\
You are reviewing an instruction-evolving method: a prompt that an AI model follows to rewrite an
instruction into a more complex one. The instruction is put where the method says {{instruction}}.

=== Method ===
{method}
=== End of method ===

These are evolution trajectories made with the method. In each case, Stage 0 is the original
instruction and every later stage is the result of applying the method once more.

=== Trajectories ===
{trajectory}
=== End of trajectories ===

Go through the cases one at a time. Name each case that failed to evolve and give the reason, for
example: the complexity did not really grow, key information of the original was dropped, the new
instruction contradicts itself or is unrealistic, it turned into a different task, it is unclear,
or no usable rewrite was produced. Then summarise, in a few lines, what the method should change.
"""


def analyse(llm: Llm, method: Method, trajectory: Trajectory, *, rollout: int) -> str:
    """Feedback f_t on one trajectory; sampled, so each rollout can see different problems."""
    prompt = ANALYSIS_PROMPT.format(method=method.text.strip(), trajectory=trajectory.render())
    return llm.ask(prompt, rollout=rollout).text.strip()
