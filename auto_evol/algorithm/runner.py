"""Running one phase's independent LLM tasks on a thread pool, counting calls, cache hits and seconds.

Under ``--ray`` a phase can ``spread`` over a Ray cluster instead (pipeline.Cluster).

A phase whose calls go to a provider's batch endpoint (``--batch``: a BatchRole's ``aask``) runs with
``amap`` instead: every item in flight at once on one event loop, so the phase's requests wait for
their batch together (a thread per item would not scale to thousands of dev pairs).

The run's observers hear ``phase(name, total)`` and ``advance(name)``: progress bars live outside."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from ..llm.client import Llm

T = TypeVar("T")
R = TypeVar("R")


class Runner:
    """Runs one phase's independent LLM tasks concurrently and counts its calls and seconds."""

    def __init__(self, pool: ThreadPoolExecutor, observers, llms: Iterable[Llm], *, cluster=None) -> None:
        self.pool, self.observers, self.llms = pool, observers, list(llms)
        self.cluster = cluster   # a pipeline.Cluster under --ray: the dev evaluation spreads over it
        self.calls: dict[str, int] = {}
        self.cached: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def map(self, phase: str, fn: Callable[[T], R], items: list[T]) -> list[R]:
        before = self._counts()
        started = time.perf_counter()
        self.observers.phase(phase, len(items))

        def run(item: T) -> R:
            out = fn(item)
            self.observers.advance(phase)
            return out

        futures = [self.pool.submit(run, item) for item in items]
        done, waiting = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:   # an outage or Ctrl-C: the tasks not started yet are dropped, not run to their own failure
            for future in waiting:
                future.cancel()
            raise failed[0].exception()
        results = [f.result() for f in futures]
        self._count(phase, before, started)
        return results

    def amap(self, phase: str, fn: Callable[[T], Awaitable[R]], items: list[T], *,
             after: Callable[[], Awaitable[None]] | None = None) -> list[R]:
        """``map`` for async tasks, every item in flight at once on a fresh event loop of this phase's
        (llm.run_async). ``after`` runs on that loop at the end, whatever happened (a BatchRole's
        ``aclose``: its polls stop, its client closes; the journal keeps what a rerun attaches to). An
        outage or Ctrl-C cancels the items still in flight."""
        from ..llm.client import run_async

        before = self._counts()
        started = time.perf_counter()
        self.observers.phase(phase, len(items))

        async def run(item: T) -> R:
            out = await fn(item)
            self.observers.advance(phase)
            return out

        async def every() -> list[R]:
            tasks = [asyncio.ensure_future(run(item)) for item in items]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if after is not None:
                    await after()

        results = run_async(every())
        self._count(phase, before, started)
        return results

    def spread(self, phase: str, items: list[T], run: Callable[[list[T], Callable[[int, R], None]], None]) -> list[R]:
        """``map`` on a Ray cluster (--ray): ``run(items, done)`` sends them off and calls ``done(index,
        result)`` for each as it comes back (counting its calls in this runner's roles)."""
        before = self._counts()
        started = time.perf_counter()
        self.observers.phase(phase, len(items))
        results: list = [None] * len(items)

        def done(index: int, result: R) -> None:
            results[index] = result
            self.observers.advance(phase)

        run(items, done)
        self._count(phase, before, started)
        return results

    def _count(self, phase: str, before: tuple[int, int], started: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started
        after = self._counts()
        self.calls[phase] = self.calls.get(phase, 0) + after[0] - before[0]
        self.cached[phase] = self.cached.get(phase, 0) + after[1] - before[1]

    def _counts(self) -> tuple[int, int]:
        return (sum(llm.usage.calls for llm in self.llms), sum(llm.usage.cached for llm in self.llms))

    def take(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        out = self.calls, self.cached, {k: round(v, 2) for k, v in self.seconds.items()}
        self.calls, self.cached, self.seconds = {}, {}, {}
        return out
