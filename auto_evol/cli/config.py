"""Presets, and the one way every verb turns what the user asked for into its options.

A preset is a TOML file whose keys are optimize's options (``steps = 2``, ``evol-max-tokens = 384``).
Every verb builds its options dataclass with :func:`build_options`, so the precedence is the same
everywhere: a flag typed on the command line beats the preset, and the preset beats the dataclass's
default. A flag left out is not passed at all, so the dataclass's default applies; where ``--help``
shows a default of its own, tests/test_cli_options.py holds it equal to the dataclass's.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from ..core.errors import UserError


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith((key, f'"{key}"')):
            return number
    return 1


def load_preset(path: Path, options_type) -> dict:
    """The preset's settings as option names and values, checked against ``options_type``'s fields."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    raw = raw.get("optimize", raw)  # the settings may sit under an [optimize] table
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    defaults = options_type()
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise UserError(f"{path}:{_line_of(text, key)}: unknown setting {key!r}")
        expected = type(getattr(defaults, name))
        declared = str(fields[name].type)   # "int | str": a number or a word such as auto
        if getattr(defaults, name) is not None and not isinstance(value, expected) and not (
                expected is float and isinstance(value, int)) and type(value).__name__ not in declared.split(" | "):
            raise UserError(f"{path}:{_line_of(text, key)}: {key} must be {expected.__name__}, "
                            f"got {type(value).__name__}")
        settings[name] = value
    return settings


def build_options(options_type, flags: dict, preset: dict | None = None, *, from_preset=None):
    """``options_type`` built from the flags the user typed (``flags``: option names and values, none
    left at a default) over ``preset``; whatever neither names keeps the dataclass's default.
    ``from_preset`` names the preset settings this verb takes (all when None): a preset holds
    optimize's options, and one of the same name can mean something else elsewhere (compare's
    ``rounds`` are rounds per dev item, optimize's the rounds of one trajectory)."""
    settings = {k: v for k, v in (preset or {}).items() if from_preset is None or k in from_preset}
    settings.update(flags)
    return options_type(**settings)
