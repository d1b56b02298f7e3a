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


# The evolving prompts' own marker words (elimination rule 4). Evol-Instruct's prompts name their slots
# '#Given Prompt#', '#Rewritten Prompt#' and '#Created Prompt#' and forbid those names, fenced or plain,
# in the rewrite; this project's methods name theirs '#Instruction#', '#Rewritten Instruction#',
# '#Finally Rewritten Instruction#' (and e0's '#Methods List#', '#Plan#'). A rewrite holding one of them
# copied the prompt. Plain English about instructions ('follow the given instructions', 'the
# rewritten instructions of the manual') is not a copy: the project's words count only inside their
# '#...#' fence, except 'finally rewritten instruction', which no ordinary sentence says.
PROMPT_WORDS = ("#Given Prompt#", "#Rewritten Prompt#", "#Created Prompt#", "given prompt", "rewritten prompt",
                "created prompt", "#Instruction#", "#Given Instruction#", "#Rewritten Instruction#",
                "#Created Instruction#", "#Finally Rewritten Instruction#", "#Methods List#", "#Plan#",
                "finally rewritten instruction")
_FENCED_MARKER = re.compile(
    r"#(?:(?:given|rewritten|created|finally\s+rewritten)\s+(?:prompt|instruction)|instruction|methods?\s+list|plan)#",
    re.I)
_PLAIN_MARKER = re.compile(r"\b(?:(?:given|rewritten|created)\s+prompt|finally\s+rewritten\s+instruction)\b", re.I)
SORRY_MAX_WORDS = 80


def instruction_failure(evolved: str) -> Failure | None:
    """Elimination rule 4: the evolved instruction copies marker words of the evolving prompt.

    Caught: any '#...#'-fenced marker ('#Rewritten Prompt#', '#Instruction#', '#finally rewritten
    instruction#', any case, words split by any spacing) and the paper's plain phrases 'given prompt',
    'rewritten prompt', 'created prompt' as whole words. Not caught: the project's words outside the
    fence, so a genuine instruction about given or rewritten instructions passes.
    """
    if _FENCED_MARKER.search(evolved) or _PLAIN_MARKER.search(evolved):
        return Failure.COPIES_PROMPT_WORDS
    return None


class Rules(str, Enum):
    """Which rules judge an evolution. Optimize and compare measure a method by the paper's F(r) on the
    answer alone; evolve builds a dataset and eliminates with Evol-Instruct's rules as well (prompt
    words copied, no information gain, a short 'sorry', an answer of stop words), then F(r)."""
    F_R = "f_r"
    ELIMINATION = "elimination"


def failure_of(rules: Rules, *, rewrite: str | None, unchanged: bool = False, equal: bool = False,
               answer: str | None = None) -> Failure | None:
    """The first rule an evolution breaks, from what is known of it so far: the one place the rules
    are combined, so that optimize's dev evaluation, compare and evolve judge an evolution alike.

    ``rewrite`` is the instruction read from the evolver's reply (None: none could be read);
    ``unchanged`` says it equals the original; ``equal`` is the information-gain judge's 'equal'
    verdict; ``answer`` is the answer to the rewrite, once there is one. A caller asks again after
    each call it makes, with what that call added, and stops at the first failure. A failed call
    (``llm_error``) is no rule on text and stays with the caller that made it.
    """
    if rewrite is None:
        return Failure.UNREADABLE_EVOLUTION
    if unchanged:
        return Failure.UNCHANGED
    eliminate = rules is Rules.ELIMINATION
    if eliminate and instruction_failure(rewrite) is not None:
        return Failure.COPIES_PROMPT_WORDS
    if equal:
        return Failure.NO_INFORMATION_GAIN
    if answer is not None:
        return elimination_failure(answer) if eliminate else answer_failure(answer)
    return None


def elimination_failure(answer: str) -> Failure | None:
    """Elimination rules 2 and 3 on the answer, then F(r)."""
    words = re.findall(r"[\w']+", answer.casefold())
    if "sorry" in answer.casefold() and len(answer.split()) < SORRY_MAX_WORDS:
        return Failure.SORRY_SHORT_ANSWER
    if answer.strip() and all(w in STOP_WORDS for w in words):
        return Failure.STOPWORDS_ONLY_ANSWER
    return answer_failure(answer)


# Function words that carry no content on their own (elimination rule 3).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more
most mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same
shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've this those through to too under
until up very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's
which while who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours
yourself yourselves ok okay yes well oh um uh hmm
""".split())
