"""Structured replies: the fields auto-evol asks an LLM to fill, as a JSON schema, and back to text.

Backends that decode under a JSON schema (llama.cpp and vLLM servers by grammar, OpenAI and Anthropic
structured outputs) cannot wander off the requested format: measured on the embedded SmolLM2-135M,
e0 in free text looped on "Step N: Check the rewritten instruction..." for 500 tokens with no
readable instruction, while the same prompt under a four-field schema gave valid JSON whose last
field was an instruction.

An evolver's fields come from the method's own output format: every line of the method that is
only a ``#Name#:`` marker (with an optional 'Step N' before it) names a field, except the markers
that introduce the instruction itself. e0 gives Methods List, Plan, Rewritten Instruction and
Finally Rewritten Instruction; an optimized method that renames or adds steps gets its own fields.
The final instruction is always the last field; a method with no readable format gets that one
field alone.

A structured reply is turned back into the text a well-behaved free-text reply would have been
(``Step 4 #Finally Rewritten Instruction#:`` and the value under it), so trajectories, journals and
MLflow read the same whichever way the reply came, and the free-text readers in parsing.py give the
same instruction or method from it.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

# A line that is only a marker: 'Step 2 #Plan#:', '#Finally Rewritten Instruction#:'.
_MARKER_LINE = re.compile(r"^[ \t*_]*(?P<step>step\s*\d+\s*[:.)\-–]?\s*)?#(?P<name>[^#\n]{1,60})#\s*:?[ \t*_]*$",
                          re.I | re.M)
# Markers that introduce what the method is given, not what it asks for.
_INPUT_MARKERS = {"instruction", "input", "given prompt", "given instruction", "original instruction"}
FINAL = "Finally Rewritten Instruction"

# String bounds (maxLength, honoured by llama.cpp and vLLM) keep a reply inside its token budget: under
# a schema a model that loops still has to close every string. The working fields (methods list,
# plan, ...) are where small models loop: SmolLM2 counted "1. 2. 3. ..." into them at 1.5 characters
# a token, so together they get 40% of the tokens at that rate. The result field is prose (about 4
# characters a token) and gets half of the tokens at that rate; a result that is the only field
# gets 90% of them at 2.5 characters a token.
WORKING_SHARE, WORKING_CHARS_PER_TOKEN = 0.4, 1.5
RESULT_SHARE, RESULT_CHARS_PER_TOKEN = 0.5, 4.0
ALONE_SHARE, ALONE_CHARS_PER_TOKEN = 0.9, 2.5


@dataclass(frozen=True)
class Field:
    key: str            # the JSON property: 'methods_list'
    label: str          # the marker's words: 'Methods List'
    header: str         # the line that opens it in text: 'Step 1 #Methods List#:'


@dataclass(frozen=True)
class ReplyFormat:
    """The fields of one kind of reply; the last one is the result (instruction or method)."""
    name: str
    fields: tuple[Field, ...]

    @property
    def result(self) -> Field:
        return self.fields[-1]

    def json_schema(self, *, max_tokens: int | None = None) -> dict:
        """An object schema with one required string per field, in order. With ``max_tokens``, each
        string is bounded so that the whole reply fits that many tokens (see WORKING_SHARE)."""
        properties = {f.key: {"type": "string", "description": f.label} for f in self.fields}
        if max_tokens:
            working = self.fields[:-1]
            if working:
                each = int(max_tokens * WORKING_SHARE * WORKING_CHARS_PER_TOKEN) // len(working)
                for f in working:
                    properties[f.key]["maxLength"] = max(16, each)
                result = int(max_tokens * RESULT_SHARE * RESULT_CHARS_PER_TOKEN)
            else:
                result = int(max_tokens * ALONE_SHARE * ALONE_CHARS_PER_TOKEN)
            properties[self.result.key]["maxLength"] = max(16, result)
        return {"type": "object", "properties": properties, "required": [f.key for f in self.fields],
                "additionalProperties": False}

    def response_format(self, *, max_tokens: int | None = None) -> dict:
        """The schema as a request's response format (DSPy's lm15 canonical shape)."""
        return {"type": "json_schema", "name": self.name, "schema": self.json_schema(max_tokens=max_tokens),
                "strict": True}

    def read(self, text: str) -> dict[str, str] | None:
        """The fields of a structured reply, or None when it is no JSON object at all. A reply cut
        short by the token limit is closed and read as far as it goes."""
        data = _load_object(text)
        if data is None:
            return None
        return {f.key: _as_text(data.get(f.key)) for f in self.fields}

    def as_text(self, values: dict[str, str]) -> str:
        """The reply as the free-text format would have carried it."""
        return "\n".join(f"{f.header}\n{values.get(f.key, '').strip()}" for f in self.fields) + "\n"


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_as_text(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


def _load_object(text: str) -> dict | None:
    text = (text or "").strip()
    if "{" not in text:   # no object to read or repair (json_repair costs ~100 us a reply to say so)
        return None
    fence = re.fullmatch(r"```(?:json)?\s*\n(.*?)\n?```", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import json_repair  # ships with DSPy: closes strings and braces a token limit left open

            data = json_repair.loads(text)
        except Exception:
            return None
    return data if isinstance(data, dict) and data else None


def _key(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", label.casefold()).strip("_") or "field"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


@functools.lru_cache(maxsize=256)
def evolution_format(method_text: str) -> ReplyFormat:
    """The fields an evolver's reply has under this method (see the module's docstring)."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for match in _MARKER_LINE.finditer(method_text):
        label = " ".join(match.group("name").split())
        folded = label.casefold()
        if folded in _INPUT_MARKERS or folded in seen:
            continue
        seen.add(folded)
        step = " ".join((match.group("step") or "").split()).rstrip(":.)-–")
        found.append((label, f"{step} #{label}#:".lstrip()))
    finals = [i for i, (label, _) in enumerate(found) if "final" in label.casefold()]
    if finals:
        found.append(found.pop(finals[-1]))
    elif not found:
        found = [(FINAL, f"#{FINAL}#:")]
    taken: set[str] = set()
    return ReplyFormat("evolution", tuple(Field(_key(label, taken), label, header) for label, header in found))


ANALYSIS = ReplyFormat("analysis", (
    Field("failed_cases", "Each case that failed to evolve, by number, and why", "Failed cases:"),
    Field("method_changes", "What the method should change", "What the method should change:"),
))
OPTIMIZATION = ReplyFormat("optimization", (
    Field("optimized_method", "The full text of the improved method", "Optimized Method:"),
))
