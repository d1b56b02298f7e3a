"""Reading what an LLM meant out of what it wrote.

Two readers: the final instruction in an evolver's reply, and the new method in an optimizer's reply.
Both tolerate the ways real models drift from the requested format: markers in any case and spacing,
wrapped in markdown bold or headings, with or without the 'Step N' prefix, the format echoed back
empty before the real answer, and an instruction that itself mentions the marker words mid-line.
A marker only counts when it starts a line (after decoration), never inside running text.
"""
from __future__ import annotations

import re

from ..llm.replies import ReplyFormat, evolution_format
from .method import text_problem

# Decoration that may surround a marker at the start of a line: quote marks, list bullets,
# markdown headings and emphasis, '#' marker fences.
_DECOR = r"[ \t>*_#`\-]*"
_STEP = r"(?:step\s*\d+\s*[:.)\-–]?\s*)?"


def _marker(words: str) -> str:
    return r"\s+".join(words.split())


_FINAL = _marker("finally rewritten instruction")
_KNOWN = "|".join(_marker(w) for w in (
    "finally rewritten instruction", "rewritten instruction", "methods list", "method list", "plan",
    "instruction", "explanation", "review",
))
# A line that opens one of the reply's sections: 'Step 4 #Finally Rewritten Instruction#:',
# '**Finally rewritten instruction:**', '### Rewritten Instruction', ...
_FINAL_HEADER = re.compile(rf"^{_DECOR}{_STEP}{_DECOR}(?:{_FINAL}){_DECOR}:?{_DECOR}", re.I | re.M)
# Step 3's header: read only when no step 4 can be ('rewritten' must open the line, so this never
# matches a 'Finally Rewritten Instruction' header).
_REWRITTEN_HEADER = re.compile(
    rf"^{_DECOR}{_STEP}{_DECOR}(?:{_marker('rewritten instruction')}){_DECOR}:?{_DECOR}", re.I | re.M)
# Any section header that ends the final instruction. To avoid cutting an instruction at one of its
# own lines ('Plan: ...', 'Step 1: add the numbers'), a header is a known section name behind a
# 'Step N' prefix or inside the '#...#' fence.
_SECTION_HEADER = re.compile(
    rf"^{_DECOR}(?:step\s*\d+\s*[:.)\-–]?\s*{_DECOR}(?:{_KNOWN})\b|#\s*(?:{_KNOWN})\s*#)", re.I | re.M)


def _clean(text: str) -> str:
    text = text.strip()
    fence = re.fullmatch(r"```[\w-]*\n(.*?)\n?```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    # Emphasis or quotes left around the whole answer by the marker's own decoration.
    for left, right in (("**", "**"), ("__", "__"), ('"', '"'), ("“", "”")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            text = text[len(left):-len(right)].strip()
    text = re.sub(r"^(?:\*\*|__)\s*", "", text)
    text = re.sub(r"\s*(?:\*\*|__)$", "", text)
    return text.strip()


def instruction_from_fields(fields: dict[str, str], fmt: ReplyFormat) -> str | None:
    """The final instruction of a structured evolver reply: its last field, or, when that is empty,
    the field of step 3's 'Rewritten Instruction' (as ``final_instruction`` falls back in text)."""
    rewritten = [f.key for f in fmt.fields[:-1] if f.label.casefold() == "rewritten instruction"]
    for key in (fmt.result.key, *rewritten):
        text = _clean(fields.get(key, ""))
        if text:
            return text
    return None


def final_instruction(reply: str) -> str | None:
    """The final rewritten instruction in an evolver's reply, or None when there is none to read.

    Every 'Finally Rewritten Instruction' header is tried in order; the first one followed by text
    wins, so a format echoed back empty before the answer is skipped. The text runs to the next
    section header or the end of the reply. A reply that stopped before step 4 gives the text of
    its step 3 ('Rewritten Instruction') the same way.
    """
    if not reply:
        return None
    for header in (_FINAL_HEADER, _REWRITTEN_HEADER):
        for match in header.finditer(reply):
            rest = reply[match.end():]
            end = _SECTION_HEADER.search(rest)
            candidate = _clean(rest[: end.start()] if end else rest)
            if candidate:
                return candidate
    return None


_TRAILING_FINAL = re.compile(rf"^{_DECOR}(?:{_FINAL}){_DECOR}:?{_DECOR}\s*\Z", re.I | re.M)
_BARE_LABEL = re.compile(r"^(?:rewrite|rewritten instruction|new instruction|created instruction)\s*:\s*", re.I)


def ends_with_final_header(prompt: str) -> bool:
    """Whether a method's prompt itself ends by opening the final instruction, so that the reply
    starts with the instruction and may carry no header at all."""
    return bool(_TRAILING_FINAL.search(prompt.rstrip() + "\n"))


def read_evolution(reply_text: str, fields: dict[str, str] | None, method_text: str) -> str | None:
    """The evolved instruction in an evolver's reply under a method, structured or free text."""
    if fields is not None:
        return instruction_from_fields(fields, evolution_format(method_text))
    return evolved_instruction(reply_text, bare_allowed=ends_with_final_header(method_text))


def evolved_instruction(reply: str, *, bare_allowed: bool) -> str | None:
    """The final instruction of an evolver's reply; with ``bare_allowed``, a reply without any header
    is the instruction itself (minus a 'Rewrite:'-style label)."""
    found = final_instruction(reply)
    if found is not None or not bare_allowed or not reply:
        return found
    if _SECTION_HEADER.search(reply) or _REWRITTEN_HEADER.search(reply):
        return None
    text = _clean(_BARE_LABEL.sub("", reply.strip()))
    return text or None


_OPTIMIZED_HEADER = re.compile(
    rf"^{_DECOR}{_STEP}{_DECOR}(?:{_marker('optimized method')}){_DECOR}:?{_DECOR}", re.I | re.M)
_CLOSING_FENCE = re.compile(r"\n[ \t]*```[ \t]*\Z")


def optimized_method(reply: str) -> str | None:
    """The method text in an optimizer's reply, or None when none can be read.

    The text follows the last line that opens with 'Optimized Method' (the optimizer may first
    mention the words while reasoning); a fenced block right after the header is taken whole, and
    so is a block whose opening fence carries the header itself (```` ```Optimized Method ````, the
    shape the paper asks for), without its closing fence. Any non-empty text is a method: the
    instruction is appended to it when it has no placeholder (see method.py).
    """
    if not reply:
        return None
    for match in reversed(list(_OPTIMIZED_HEADER.finditer(reply))):
        rest = reply[match.end():].strip("\n")
        fenced = re.match(r"[ \t]*```[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", rest, re.S)
        if fenced:
            text = fenced.group(1)
        else:
            opened_by_fence = "```" in reply[reply.rfind("\n", 0, match.start()) + 1:match.end()]
            text = rest.split("\n```", 1)[0] if opened_by_fence else _CLOSING_FENCE.sub("", rest)
        text = text.strip()
        if text and text_problem(text) is None:
            return text + "\n"
    return None


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def same_instruction(a: str, b: str) -> bool:
    """Equal up to case, spacing and punctuation: an evolution that changed nothing."""
    return _normal(a) == _normal(b)
