"""Evolving methods: a prompt that the instruction to evolve is given to, stored as a readable file.

As in the Auto Evol-Instruct authors' code, a method is a prompt with the instruction appended: after
the method's own closing ``#Instruction#:`` line, or after one added here when the method has none.
A literal ``{instruction}`` placeholder, where the text has one, marks another place for it instead
(the shipped operators put it before their ``#Finally Rewritten Instruction#:`` line). So an
optimizer's method without a placeholder is still a method; the authors' nine optimized methods had
none. Only the literal placeholder is ever substituted, so any other braces (JSON, code) survive.

A method file is Markdown with a small header between ``---`` lines (``key: value``: name, parent,
made_by, and anything else worth keeping), then the prompt text.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..storage.checkpoint import atomic_write

PLACEHOLDER = "{instruction}"
INSTRUCTION_LINE = "#Instruction#:"
SUFFIX = ".md"
_INPUT_SLOT = re.compile(r"^[ \t*_]*#\s*instruction\s*#\s*:?[ \t*_]*\Z", re.I)


@dataclass(frozen=True)
class Method:
    name: str
    text: str
    parent: str = ""
    made_by: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = text_problem(self.text)
        if problem:
            raise ValueError(problem)

    @property
    def hash(self) -> str:
        """Short content hash of the prompt text: two methods with the same text are the same method."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def render(self, instruction: str) -> str:
        """The prompt the evol LLM gets: the instruction at the placeholder, or appended."""
        if PLACEHOLDER in self.text:
            return self.text.replace(PLACEHOLDER, instruction)
        body = self.text.rstrip()
        last = body.rsplit("\n", 1)[-1]
        opener = "\n" if _INPUT_SLOT.match(last) else f"\n\n{INSTRUCTION_LINE}\n"
        return body + opener + instruction

    def to_file_text(self) -> str:
        header = {"name": self.name, "parent": self.parent, "made_by": self.made_by, **self.extra}
        lines = ["---", *(f"{k}: {_one_line(v)}" for k, v in header.items()), "---"]
        return "\n".join(lines) + "\n" + self.text.rstrip("\n") + "\n"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a method, or None when it can: only a text with no prompt in it fails."""
    if not text.replace(PLACEHOLDER, "").strip():
        return "it holds no prompt text"
    return None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


_HEADER_LINE = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s?(.*)$")


def parse(file_text: str, *, source: str, default_name: str) -> Method:
    """Read a method from file text; a file without a header is all prompt text."""
    header: dict[str, str] = {}
    body = file_text
    lines = file_text.splitlines(keepends=True)
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:], start=2):
            if line.strip() == "---":
                body = "".join(lines[i:])
                break
            match = _HEADER_LINE.match(line.rstrip("\n"))
            if not match:
                raise UserError(f"{source}:{i}: header line is not 'key: value': {line.strip()!r}")
            header[match.group(1)] = match.group(2).strip()
        else:
            raise UserError(f"{source}:1: header opened with '---' is never closed")
    problem = text_problem(body)
    if problem:
        raise UserError(f"{source}: not a method: {problem}")
    name = header.pop("name", "") or default_name
    return Method(name=name, text=body.rstrip("\n") + "\n", parent=header.pop("parent", ""),
                  made_by=header.pop("made_by", ""), extra=header)


def search_dirs() -> list[Path]:
    """Where method names are looked up: ./methods first, then the methods shipped with auto-evol."""
    from ..core.resources import shipped_dir

    dirs = [Path.cwd() / "methods", shipped_dir("methods")]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in {x.resolve() for x in dirs[:i]}]


def load(spec: str | os.PathLike) -> Method:
    """A method by name (a file in methods/) or by path."""
    spec_str = str(spec)
    path = Path(spec_str)
    if path.suffix or os.sep in spec_str or "/" in spec_str:
        if not path.is_file():
            raise UserError(f"{spec_str}: method file not found")
        return _read(path)
    found = path_of(spec_str)
    if found is not None:
        return _read(found)
    known = ", ".join(available()) or "none"
    raise UserError(f"unknown method {spec_str!r} (known: {known}; or give a file path)")


def _read(path: Path) -> Method:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse(text, source=str(path), default_name=path.stem)


def path_of(name: str) -> Path | None:
    """The file a method name resolves to, or None."""
    for directory in search_dirs():
        candidate = directory / f"{name}{SUFFIX}"
        if candidate.is_file():
            return candidate
    return None


def available() -> list[str]:
    names = {p.stem for d in search_dirs() for p in d.glob(f"*{SUFFIX}")}
    return sorted(names)


def save(method: Method, directory: Path) -> Path:
    """Write ``method`` to ``directory/<name>.md`` atomically (write then rename), with the
    permissions the umask gives, as open() would."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{method.name}{SUFFIX}"
    with atomic_write(target) as fh:
        fh.write(method.to_file_text())
    return target


# --- a weighted mix of methods (evolve's and compare's --method NAME[=WEIGHT]) -------------------------

CLASSIC = "evol-instruct"   # one name for the six classic Evol-Instruct operators
CLASSIC_OPERATORS = ("evol-instruct-constraints", "evol-instruct-deepening", "evol-instruct-concretizing",
                     "evol-instruct-reasoning", "evol-instruct-complicate-input", "evol-instruct-breadth")


def mix(specs: list[str], resolve: Callable[[str], Method]) -> list[tuple[Method, float]]:
    """``NAME[=WEIGHT]`` specs as (method, weight); 'evol-instruct' is its six operators sharing a weight.

    ``resolve`` finds a method by name (registry.resolve: a prompts:/ URI, a name in methods/, a file),
    so this module stays free of the prompt registry; registry.resolve_methods is the mix with it.
    Specs are read and resolved one by one, so the first bad one is the one reported."""
    chosen: list[tuple[Method, float]] = []
    for spec in specs:
        name, weight = spec, 1.0
        head, sep, tail = spec.rpartition("=")
        if sep:
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass
        if weight <= 0:
            raise UserError(f"--method {spec}: the weight must be above 0")
        if name == CLASSIC:
            chosen += [(resolve(op), weight / len(CLASSIC_OPERATORS)) for op in CLASSIC_OPERATORS]
        else:
            chosen.append((resolve(name), weight))
    if not chosen:
        raise UserError("no --method given")
    return chosen


def pick(methods: list[tuple[Method, float]], seed: int, seed_id: str, round_: int) -> Method:
    """The method for one instruction in one round: uniform by weight, the same on every rerun."""
    rng = random.Random(f"{seed}:{seed_id}:{round_}")
    return rng.choices([m for m, _ in methods], weights=[w for _, w in methods])[0]


def free_name(base: str, directory: Path) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever has no file in ``directory`` yet."""
    name, n = base, 1
    while (directory / f"{name}{SUFFIX}").exists():
        n += 1
        name = f"{base}-{n}"
    return name
