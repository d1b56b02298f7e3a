"""What is done, on disk, so that a crash or kill -9 at any moment loses no finished work.

A journal is an append-only JSON Lines file: one line per finished unit of work, flushed to the
operating system as soon as it is written (a killed process loses nothing the kernel has). A line
torn by a crash is cut off when the journal is opened again, so the unit it described is redone once.
Final files are written beside their target and renamed over it: never half-written.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import UserError


class Journal:
    """``flush=False``: lines reach the operating system when the buffer fills or the journal closes,
    for a journal whose last lines a kill may cost (a rerun redoes what they said, at a price)."""

    def __init__(self, path: Path, *, flush: bool = True) -> None:
        self.path = path
        self._flush = flush
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
        if self._flush:
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


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back: under a lock, so two threads of ours
    # never see each other's placeholder value.
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


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
        # mkstemp makes the file 0600; the final file gets what open() would give it (the umask).
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_leftovers(*targets: Path) -> None:
    """Remove the temporary files that a killed ``atomic_write`` left beside each target (kill -9
    gives no chance to clean up). Only for a caller that owns the targets (holds their lock)."""
    for target in targets:
        if target.parent.is_dir():
            # mkstemp's own shape: the name, a dot, 8 random characters, .tmp (another output whose
            # name starts with this one's has more between them).
            for stale in target.parent.glob(f".{glob.escape(target.name)}.{'?' * 8}.tmp"):
                stale.unlink(missing_ok=True)


def check_writable(folder: Path, what: str) -> None:
    """``folder`` is a folder this process can write in, or can be made one: checked before any paid
    work, so nothing is lost for want of a place to put it. ``what`` starts the error line."""
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                raise UserError(f"{what}: {existing} is a file, not a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise UserError(f"{what}: cannot write in {existing} (permission denied)")
            return
