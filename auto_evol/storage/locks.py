"""One process at a time per work folder, per optimize run and per store: advisory file locks.

Two ``evolve --out X`` started together once both worked in ``X.work/`` and wrote 1,940 records for a
980-record job; two first runs in a fresh folder once left the MLflow store half-migrated. A lock here
is an ``flock`` on a small file that also holds who took it (pid, host, start time), so the second
process refuses at once with one line naming the holder. The kernel drops an flock when its process
dies, however it dies, so the lock of a killed run is stale by construction and the next run takes it
over (and says so when the holder's record is still there).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not guarded there
    fcntl = None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('started', '?')})"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the lock on ``path``, or None when another process holds it.

    The file may be removed by its holder as it finishes (a work folder dropped after an early
    error); a lock taken on a file that is no longer at ``path`` guards nothing, so it is retaken."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:   # its folder was removed by a holder finishing: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except PermissionError:
            raise UserError(f"{path}: cannot write this lock file (permission denied)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(path: Path, what: str, *, wait: float = 0.0, note=None) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` block; ``what`` names the guarded thing in the
    refusal. ``wait`` seconds are spent retrying first (for short critical sections such as a
    store's creation); ``note`` gets one line when a dead holder's lock is taken over."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while (fd := _try_lock(path)) is None:
        if time.monotonic() >= deadline:
            raise UserError(f"{what} is in use by {_describe(path)}; wait for it to finish, or stop it")
        time.sleep(0.05)
    try:
        before = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if before and note is not None:
            note(f"{what}: taking over from {_describe(path)}, which stopped without finishing")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)   # a clean finish leaves no holder behind
        os.close(fd)
