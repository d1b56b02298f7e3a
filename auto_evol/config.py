"""Presets: a TOML file whose keys are optimize's options (``steps = 2``, ``evol-max-tokens = 384``).

Flags given on the command line override the preset; the preset overrides the defaults.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from .errors import UserError


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
        if getattr(defaults, name) is not None and not isinstance(value, expected) and not (
                expected is float and isinstance(value, int)):
            raise UserError(f"{path}:{_line_of(text, key)}: {key} must be {expected.__name__}, "
                            f"got {type(value).__name__}")
        settings[name] = value
    return settings
