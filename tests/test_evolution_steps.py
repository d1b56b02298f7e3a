"""One implementation of evolving one item (trajectory.evolution_steps) behind a sync and an async
driver; the failure rules combined in one place (failure.failure_of); the method mix; the judges."""
from __future__ import annotations

import asyncio

import pytest

from auto_evol.algorithm import judge
from auto_evol.core.errors import UserError
from auto_evol.algorithm.failure import Failure, Rules, failure_of
from auto_evol.algorithm.method import CLASSIC, CLASSIC_OPERATORS, Method, load, mix, pick
from auto_evol.algorithm.trajectory import arun_steps, evolution_steps, evolve_and_answer, evolve_once, run_steps
from conftest import scripted_llm

ORIGINAL = "Add 2 and 3."
# (the evolver's reply, the judge's verdict, the answer); None: that call fails
CASES = {
    "kept": ("#Finally Rewritten Instruction#: Add 2 and 3, then square the sum.", "not equal", "It is 25."),
    "unreadable": ("", "not equal", "x"),
    "unchanged": ("#Finally Rewritten Instruction#: Add 2 and 3.", "not equal", "x"),
    "copies_prompt_words": ("#Finally Rewritten Instruction#: In the #Rewritten Prompt#, add 2 and 3 twice.",
                            "not equal", "It is 10."),
    "no_gain": ("#Finally Rewritten Instruction#: Please add 2 and 3 now.", "equal", "5"),
    "unreadable_verdict": ("#Finally Rewritten Instruction#: Add 2 and 3, then cube it.", "Hmm.", "It is 125."),
    "sorry": ("#Finally Rewritten Instruction#: Add 2 and 3 in Roman numerals.", "not equal", "Sorry, no."),
    "asks_back": ("#Finally Rewritten Instruction#: Add 2 and 3 in base 7.", "not equal", "What base?"),
    "evolution_call_fails": (None, "not equal", "x"),
    "judge_call_fails": ("#Finally Rewritten Instruction#: Add 2 and 3 and 4.", None, "9"),
    "answer_call_fails": ("#Finally Rewritten Instruction#: Add 2 and 3 and 5.", "not equal", None),
}


def _llm(case: str):
    evolved, verdict, answer = CASES[case]

    def script(prompt: str) -> str:
        if prompt.startswith("Compare two instructions"):
            reply = verdict
        elif "#Instruction#:\n" in prompt:
            reply = evolved
        else:
            reply = answer
        if reply is None:
            raise RuntimeError("provider down")
        return reply

    return scripted_llm(script)


@pytest.mark.parametrize("rules", list(Rules))
@pytest.mark.parametrize("case", list(CASES))
def test_sync_and_async_drivers_give_the_same_outcome_from_the_same_prompts(case, rules):
    method = load("evol-instruct-reasoning")
    kwargs = dict(rules=rules, answer=True, gain_judge=rules is Rules.ELIMINATION, rollout=7, temperature=0.5)
    sync_llm, sync_engine = _llm(case)
    sync = run_steps(evolution_steps(method, ORIGINAL, **kwargs), sync_llm)
    async_llm, async_engine = _llm(case)
    asynchronous = asyncio.run(arun_steps(evolution_steps(method, ORIGINAL, **kwargs), async_llm))
    assert sync == asynchronous
    assert sync_engine.prompts == async_engine.prompts and sync_engine.formats == async_engine.formats


def test_the_outcomes_follow_the_rules_in_order():
    method = load("evol-instruct-reasoning")

    def outcome(case, rules):
        llm, _ = _llm(case)
        return run_steps(evolution_steps(method, ORIGINAL, rules=rules, answer=True,
                                         gain_judge=rules is Rules.ELIMINATION), llm)

    expected = {"kept": None, "unreadable": Failure.UNREADABLE_EVOLUTION, "unchanged": Failure.UNCHANGED,
                "copies_prompt_words": Failure.COPIES_PROMPT_WORDS, "no_gain": Failure.NO_INFORMATION_GAIN,
                "unreadable_verdict": None, "sorry": Failure.SORRY_SHORT_ANSWER, "asks_back": Failure.ASKS_BACK,
                "evolution_call_fails": Failure.LLM_ERROR, "judge_call_fails": Failure.LLM_ERROR,
                "answer_call_fails": Failure.LLM_ERROR}
    for case, failure in expected.items():
        assert outcome(case, Rules.ELIMINATION).failure is failure, case
    # F(r) alone (optimize, compare): no prompt-word rule, no judge, no 'sorry' rule.
    assert outcome("copies_prompt_words", Rules.F_R).failure is None
    assert outcome("no_gain", Rules.F_R).failure is None
    assert outcome("sorry", Rules.F_R).failure is None
    assert outcome("asks_back", Rules.F_R).failure is Failure.ASKS_BACK
    unchanged = outcome("unchanged", Rules.ELIMINATION)
    assert unchanged.rewrite == ORIGINAL and unchanged.evolved is None   # kept as the rejected text
    failed_answer = outcome("answer_call_fails", Rules.F_R)
    assert failed_answer.answer is None and failed_answer.answer_text.startswith("(call failed: ")


def test_the_sync_wrappers_keep_their_shapes():
    method = load("evol-instruct-reasoning")
    llm, engine = _llm("kept")
    assert evolve_once(llm, method, ORIGINAL) == ("Add 2 and 3, then square the sum.", CASES["kept"][0], None)
    llm, _ = _llm("unchanged")
    assert evolve_once(llm, method, ORIGINAL) == (None, CASES["unchanged"][0], Failure.UNCHANGED)
    llm, _ = _llm("evolution_call_fails")
    evolved, reply, failure = evolve_once(llm, method, ORIGINAL)
    assert evolved is None and reply.startswith("(call failed: ") and failure is Failure.LLM_ERROR
    llm, engine = _llm("kept")
    outcome = evolve_and_answer(llm, method, ORIGINAL)
    assert (outcome.evolved, outcome.answer_text, outcome.failure) == ("Add 2 and 3, then square the sum.",
                                                                       "It is 25.", None)
    assert len(engine.prompts) == 2   # the evolution and the answer: no judge outside evolve


def test_known_steps_are_not_asked_again_and_finished_steps_are_kept():
    method = load("evol-instruct-reasoning")
    kept: list[dict] = []
    llm, engine = _llm("kept")
    outcome = run_steps(evolution_steps(method, ORIGINAL, rules=Rules.ELIMINATION, answer=True, gain_judge=True,
                                        keep=kept.append), llm)
    assert outcome.failure is None and len(engine.prompts) == 3
    assert kept == [{"evolved": outcome.rewrite}, {"evolved": outcome.rewrite, "judged": True}]
    llm, engine = _llm("kept")
    again = run_steps(evolution_steps(method, ORIGINAL, rules=Rules.ELIMINATION, answer=True, gain_judge=True,
                                      known=kept[-1]), llm)
    assert engine.prompts == [outcome.rewrite] and again.answer == outcome.answer and again.reply == ""


def test_failure_of_is_the_one_order_of_the_rules():
    assert failure_of(Rules.F_R, rewrite=None, unchanged=True) is Failure.UNREADABLE_EVOLUTION
    assert failure_of(Rules.ELIMINATION, rewrite="In the #Plan#, add.", unchanged=True) is Failure.UNCHANGED
    assert failure_of(Rules.ELIMINATION, rewrite="In the #Plan#, add.", equal=True) is Failure.COPIES_PROMPT_WORDS
    assert failure_of(Rules.F_R, rewrite="In the #Plan#, add.", answer="5") is None
    assert failure_of(Rules.ELIMINATION, rewrite="Add 2.", equal=True, answer="Sorry.") is Failure.NO_INFORMATION_GAIN
    assert failure_of(Rules.ELIMINATION, rewrite="Add 2.", answer="Sorry, no.") is Failure.SORRY_SHORT_ANSWER
    assert failure_of(Rules.F_R, rewrite="Add 2.", answer="Sorry, no.") is None
    assert failure_of(Rules.F_R, rewrite="Add 2.", answer="  ") is Failure.EMPTY_ANSWER
    assert failure_of(Rules.F_R, rewrite="Add 2.") is None


def test_the_mix_is_pure_given_a_resolver():
    seen: list[str] = []

    def resolve(name: str) -> Method:
        seen.append(name)
        return Method(name=name, text=f"Make it harder ({name}).\n")

    chosen = mix([f"{CLASSIC}=0.6", "mine.md"], resolve)
    assert seen == [*CLASSIC_OPERATORS, "mine.md"]
    assert [w for _, w in chosen] == pytest.approx([0.1] * 6 + [1.0])
    assert pick(chosen, 0, "s1", 1) == pick(chosen, 0, "s1", 1)
    assert mix(["a=b=2"], resolve)[0][0].name == "a=b"
    with pytest.raises(UserError, match="the weight must be above 0"):
        mix(["x=0"], resolve)
    with pytest.raises(UserError, match="no --method given"):
        mix([], resolve)


def test_every_judge_lives_in_judge_py():
    prompt = judge.gain_prompt("Add 2.", "Add 2 and explain.")
    assert prompt.startswith("Compare two instructions") and prompt.index("Add 2.") < prompt.index("Add 2 and explain.")
    assert "{instruction}" in judge.DIFFICULTY_PROMPT
    assert judge.difficulty_score("7") == 7 and judge.difficulty_score("seven") is None
