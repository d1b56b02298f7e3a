"""Evol trajectory analysis: the optimizer LLM names the cases that failed to evolve, and why.

The analysis opens a conversation that the optimization continues (candidate.py), as in the Auto
Evol-Instruct authors' code: when the optimizer rewrites the method, the trajectory and its own
analysis of it are in front of it, so the "Case N" it names are cases it can see.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..llm.client import Llm
from ..llm.replies import ANALYSIS
from .trajectory import Trajectory

ANALYSIS_PROMPT = """\
You are reviewing how an instruction-evolving method performed. The method is a prompt that an AI
model follows to rewrite an instruction into a more complex version of itself.

Below, each case is one instruction evolved with the method. Stage 0 is the original instruction;
each later stage is the method applied once more to the stage before it, and every stage has to be
more complex than the one before it while still being a sensible task about the same thing.

=== Trajectories ===
{trajectory}
=== End of trajectories ===

Go through the cases one at a time. Name each case that failed to evolve, by its case number, and
give the reason, for example: the complexity did not really grow, key information of the original
was dropped, the new instruction contradicts itself or is unrealistic, it turned into a different
task, it is unclear, or no usable rewrite was produced. Then say, in a few lines, what the method
should change.
"""


@dataclass(frozen=True)
class Feedback:
    """f_t for one rollout: the prompt that asked for it and the optimizer's analysis."""
    prompt: str
    text: str

    @property
    def conversation(self) -> tuple[str, str]:
        """The turns so far, for the optimization to continue."""
        return self.prompt, self.text


def analyse(llm: Llm, trajectory: Trajectory, *, rollout: int) -> Feedback:
    """Feedback on one trajectory; sampled, so each rollout can see different problems."""
    prompt = ANALYSIS_PROMPT.format(trajectory=trajectory.render())
    return Feedback(prompt, llm.ask(prompt, rollout=rollout, reply_format=ANALYSIS).text.strip())


async def aanalyse(llm: Llm, trajectory: Trajectory, *, rollout: int) -> Feedback:
    """``analyse`` on an event loop (optimize: a candidate's optimization starts when its own analysis ends)."""
    prompt = ANALYSIS_PROMPT.format(trajectory=trajectory.render())
    return Feedback(prompt, (await llm.aask(prompt, rollout=rollout, reply_format=ANALYSIS)).text.strip())
