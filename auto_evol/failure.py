"""Failed evolutions: the rules that decide, from plain text, that an evolution did not work.

F(r) looks at the evol LLM's answer r to an evolved instruction (Auto Evol-Instruct, appendix A,
and the authors' extended list). Two more failures are found before any answer is asked for: a
reply with no readable final instruction, and an evolved instruction equal to the original.
Each failure carries a type so that runs can say why a method fails, not only how often.
"""
from __future__ import annotations

from enum import Enum


class Failure(str, Enum):
    # The paper's three rules.
    STAGNANT_COMPLEXITY = "stagnant_complexity"
    INSUFFICIENT_QUALIFICATION = "insufficient_qualification"
    LOSS_OF_KEY_INFORMATION = "loss_of_key_information"
    # The authors' extended list, split by what the answer does.
    ASKS_BACK = "asks_back"
    ACKNOWLEDGES_ONLY = "acknowledges_only"
    REFUSES = "refuses"
    NOT_POSSIBLE = "not_possible"
    # Found before the answer.
    UNREADABLE_EVOLUTION = "unreadable_evolution"
    UNCHANGED = "unchanged"
    # The answer itself is missing, or the LLM call failed for this item after its retries.
    EMPTY_ANSWER = "empty_answer"
    LLM_ERROR = "llm_error"


# (opening words, failure type) for answers that also end with a question mark, in the order tried.
_OPENING_WITH_QUESTION: tuple[tuple[str, Failure], ...] = (
    ("understood", Failure.STAGNANT_COMPLEXITY),
    ("thank you", Failure.STAGNANT_COMPLEXITY),
    ("sure", Failure.INSUFFICIENT_QUALIFICATION),
    ("what", Failure.ASKS_BACK),
    ("that is correct", Failure.ACKNOWLEDGES_ONLY),
    ("great", Failure.ACKNOWLEDGES_ONLY),
    ("i understand", Failure.ACKNOWLEDGES_ONLY),
    ("is there anything else", Failure.ACKNOWLEDGES_ONLY),
    ("i'm sorry", Failure.REFUSES),
    ("as an ai assistant", Failure.REFUSES),
)
_CONTAINED: tuple[tuple[str, Failure], ...] = (
    ("please provide", Failure.LOSS_OF_KEY_INFORMATION),
    ("not possible", Failure.NOT_POSSIBLE),
)


def answer_failure(answer: str) -> Failure | None:
    """F(r): the failure type of the evol LLM's answer to an evolved instruction, or None if it passes.

    Comparisons ignore case, surrounding spaces, markdown emphasis and quotes, and the typographic
    apostrophe, so that "**Sure!** ... ?" and "I’m sorry ... ?" are judged like their plain forms.
    """
    text = answer.strip().strip("*_\"'“” \n\t").replace("’", "'")
    if not text:
        return Failure.EMPTY_ANSWER
    low = text.casefold()
    if low.endswith("?"):
        for opening, failure in _OPENING_WITH_QUESTION:
            if low.startswith(opening) and not low[len(opening):len(opening) + 1].isalnum():
                return failure
    for phrase, failure in _CONTAINED:
        if phrase in low:
            return failure
    return None
