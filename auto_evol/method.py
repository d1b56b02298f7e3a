"""Evolving methods: a prompt with one ``{instruction}`` placeholder, stored as a readable file.

A method file is Markdown with a small header between ``---`` lines (``key: value``: name, parent,
made_by, and anything else worth keeping), then the prompt text. Only the literal ``{instruction}``
is ever substituted, so the text may hold any other braces (JSON, code) and they survive untouched.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

PLACEHOLDER = "{instruction}"
SUFFIX = ".md"


@dataclass(frozen=True)
class Method:
    name: str
    text: str
    parent: str = ""
    made_by: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = placeholder_problem(self.text)
        if problem:
            raise ValueError(problem)

    @property
    def hash(self) -> str:
        """Short content hash of the prompt text: two methods with the same text are the same method."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    def render(self, instruction: str) -> str:
        return self.text.replace(PLACEHOLDER, instruction)

    def to_file_text(self) -> str:
        header = {"name": self.name, "parent": self.parent, "made_by": self.made_by, **self.extra}
        lines = ["---", *(f"{k}: {_one_line(v)}" for k, v in header.items()), "---"]
        return "\n".join(lines) + "\n" + self.text.rstrip("\n") + "\n"


def placeholder_problem(text: str) -> str | None:
    """Why ``text`` cannot be a method, or None when it can."""
    count = text.count(PLACEHOLDER)
    if count == 0:
        return f"it has no {PLACEHOLDER} placeholder"
    if count > 1:
        return f"it has {count} {PLACEHOLDER} placeholders; a method has exactly one"
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
    problem = placeholder_problem(body)
    if problem:
        raise UserError(f"{source}: not a method: {problem}")
    name = header.pop("name", "") or default_name
    return Method(name=name, text=body.rstrip("\n") + "\n", parent=header.pop("parent", ""),
                  made_by=header.pop("made_by", ""), extra=header)


def search_dirs() -> list[Path]:
    """Where method names are looked up: ./methods first, then the methods shipped with auto-evol."""
    from .resources import shipped_dir

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
    """Write ``method`` to ``directory/<name>.md`` atomically (write then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{method.name}{SUFFIX}"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{method.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(method.to_file_text())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def free_name(base: str, directory: Path) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever has no file in ``directory`` yet."""
    name, n = base, 1
    while (directory / f"{name}{SUFFIX}").exists():
        n += 1
        name = f"{base}-{n}"
    return name
