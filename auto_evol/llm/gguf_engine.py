"""The in-process GGUF engine (llama.cpp through xllamacpp), beside the HTTP engine: the embedded model
and ``gguf:PATH`` files run here, one server per file and slot count per process."""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.errors import UserError
from .http_engine import SyncEngine, openai_body

_engines: dict[tuple[str, int], tuple["GgufEngine", "AsyncGguf"]] = {}   # one per GGUF file and slot count
_engines_lock = threading.Lock()


def engines(path: Path, *, slots: int) -> tuple["GgufEngine", "AsyncGguf"]:
    """The (sync, async) engines for ``path`` decoding ``slots`` requests together, made once per process
    (loading a model takes seconds and its memory)."""
    key = (str(path.resolve()), slots)
    with _engines_lock:
        if key not in _engines:
            engine = GgufEngine(path, slots)
            _engines[key] = engine, AsyncGguf(engine, slots)
        return _engines[key]


class GgufEngine(SyncEngine):
    """A DSPy engine over an in-process llama.cpp server (xllamacpp): one per GGUF file per process.

    ``slots`` requests are decoded together (continuous batching); more wait in the server's queue.
    """

    def __init__(self, path: Path, slots: int) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = slots
        params.n_ctx = 4096 * slots  # per-slot context of 4096 tokens
        threads = max(1, os.cpu_count() or 1)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        params.warmup = False
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise UserError(f"{path}: llama.cpp could not load this GGUF file ({exc})") from None

    def complete(self, request):
        from dspy import lm15

        body = openai_body(request)
        body.pop("model")  # the server runs one model
        out = self._server.handle_chat_completions(body)
        if "error" in out:
            error = out["error"]
            message = error.get("message", str(error))
            if error.get("type") == "exceed_context_size_error":
                raise lm15.ContextLengthError(message)
            raise lm15.InvalidRequestError(message) if error.get("code") == 400 else lm15.ServerError(message)
        return lm15.response_from_openai_chat(out, model=request.model)


class AsyncGguf:
    """The GGUF engine for async callers: each completion runs on a worker thread of its own pool,
    one thread per decoding slot (the loop's default pool may hold fewer threads than slots)."""

    def __init__(self, engine: GgufEngine, slots: int) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="gguf")

    async def complete(self, request):
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.engine.complete, request)

    async def stream(self, request):
        for event in self.engine.stream(request):
            yield event

    async def aclose(self) -> None:
        pass
