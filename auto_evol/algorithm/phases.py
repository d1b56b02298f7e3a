"""A step's calls on one event loop, phases overlapping, with calls, cache hits and seconds per phase.

optimize used to run each phase (trajectory, analyses, optimizations, dev evaluation) as a barrier on
a thread pool: every phase waited for its slowest call before the next began, and at the CLI's old
default of 4 threads a run took 14 x its critical path against a server answering in 500 ms. Now a
task starts as soon as what it needs is known, on one event loop, and a phase is only the name its
tasks count their calls under: each task runs with a Tally (client.TALLY) that every role's usage
also reports to, so the counts per phase and per role stay exact while phases overlap. A phase's
seconds run from its first task's start to its last task's end.
"""
from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable

from ..llm.client import TALLY, Tally, Usage


class Phases:
    """The tasks of one unit of work (e0 on the dev set, a step, the champion check), by phase.

    ``task(phase, coro)`` runs ``coro`` as a task whose calls count under ``phase``; ``shown`` names the
    progress bar it advances (several phases may share one). ``close()`` cancels whatever is still in
    flight (an outage, Ctrl-C, or a call no decision needs any more) and waits for it to end, so
    nothing runs on past its unit and no call is paid for after the decision."""

    def __init__(self, observers, names: tuple[str, ...] = ()) -> None:
        self.observers = observers
        self.tallies: dict[str, Tally] = {name: Tally() for name in names}   # phases recorded even when empty
        self.spans: dict[str, list[float]] = {}
        self.pending: set[asyncio.Task] = set()
        self.expected: dict[str, int] = {}   # per progress bar: tasks announced, and finished
        self.finished: dict[str, int] = {}

    def begin(self, shown: str, total: int) -> None:
        """A progress bar for ``shown``, of ``total`` tasks."""
        self.expected[shown] = 0
        self.expect(shown, total)

    def expect(self, shown: str, more: int) -> None:
        """``more`` tasks for bar ``shown`` than it counted so far (work asked as evidence comes in):
        the bar is announced again with its new total and what is done of it."""
        self.expected[shown] = self.expected.get(shown, 0) + more
        self.observers.phase(shown, self.expected[shown], self.finished.get(shown, 0))

    def task(self, phase: str, coro: Awaitable, *, shown: str | None = None, advances: bool = True) -> asyncio.Task:
        """``coro`` as a task of ``phase``; at its end it advances bar ``shown`` (``phase`` when None)
        unless ``advances`` is False (a task that advances the bar itself, item by item: ``advance``)."""
        tally = self.tallies.setdefault(phase, Tally())
        context = contextvars.copy_context()
        context.run(TALLY.set, tally)
        task = asyncio.get_running_loop().create_task(
            self._timed(phase, coro, (shown or phase) if advances else None), context=context)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    async def _timed(self, phase: str, coro: Awaitable, shown: str | None):
        started = time.perf_counter()
        try:
            out = await coro
        finally:
            span = self.spans.setdefault(phase, [started, started])
            span[0], span[1] = min(span[0], started), max(span[1], time.perf_counter())
        if shown is not None:
            self.advance(shown)
        return out

    def advance(self, shown: str) -> None:
        """One task of bar ``shown`` finished."""
        self.finished[shown] = self.finished.get(shown, 0) + 1
        self.observers.advance(shown)

    def usage(self, owner: Usage, phase: str | None = None) -> dict:
        """What ``owner`` (a role's Usage) spent in ``phase``, or in all phases (Usage.snapshot's keys)."""
        out = Usage()
        for name, tally in self.tallies.items():
            if phase is None or name == phase:
                out.merge(tally.of(owner))
        return out.snapshot()

    def counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        """Calls, of them cache hits, and seconds per phase, in the order the phases began."""
        calls = {name: t.calls for name, t in self.tallies.items()}
        cached = {name: t.cached for name, t in self.tallies.items()}
        seconds = {name: round(self.spans[name][1] - self.spans[name][0], 2) if name in self.spans else 0.0
                   for name in self.tallies}
        return calls, cached, seconds

    async def close(self) -> None:
        for task in list(self.pending):
            task.cancel()
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
