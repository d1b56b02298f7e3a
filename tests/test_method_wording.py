"""The shipped methods say what the papers' prompts require (DESIGN.md sections 1 and 2)."""
from __future__ import annotations

import re

import pytest

from auto_evol.algorithm import method
from auto_evol.algorithm.method import CLASSIC_OPERATORS


def _flat(text: str) -> str:
    return " ".join(text.split())


def _steps(text: str) -> dict[int, str]:
    """The body of each 'Step N:' line of e0 (up to the next step or blank line), flattened."""
    found = re.findall(r"^Step (\d): (.*?)(?=^Step \d|\n\n)", text, re.M | re.S)
    return {int(n): _flat(body) for n, body in found}


def test_e0_keeps_the_reply_format_and_the_instruction_slot():
    text = method.load("e0").text
    assert ("Step 1 #Methods List#:\nStep 2 #Plan#:\nStep 3 #Rewritten Instruction#:\n"
            "Step 4 #Finally Rewritten Instruction#:\n") in text
    assert text.rstrip().endswith("#Instruction#:\n{instruction}")


def test_e0_step_1_lists_every_possible_method_and_never_a_language_change():
    step = _steps(method.load("e0").text)[1]
    assert re.search(r"\b(every|all the) possible methods?\b", step)
    assert "several" not in step
    assert re.search(r"\blanguage\b", step) and re.search(r"\b(never|not|leave out|no)\b", step, re.I)


def test_e0_step_2_is_a_comprehensive_plan_using_several_listed_methods():
    step = _steps(method.load("e0").text)[2]
    assert "comprehensive plan" in step and "several" in step and "#Methods List#" in step
    assert "short" not in step


def test_e0_step_3_executes_the_plan_adding_only_10_to_20_words():
    step = _steps(method.load("e0").text)[3]
    assert "#Rewritten Instruction#" in step and "only 10 to 20 words" in step and "plan" in step


def test_e0_step_4_reviews_and_keeps_only_a_more_complex_version_of_the_original():
    step = _steps(method.load("e0").text)[4]
    assert "unreasonable" in step
    assert "only a more complex version of the #Instruction#" in step
    assert "#Finally Rewritten Instruction#" in step and "no explanation" in step


@pytest.mark.parametrize("name", CLASSIC_OPERATORS)
def test_operators_forbid_exactly_the_markers_the_eliminator_catches(name):
    from auto_evol.algorithm.failure import instruction_failure

    text = _flat(method.load(name).text)
    forbidden = re.search(r"markers?: (.*?) must not appear", text).group(1)
    words = re.findall(r"'([^']+)'", forbidden)
    assert words and all(instruction_failure(f"Add 2 and 3. {w}") is not None for w in words)
    assert "given instruction" not in text and "created instruction" not in text


@pytest.mark.parametrize("name", [n for n in CLASSIC_OPERATORS if n != "evol-instruct-breadth"])
def test_in_depth_operators_keep_non_text_parts_and_input_and_stay_reasonable(name):
    text = _flat(method.load(name).text)
    assert "not plain prose" in text and "tables, code" in text and "input" in text
    assert "reasonable" in text and "10 to 20 words" in text


def test_breadth_is_same_domain_rarer_similar_length_and_difficulty():
    text = _flat(method.load("evol-instruct-breadth").text)
    assert "brand-new" in text and "same domain" in text and "rarer" in text
    assert "similar length and difficulty" in text and "reasonable" in text


def test_complicate_input_limits_the_wording_not_the_added_data():
    text = _flat(method.load("evol-instruct-complicate-input").text)
    assert "add only 10 to 20 words to the original" not in text
    assert "the instruction's own text may grow by only 10 to 20 words" in text
    assert "added data block is not part of that count and may be as long as the task needs" in text


def test_complicate_input_demonstrations_follow_their_own_word_limit():
    text = method.load("evol-instruct-complicate-input").text
    pairs = re.findall(r"^Instruction: (.*)\nRewrite: (.*)$", text, re.M)
    assert len(pairs) == 6
    for before, after in pairs:
        assert 10 <= len(after.split()) - len(before.split()) <= 20, after
