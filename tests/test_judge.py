"""The information-gain judge's verdict is read robustly, and evolve acts on the reading."""
from __future__ import annotations

import asyncio

import pytest

from auto_evol.algorithm.judge import Verdict, read_verdict

EQUAL_REPLIES = [
    "equal", "Equal", "equal.", "EQUAL", "**Equal**", "'equal'", "Equal.\n", "They are equal.",
    "The answer is: equal", "Answer: Equal", "Verdict: **equal**", "The two instructions are equal.",
    "Equivalent.", "Yes", "Yes.", "等价",
    "Equal. The second only rewords the first; nothing is not equal in substance.",
    "Both ask for the sum of the prices and neither adds a step or a constraint, so they are equal.",
    "No, they are equal.",
]
NOT_EQUAL_REPLIES = [
    "not equal", "Not equal", "Not Equal.", "NOT EQUAL", "**Not equal**", "'not equal'", "Unequal",
    "unequal.", "NotEqual", "notEqual", "not_equal", "NOT_EQUAL", "not-equal", "Non-equal", "notequal",
    "They are not equal", "They aren't equal.", "They’re not equal.", "The answer is: not equal",
    "Answer: Not equal", "Verdict: **Not Equal**", "not exactly equal", "Not equivalent.", "No", "No.",
    "不等价", "Not equal (the second adds a constraint).",
    "Not equal. The first is equal in length, but the second asks for a proof as well.",
    "The first asks for the total. The second also asks for the tax, which looks equal at a glance "
    "because both are about prices, yet it adds a requirement and a step. Therefore they are not equal.",
    "Equal in topic, but the second adds a constraint, so: not equal",
    "No, they are not equal.",
]
UNREADABLE_REPLIES = [
    "", "   ", None, "I cannot judge this.", "The second instruction is longer.", "Maybe?", "...",
    "Different.",
]


@pytest.mark.parametrize("reply", EQUAL_REPLIES)
def test_equal_verdicts(reply):
    assert read_verdict(reply) is Verdict.EQUAL


@pytest.mark.parametrize("reply", NOT_EQUAL_REPLIES)
def test_not_equal_verdicts(reply):
    assert read_verdict(reply) is Verdict.NOT_EQUAL


@pytest.mark.parametrize("reply", UNREADABLE_REPLIES)
def test_replies_without_a_verdict_are_unreadable(reply):
    assert read_verdict(reply) is Verdict.UNREADABLE


def test_equality_words_are_not_verdicts():
    assert read_verdict("The two are equally long and ask about equality.") is Verdict.UNREADABLE


def _run_one(verdict_reply: str):
    from auto_evol.algorithm.method import load
    from auto_evol.algorithm.rounds import RoundPlan, round_item
    from auto_evol.algorithm.trajectory import arun_steps
    from conftest import scripted_llm

    def script(prompt: str) -> str:
        if prompt.startswith("Compare two instructions"):
            return verdict_reply
        if "#Instruction#:\n" in prompt:
            return "#Finally Rewritten Instruction#: Add 2 and 3, then square the sum and explain each step."
        return "Adding gives 5 and squaring gives 25, explained step by step."

    evol, _ = scripted_llm(script)
    plan = RoundPlan(1, ((load("evol-instruct-reasoning"), 1.0),), judge=True)
    record = asyncio.run(arun_steps(round_item({"seed_id": "s1", "instruction": "Add 2 and 3."}, plan), evol, evol))
    from auto_evol.algorithm.failure import Failure

    if record["status"] == "kept":
        return None, record["instruction"], record["output"]
    return Failure(record["reason"]), record["rejected_instruction"], record["rejected_output"] or None


@pytest.mark.parametrize("reply", ["Unequal", "NotEqual", "not_equal", "Not Equal.", "They are NOT equal"])
def test_evolve_keeps_an_evolution_the_judge_calls_not_equal(reply):
    failure, evolved, answer = _run_one(reply)
    assert failure is None and evolved.startswith("Add 2 and 3, then square") and answer


@pytest.mark.parametrize("reply", ["Equal", "They are equal.", "Answer: **equal**"])
def test_evolve_eliminates_an_evolution_the_judge_calls_equal(reply):
    from auto_evol.algorithm.failure import Failure

    failure, _, answer = _run_one(reply)
    assert failure is Failure.NO_INFORMATION_GAIN and answer is None


def test_an_unreadable_verdict_does_not_eliminate():
    failure, _, answer = _run_one("I would need more context to decide.")
    assert failure is None and answer
