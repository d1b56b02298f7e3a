"""The LLM judges, in one place: what each is asked, and how its reply is read.

Two judges: evolve's information-gain judge (``INFORMATION_GAIN_PROMPT``, read by ``read_verdict``)
and compare's difficulty judge (``DIFFICULTY_PROMPT``, read by ``difficulty_score``). Both are text
only, so a judge's prompt and its reader change together and every verb that asks a judge asks it
the same way.

The information-gain verdict: 'equal', 'not equal', or nothing usable.

Evol-Instruct drops an evolution that brings no information gain: an LLM is shown the original and
the evolved instruction and asked whether the two are equal (same constraints and requirements, same
depth and breadth of inquiry). The judge is told to answer with one of two phrases, but real models
write 'Unequal', 'NotEqual', 'not_equal', '**Not equal.**', 'They are not equal', a paragraph of
reasoning that ends with the verdict, or something else entirely. A substring test for 'equal' reads
most of those as equal and throws good evolutions away.

The reading here, on text only:
- spelling is normalised first: case, markdown, underscores and hyphens, camel case ('NotEqual'),
  contractions ('aren't' -> 'are not'), glued forms ('notequal'), the Chinese verdicts;
- a reply whose whole text is 'yes' or 'no' answers the question the prompt asks ('do they set the
  same constraints ...?');
- a reply that opens with a bare verdict ('Not equal. The second adds ...', 'Answer: equal',
  'They are equal.') is read from that opening;
- otherwise the last verdict phrase in the reply decides, since reasoning comes first and the
  conclusion last; 'equal' counts as negated when 'not', 'no', 'never', 'non' or 'neither' stands
  up to three words before it in the same clause.

A reply with no verdict phrase at all is UNREADABLE. The judge then said nothing usable about
information gain, and elimination rule 1 needs a positive 'equal' to drop an evolution, so an
unreadable verdict never eliminates: the evolution goes on to be answered and meets the other rules.
Callers should still count unreadable verdicts (``Verdict.value`` is a stable name for that), since
many of them mean the judge model or its prompt is not doing its job.
"""
from __future__ import annotations

import re
from enum import Enum


INFORMATION_GAIN_PROMPT = """\
Compare two instructions.

First instruction:
{first}

Second instruction:
{second}

Do they set the same constraints and requirements, and ask with the same depth and breadth? Reply
with exactly one of two phrases: 'equal' if they do, 'not equal' if the second asks for more or
for something different.
"""

DIFFICULTY_PROMPT = """\
Rate how difficult and complex the instruction below is to carry out, on a scale from 1 (trivial) to
10 (very hard). Reply with the number only.

Instruction:
{instruction}
"""
_SCORE = re.compile(r"^\s*(10|[1-9])(?:\.0+)?\s*\.?\s*$")


def gain_prompt(original: str, evolved: str) -> str:
    """What the information-gain judge is asked about one evolution (the original comes first)."""
    return INFORMATION_GAIN_PROMPT.format(first=original, second=evolved)


def difficulty_score(reply: str) -> int | None:
    """The difficulty judge's score, or None when the reply is not a bare score (counted, never guessed)."""
    match = _SCORE.match(reply.strip().strip("*"))
    return int(match.group(1)) if match else None


class Verdict(str, Enum):
    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    UNREADABLE = "unreadable"


_EQUAL_WORDS = frozenset({"equal", "equivalent"})
_NEGATED_WORDS = frozenset({"unequal", "inequal", "nonequal", "notequal", "nonequivalent", "inequivalent",
                            "unequivalent", "notequivalent"})
_NEGATORS = frozenset({"not", "no", "never", "non", "neither", "nor"})
_NEGATION_REACH = 3
# Words that may surround a bare verdict at the start of a reply without making it anything else.
_FILLER = frozenset("""
the a an two these both they it this are is be would i think say judge judgement judgment answer verdict
my final result decision output instructions instruction prompts prompt first second and exactly quite
really strictly fully at all so therefore thus
""".split())
# The Chinese verdicts of the paper's own prompt (negated forms first: they contain the plain ones).
_CHINESE = (("不等价", " not equal "), ("不相等", " not equal "), ("不等同", " not equal "),
            ("等价", " equal "), ("相等", " equal "), ("等同", " equal "))
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n。！？；：，()\[\]{}]+")


def _normalise(reply: str) -> str:
    text = reply.replace("’", "'").replace("‘", "'")
    for chinese, english in _CHINESE:
        text = text.replace(chinese, english)
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)          # NotEqual -> Not Equal
    text = text.casefold()
    text = re.sub(r"n't\b", " not", text)                      # aren't -> are not
    return re.sub(r"[_\-–—*`#\"'“”>~|]+", " ", text)           # not_equal, non-equal, **bold**


def _mentions(clause: str) -> list[bool]:
    """Each verdict phrase in one clause, in order: True where it says 'equal', False for 'not equal'."""
    words = re.findall(r"[a-z]+", clause)
    found = []
    for i, word in enumerate(words):
        if word in _NEGATED_WORDS:
            found.append(False)
        elif word in _EQUAL_WORDS:
            found.append(not any(w in _NEGATORS for w in words[max(0, i - _NEGATION_REACH):i]))
    return found


def _bare(clause: str) -> bool | None:
    """The verdict of a clause that is nothing but a verdict (plus filler words), else None."""
    words = [w for w in re.findall(r"[a-z]+", clause) if w not in _FILLER]
    if words in (["equal"], ["equivalent"]):
        return True
    if words in (["not", "equal"], ["not", "equivalent"]) or (len(words) == 1 and words[0] in _NEGATED_WORDS):
        return False
    return None


def read_verdict(reply: str | None) -> Verdict:
    """The information-gain judge's verdict in ``reply``: EQUAL, NOT_EQUAL or UNREADABLE."""
    if not reply or not reply.strip():
        return Verdict.UNREADABLE
    text = _normalise(reply)
    whole = re.findall(r"[a-z]+", text)
    if whole in (["yes"], ["no"]):
        return Verdict.EQUAL if whole == ["yes"] else Verdict.NOT_EQUAL
    clauses = [c for c in _CLAUSE_BREAK.split(text) if re.search(r"[a-z]", c)]
    if not clauses:
        return Verdict.UNREADABLE
    # A bare verdict up front, possibly behind a label ('Answer: not equal'): the label is its own clause.
    for clause in clauses[:2]:
        opening = _bare(clause)
        if opening is not None:
            return Verdict.EQUAL if opening else Verdict.NOT_EQUAL
        if any(w not in _FILLER for w in re.findall(r"[a-z]+", clause)):
            break
    mentions = [m for clause in clauses for m in _mentions(clause)]
    if not mentions:
        return Verdict.UNREADABLE
    return Verdict.EQUAL if mentions[-1] else Verdict.NOT_EQUAL
