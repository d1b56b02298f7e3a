"""Who hears a run's events: one seam shared by optimize, evolve and compare.

A run announces what happens to it - it started, a phase began (with its size) and advanced, e0 was
judged, a step ended, a checkpoint was written, it finished - and whoever listens does their own work
with it: the terminal draws progress bars and tables, the MLflow logger records runs, a test keeps
the events it saw. The algorithm holds one ``Observers`` built from a list and never knows who is in
it, so tracking wraps the loop from outside instead of living inside it (MLflow's own genai
``optimize`` is built the same way). Before this seam, optimize called a reporter and a tracker side
by side for the same events, through two overlapping interfaces.

Every event is optional: an observer overrides the ones it cares about. ``close`` is always the last
event, also when the run fails (``error`` says how), so a progress display stops and a recorded run
is marked failed or killed. A pure leaf: nothing here imports MLflow, DSPy or the terminal.
"""
from __future__ import annotations

from collections.abc import Iterable


class Observer:
    """One listener. ``run_id``: the recorded run this observer made or reopened, if it keeps one."""

    run_id: str | None = None

    def start(self, options, **context) -> None:
        """The run begins. ``context`` holds what the verb knows by then (optimize: ``split``, ``init``,
        ``next_step``, ``calls``: the calls in flight, for a progress line; evolve: ``seeds``, ``methods``;
        compare: ``split``, ``methods``, ``out``)."""

    def phase(self, name: str, total: int, done: int = 0) -> None:
        """A phase of ``total`` tasks begins, ``done`` of them already finished (a resumed phase)."""

    def advance(self, name: str) -> None:
        """One task of phase ``name`` finished."""

    def baseline(self, evaluation) -> None:
        """optimize: the initial method was judged on the dev set."""

    def step(self, record) -> None:
        """optimize: one step ended (its trajectory, candidates and decision)."""

    def checkpoint(self, state: dict) -> None:
        """optimize: the loop's state after a finished step, enough to resume from."""

    def finish(self, result) -> None:
        """The run ended well; ``result`` is what the verb returns."""

    def close(self, error: BaseException | None) -> None:
        """Always the last event: ``error`` is None after ``finish``, else what stopped the run."""


class Observers(Observer):
    """A list of observers heard as one, in order; also a context manager that always closes them."""

    def __init__(self, observers: Iterable[Observer | None] = ()) -> None:
        self.observers = [o for o in observers if o is not None]

    @property
    def run_id(self) -> str | None:   # type: ignore[override]
        return next((o.run_id for o in self.observers if o.run_id is not None), None)

    def start(self, options, **context) -> None:
        for o in self.observers:
            o.start(options, **context)

    def phase(self, name: str, total: int, done: int = 0) -> None:
        for o in self.observers:
            o.phase(name, total, done)

    def advance(self, name: str) -> None:
        for o in self.observers:
            o.advance(name)

    def baseline(self, evaluation) -> None:
        for o in self.observers:
            o.baseline(evaluation)

    def step(self, record) -> None:
        for o in self.observers:
            o.step(record)

    def checkpoint(self, state: dict) -> None:
        for o in self.observers:
            o.checkpoint(state)

    def finish(self, result) -> None:
        for o in self.observers:
            o.finish(result)

    def close(self, error: BaseException | None) -> None:
        """Every observer is closed even when one of them fails to; the first such failure is raised
        after all of them (unless the run already failed: its own error is the one that matters)."""
        failed: BaseException | None = None
        for o in self.observers:
            try:
                o.close(error)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others closed
                failed = failed or exc
        if failed is not None and error is None:
            raise failed

    def __enter__(self) -> "Observers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)


class Queued(Observer):
    """``observers`` heard from one thread of their own, in the order the events came: what they do with
    an event (MLflow writes a step's run, its candidates' runs and their tables; the terminal draws a
    table) never holds up the calls of a run on an event loop, where it would delay every reply in
    flight. ``drain()`` waits until all that was sent has been heard and raises the first error an
    observer met (which also refuses every later event, so a broken logger stops the run at its next
    event instead of being forgotten). The last events (finish, close) stay with the caller, on its own
    thread, after ``drain()``."""

    def __init__(self, observers: Observers) -> None:
        import concurrent.futures

        self.observers = observers
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="auto-evol-observers")
        self._failed: BaseException | None = None

    @property
    def run_id(self) -> str | None:   # type: ignore[override]
        return self.observers.run_id

    def _send(self, name: str, *args, **kwargs) -> None:
        if self._failed is not None:
            raise self._failed
        self._pool.submit(self._hear, name, args, kwargs)

    def _hear(self, name: str, args: tuple, kwargs: dict) -> None:
        if self._failed is not None:
            return
        try:
            getattr(self.observers, name)(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - kept, raised by the run's next event or drain()
            self._failed = exc

    def start(self, options, **context) -> None:
        self._send("start", options, **context)

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self._send("phase", name, total, done)

    def advance(self, name: str) -> None:
        self._send("advance", name)

    def baseline(self, evaluation) -> None:
        self._send("baseline", evaluation)

    def step(self, record) -> None:
        self._send("step", record)

    def checkpoint(self, state: dict) -> None:
        self._send("checkpoint", state)

    def drain(self) -> None:
        self._pool.submit(lambda: None).result()
        if self._failed is not None:
            raise self._failed

    def shut(self) -> None:
        """Hear what is queued, then end the thread (errors were drain()'s to raise)."""
        self._pool.shutdown(wait=True)
