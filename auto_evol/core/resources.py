"""Folders that ship with auto-evol (methods/, dev_sets/, experiments/).

In a source checkout or an editable install they are the repository's own folders; a wheel carries
copies under ``auto_evol/_shipped/``.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent   # auto_evol/, above core/


def shipped_dir(name: str) -> Path:
    bundled = _PACKAGE / "_shipped" / name
    return bundled if bundled.is_dir() else _PACKAGE.parent / name
