"""Failed evolutions: the rules that decide, from plain text, that an evolution did not work.

F(r) looks at the evol LLM's answer r to an evolved instruction (Auto Evol-Instruct, appendix A,
and the authors' extended list). Two more failures are found before any answer is asked for: a
reply with no readable final instruction, and an evolved instruction equal to the original.
Each failure carries a type so that runs can say why a method fails, not only how often.
"""
from __future__ import annotations

import re
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
    # Evol-Instruct's elimination rules (used when evolving datasets).
    NO_INFORMATION_GAIN = "no_information_gain"
    SORRY_SHORT_ANSWER = "sorry_short_answer"
    STOPWORDS_ONLY_ANSWER = "stopwords_only_answer"
    COPIES_PROMPT_WORDS = "copies_prompt_words"


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


# Words of the evolving prompts themselves: an evolved instruction that holds them copied the prompt.
PROMPT_WORDS = ("given prompt", "rewritten prompt", "created prompt", "#given prompt#", "#rewritten prompt#",
                "#created prompt#", "given instruction", "rewritten instruction", "created instruction",
                "#instruction#", "#finally rewritten instruction#")
SORRY_MAX_WORDS = 80


def instruction_failure(evolved: str) -> Failure | None:
    """Elimination rule 4: the evolved instruction copies words of the evolving prompt."""
    low = evolved.casefold()
    return Failure.COPIES_PROMPT_WORDS if any(w in low for w in PROMPT_WORDS) else None


def elimination_failure(answer: str) -> Failure | None:
    """Elimination rules 2 and 3 on the answer, then F(r)."""
    words = re.findall(r"[\w']+", answer.casefold())
    if "sorry" in answer.casefold() and len(answer.split()) < SORRY_MAX_WORDS:
        return Failure.SORRY_SHORT_ANSWER
    if answer.strip() and all(w in _stop_words() for w in words):
        return Failure.STOPWORDS_ONLY_ANSWER
    return answer_failure(answer)


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS
