"""Every adjustment auto-evol makes to DSPy's internals, in one place: re-check this file on a DSPy upgrade.

- Retry backoff gets jitter (``add_jitter``; DSPy's private ``execution._delay``).
- auto-evol's event loops run DSPy's own per-call bookkeeping on the loop's thread (``LoopExecutor``,
  ``run_dspy_inline``; both match DSPy functions by module name, ``_dspy_own``).
- The disk cache's SQLite connections are kept small (``bound_disk_cache_memory``; diskcache settings).
"""
from __future__ import annotations

import functools
import random
from concurrent.futures import Future, ThreadPoolExecutor

_jitter_added = False


def add_jitter() -> None:
    """DSPy's retry backoff (2^attempt s, capped at 60) has no jitter: many calls that failed together
    would retry together. Spread each wait over half to one and a half times its length; a server's
    Retry-After is kept as it is."""
    global _jitter_added
    from dspy.clients import execution

    if _jitter_added or not hasattr(execution, "_delay"):
        return
    plain = execution._delay

    def jittered(exc, attempt):
        delay = plain(exc, attempt)
        if getattr(exc, "retry_after", None) is not None:
            return delay
        return delay * random.uniform(0.5, 1.5)

    execution._delay = jittered
    _jitter_added = True


def _dspy_own(fn) -> bool:
    """Whether ``fn`` is one of DSPy's own functions (its clients' per-call bookkeeping)."""
    # asyncio.to_thread submits functools.partial(context.run, target, ...).
    target = fn.args[0] if isinstance(fn, functools.partial) and fn.args else fn
    return (getattr(target, "__module__", None) or "").startswith("dspy.clients.")


def run_dspy_inline(loop) -> None:
    """Make ``loop.run_in_executor(None, f)`` (what ``asyncio.to_thread`` calls) run DSPy's own functions
    at once and hand back an asyncio future that is already done; anything else goes on as before.

    Through the executor, even one that runs them inline (LoopExecutor), each hop chains a concurrent
    future to an asyncio one: a ``call_soon_threadsafe``, a self-pipe write and an extra loop pass,
    twice per hop and four hops per call. Profiled against a fast server, those hops were ~18.6% of the
    event loop's CPU in ``auto-evol evolve``."""
    plain = loop.run_in_executor

    def run_in_executor(executor, func, *args):
        if executor is not None or not _dspy_own(func):
            return plain(executor, func, *args)
        future = loop.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    loop.run_in_executor = run_in_executor


class LoopExecutor(ThreadPoolExecutor):
    """The default executor of auto-evol's event loops. DSPy hands its bookkeeping for every async
    call (request preparation, cache lookup and store, pricing) to a worker thread, four hops per
    call; against a fast server those hops cost more CPU than the request itself. DSPy's own
    functions run at once on the loop's thread here; anything else still goes to a worker."""

    def submit(self, fn, /, *args, **kwargs):
        if not _dspy_own(fn):
            return super().submit(fn, *args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


# SQLite settings of DSPy's disk cache (diskcache: 16 shards, each with its own SQLite connection per
# thread). Its defaults let every connection keep 32 MB of pages and map 64 MB of the file, so a long
# evolve run grew by hundreds of MB as the cache filled. Reads go through the OS page cache instead.
_DISK_CACHE_PAGES = 256          # SQLite pages (4 KiB) kept per connection: 1 MiB
_DISK_CACHE_MMAP = 0             # bytes of the database file mapped into memory


def bound_disk_cache_memory(cache) -> None:
    disk = getattr(cache, "disk_cache", None)
    if hasattr(disk, "reset"):  # a diskcache FanoutCache: the settings reach every shard and connection
        disk.reset("sqlite_cache_size", _DISK_CACHE_PAGES)
        disk.reset("sqlite_mmap_size", _DISK_CACHE_MMAP)
