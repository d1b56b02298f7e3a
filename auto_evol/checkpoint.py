"""What is done, on disk, so that a crash or kill -9 at any moment loses no finished work.

A journal is an append-only JSON Lines file: one line per finished unit of work, flushed to the
operating system as soon as it is written (a killed process loses nothing the kernel has). A line
torn by a crash is cut off when the journal is opened again, so the unit it described is redone once.
Final files are written beside their target and renamed over it: never half-written.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fh = open(path, "a", encoding="utf-8")

    def _repair(self) -> None:
        """Cut a torn last line (no newline, or not JSON) left by a crash mid-write."""
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    json.loads(line)
                except ValueError:
                    break
                good += len(line)
        if good != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def append(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(path: Path) -> Iterator[dict]:
    """The records of a journal (or any JSON Lines file), streamed; a torn last line is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                return


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w"):
    """Open a temporary file beside ``path``; on success it replaces ``path``, on failure it vanishes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if mode is None:  # the caller writes the file itself, by name
            yield Path(tmp)
        else:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
                yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
