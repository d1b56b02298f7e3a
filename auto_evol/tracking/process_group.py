"""Running a server (the MLflow UI) in a process group of its own, stopped as a whole however we end.

`auto-evol ui` once left the MLflow server and its nine workers running when it was stopped with
SIGTERM. Here the server leads its own session, and SIGINT, SIGTERM and SIGHUP (a supervisor, `kill`,
a closed terminal) all turn into one clean stop of the whole group: SIGTERM, then SIGKILL for whatever
is still there after STOP_SECONDS. Being in their own session, the server and its workers do not see
the terminal's Ctrl-C themselves: it reaches them through this stop. Only SIGKILL of this process
itself leaves them behind: nothing can catch it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

STOP_SECONDS = 5.0


def processes() -> dict[int, list[str]]:
    """Every process (Linux /proc) as pid -> the fields of its stat line after the command name:
    state, parent pid, process group, ... (``man 5 proc``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    table[int(entry)] = fh.read().rpartition(")")[2].split()
            except OSError:
                continue
    return table


def group_alive(pgid: int) -> bool:
    """Whether any live member of process group ``pgid`` is left. On Linux a zombie counts as a
    member for kill(), but holds nothing (no port, no memory): it is not counted."""
    if os.path.isdir("/proc/self"):
        return any(len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X")
                   for fields in processes().values())
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc``'s whole group (it leads it); whatever is still there after STOP_SECONDS gets
    SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)  # reaps the leader, which would otherwise stay a zombie of the group
        if proc.returncode is not None and not group_alive(proc.pid):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_SECONDS)


class _Stop(Exception):
    """A stop signal arrived while the server ran."""


def run(command: list[str], *, env: dict) -> None:
    """Run ``command`` in a new session until it exits or a stop signal arrives, then stop its group."""
    state = {"proc": None, "stop": False, "stopping": False}

    def request_stop(signum, frame):   # a signal becomes a clean stop, once the server is ours to stop
        state["stop"] = True
        if state["proc"] is not None and not state["stopping"]:
            raise _Stop

    handled = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, request_stop) for s in handled}
    try:
        state["proc"] = subprocess.Popen(command, env=env, start_new_session=True)
        if not state["stop"]:  # a signal that came while it was starting stops it at once
            state["proc"].wait()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        state["stopping"] = True  # a second signal while stopping does not cut the stop short
        if state["proc"] is not None:
            stop(state["proc"])
        for s, handler in previous.items():
            signal.signal(s, handler)
