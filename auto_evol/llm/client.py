"""What a role does per call: one LLM role (evol, optimizer, answer, judge) on DSPy's LM layer.

An Llm holds a built DSPy LM (backends.py chooses and builds it from the role's RoleSettings) and
asks it for one completion at a time, sync or async: it decodes under a reply format's JSON schema
where the backend takes one and steps down to free text where it refuses, counts the role's usage
and cache hits, tells a failure that no retry fixes (a bad key, an unknown model: the run stops in
one line) from one that only this call met (LLMError), and stops the role once too many of its
recent calls failed (ErrorWindow: an outage). DSPy owns the response cache and the retries with
backoff; what comes back here is each call's final outcome.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..core.errors import Outage, UserError, first_line
from . import dspy_tuning

_NO_LIMIT = contextlib.nullcontext()
EMBEDDED = "embedded"   # the model string that, like no model at all, names the embedded default


STRUCTURED_MODES = ("auto", "on", "off")


def check_structured(mode: str) -> None:
    if mode not in STRUCTURED_MODES:
        raise UserError(f"--structured must be {', '.join(STRUCTURED_MODES[:-1])} or {STRUCTURED_MODES[-1]}, "
                        f"got {mode!r}")


@dataclass(frozen=True)
class RoleSettings:
    """What one role asks of its LLM. ``model`` None means the embedded default."""
    model: str | None = None
    api_base: str | None = None
    temperature: float | None = 0.0
    top_p: float | None = None
    max_tokens: int = 1024
    timeout: float = 120.0       # seconds for one call to a provider
    structured: str = "auto"     # JSON-schema replies: auto (where the backend takes them), on, off

    @property
    def label(self) -> str:
        return self.model or EMBEDDED


# The paper's sampling per role: evolving is greedy, optimizing samples.
EVOL_DEFAULTS = RoleSettings(temperature=0.0, max_tokens=1024)
OPTIMIZER_DEFAULTS = RoleSettings(temperature=0.6, top_p=0.95, max_tokens=2048)


@dataclass(frozen=True)
class Reply:
    text: str                    # a structured reply comes back as the text its fields stand for
    input_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    cached: bool = False         # answered from DSPy's cache: no LLM work paid for
    fields: dict[str, str] | None = None   # the structured reply's fields, when one was asked for and read


@dataclass
class Usage:
    calls: int = 0
    cached: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, reply: Reply | None, seconds: float) -> None:
        """Count one call (None: it failed for good); the calling task's Tally, if any, counts it too."""
        self._count(reply, seconds)
        tally = TALLY.get()
        if tally is not None:
            tally.count(self, reply, seconds)

    def merge(self, other: "Usage") -> None:
        with self._lock:
            self.calls += other.calls
            self.cached += other.cached
            self.errors += other.errors
            self.input_tokens += other.input_tokens
            self.output_tokens += other.output_tokens
            self.seconds += other.seconds

    def _count(self, reply: Reply | None, seconds: float) -> None:
        with self._lock:
            self.calls += 1
            self.seconds += seconds
            if reply is None:
                self.errors += 1
            elif reply.cached:
                self.cached += 1
            else:
                self.input_tokens += reply.input_tokens
                self.output_tokens += reply.output_tokens

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"calls": self.calls, "cached": self.cached, "errors": self.errors,
                    "input_tokens": self.input_tokens,
                    "output_tokens": self.output_tokens, "seconds": round(self.seconds, 3)}


class Tally:
    """The calls of one task and the tasks it starts, per role's Usage: what a share of the work used
    while other work runs beside it on the same event loop (optimize's phases overlap, so a role's
    Usage before and after a phase no longer tells that phase's calls). Set in ``TALLY`` for a task's
    context; every Usage.add in that context also counts here."""

    def __init__(self) -> None:
        self.by_owner: dict[int, tuple[Usage, Usage]] = {}

    def count(self, owner: Usage, reply: Reply | None, seconds: float) -> None:
        self.by_owner.setdefault(id(owner), (owner, Usage()))[1]._count(reply, seconds)

    def of(self, owner: Usage) -> Usage:
        """What ``owner``'s calls in this tally used (an empty Usage when none)."""
        return self.by_owner.get(id(owner), (owner, Usage()))[1]

    @property
    def calls(self) -> int:
        return sum(u.calls for _, u in self.by_owner.values())

    @property
    def cached(self) -> int:
        return sum(u.cached for _, u in self.by_owner.values())


TALLY: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("auto_evol_tally", default=None)


class LLMError(Exception):
    """An LLM call failed for good (after DSPy's retries)."""


# Fail fast: a role stops when more than this share of its last ERROR_WINDOW calls failed after
# their retries. With every call failing (a server answering 500), evolve once ran 16 minutes and
# exited 0 with nothing kept; with 20% injected faults a call fails after DSPy's five attempts about
# once in 3,000, so a real outage and a flaky provider are far apart.
MAX_ERROR_RATE = 0.5
ERROR_WINDOW = 20


def check_error_rate(rate: float) -> None:
    if not 0 < rate <= 1:
        raise UserError(f"--max-error-rate must be above 0 and at most 1 (1: never stop), got {rate}")


class ErrorWindow:
    """The outcomes of a role's last calls; ``tripped`` once more than ``limit`` of a full window failed."""

    def __init__(self, limit: float = MAX_ERROR_RATE, size: int = ERROR_WINDOW) -> None:
        self.limit, self.size = limit, size
        self._outcomes: deque[bool] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.tripped: str | None = None    # the line that says why, once tripped
        self.last_error = ""

    def add(self, failed: bool, error: str = "") -> None:
        with self._lock:
            if failed:
                self.last_error = error
            self._outcomes.append(failed)
            failures = sum(self._outcomes)
            if (self.tripped is None and self.limit < 1 and len(self._outcomes) == self.size
                    and failures > self.limit * self.size):
                self.tripped = (f"{failures} of the last {self.size} calls failed after their retries "
                                f"(--max-error-rate {self.limit:g}); the last error: {self.last_error}")


class Llm:
    """One role's LLM: ask it a prompt, get a Reply; usage is counted per role.

    With a ``reply_format`` and a backend that takes JSON schemas, the reply is decoded under the
    format's schema (``structured``). A backend that refuses the schema is asked again in free text,
    and the role stays in free text from then on, with one notice saying so (``--structured on``
    makes the refusal an error instead).
    """

    def __init__(self, settings: RoleSettings, lm, *, seeded: bool = False, structured: bool = False,
                 bounded: bool = False) -> None:
        self.settings = settings
        self._lm = lm
        self._seeded = seeded  # the backend takes a per-request sampling seed (our GGUF engine does)
        self.structured = structured and settings.structured != "off"
        self._bounded = bounded  # the backend honours string maxLength (llama.cpp, vLLM): see replies.py
        self.usage = Usage()
        self.notices: list[str] = []
        self.errors = ErrorWindow()
        # Unseeded request configs, reused (see _request): building lm15.Config and the reply format's
        # schema anew cost ~30 us per evol call, profiled; a role needs only a few of them.
        self._configs: dict = {}
        self._flying: dict[tuple, asyncio.Future] = {}   # the async calls in flight, by what they ask
        self.gate = None    # concurrency.AdaptiveLimit its HTTP calls pass (--concurrency auto, OpenAI-compatible)
        self.slots = None   # concurrency.CallSlots its async calls pass (every other limit)

    def sibling(self, settings: RoleSettings | None = None) -> "Llm":
        """Another role on the same backend: the same client, reply cache, limits and structured-output
        state at the start, with usage, errors and notices of its own (two roles with equal settings
        would otherwise count every call of either twice, once per role)."""
        twin = Llm(settings or self.settings, self._lm, seeded=self._seeded, structured=self.structured,
                   bounded=self._bounded)
        twin.gate, twin.slots = self.gate, self.slots
        return twin

    @property
    def last_error(self) -> str:
        return self.errors.last_error

    def _outage(self) -> Outage:
        return Outage(f"{self.settings.label}: {self.errors.tripped}")

    def notice(self, text: str) -> None:
        """One line for the person running this (stderr) that is also kept for the run's record."""
        line = f"{self.settings.label}: {text}"
        if line not in self.notices:
            self.notices.append(line)
            print(f"note: {line}", file=sys.stderr)

    def _request(self, prompt: str, rollout: int | None, reply_format, history: tuple[str, ...],
                 temperature: float | None):
        from dspy import lm15

        s = self.settings
        temperature = s.temperature if temperature is None else temperature
        sampled = rollout is not None and bool(temperature)
        seed = rollout if sampled and self._seeded else None
        # The key holds all that goes into the config: max_tokens and top_p are the role's (the provider
        # check may replace the settings without top_p), ReplyFormat is a frozen dataclass (hashable by
        # value) and lm15.Config is frozen too, so one config can be shared by many requests.
        key = (s.max_tokens, s.top_p, temperature, reply_format, self._bounded)
        config = self._configs.get(key) if seed is None else None
        if config is None:
            response_format = None
            if reply_format is not None:
                response_format = reply_format.response_format(max_tokens=s.max_tokens if self._bounded else None)
            config = lm15.Config(max_tokens=s.max_tokens, temperature=temperature, top_p=s.top_p,
                                 seed=seed, response_format=response_format)
            if seed is None:   # a seeded config is used once (one rollout): not kept
                if len(self._configs) >= 256:   # optimize's many candidate methods: kept bounded
                    self._configs.clear()
                self._configs[key] = config
        turns = (*history, prompt)
        messages = tuple(lm15.Message.user(t) if i % 2 == 0 else lm15.Message.assistant(t)
                         for i, t in enumerate(turns))
        request = lm15.Request(model=self._lm.model, messages=messages, config=config)
        return request, ({"rollout_id": rollout} if sampled else {})

    def _reply(self, response, tracker, started: float, reply_format) -> Reply:
        usage = response.usage
        text, fields = response.text or "", None
        if reply_format is not None:
            fields = reply_format.read(text)
            if fields is not None:
                text = reply_format.as_text(fields)
        reply = Reply(text=text, input_tokens=getattr(usage, "input_tokens", 0) or 0,
                      output_tokens=getattr(usage, "output_tokens", 0) or 0,
                      truncated=response.finish_reason == "length", cached=not tracker.get_total_tokens(),
                      fields=fields)
        self.usage.add(reply, time.perf_counter() - started)
        self.errors.add(False)
        return reply

    def _failed(self, exc: Exception, started: float) -> Exception:
        self.usage.add(None, time.perf_counter() - started)
        if _is_fatal(exc):
            return UserError(f"{self.settings.label}: {first_line(exc)}")
        self.errors.add(True, first_line(exc))
        if self.errors.tripped:
            return self._outage()
        return LLMError(first_line(exc))

    def _prepare(self, prompt: str, rollout: int | None, reply_format, history: tuple[str, ...],
                 temperature: float | None):
        """What ``ask`` and ``aask`` send: (the format asked for, whether bounded, request, kwargs);
        a role stopped by an outage asks nothing more."""
        if self.errors.tripped:
            raise self._outage()
        fmt = reply_format if self.structured else None
        return (fmt, self._bounded, *self._request(prompt, rollout, fmt, history, temperature))

    def _after_failure(self, exc: Exception, fmt, bounded: bool, started: float) -> None:
        """Return when the call should be asked again with less (a refused schema: first the string
        bounds go, quietly, since hosted strict modes may not take maxLength; then the schema itself,
        with a notice; calls refused together step down once); raise the call's failure otherwise.
        Under --structured on a refused schema ends the run."""
        if fmt is not None and refuses_request(exc):
            if self.settings.structured == "on":
                raise UserError(f"{self.settings.label}: structured output refused ({first_line(exc)}); "
                                f"use --structured auto or off") from None
            if bounded:
                self._bounded = False
            elif self.structured:
                self.structured = False
                self.notice(f"structured output refused ({first_line(exc)}); this role goes on in free text")
            return
        raise self._failed(exc, started) from None

    async def aask(self, prompt: str, *, rollout: int | None = None, reply_format=None,
                   history: tuple[str, ...] = (), temperature: float | None = None) -> Reply:
        """``ask`` for asyncio code: many calls in flight on one thread. A call the same as one in flight
        (two candidates' evolutions of a dev item that read alike, answered alike) waits for it and then
        asks: the reply cache answers it, as it did when calls went one at a time (otherwise both went to
        the server and were paid for twice; a run without a cache asks again)."""
        key = (prompt, rollout, reply_format, history, temperature)
        while (leader := self._flying.get(key)) is not None:
            await asyncio.wait({leader})
        self._flying[key] = asyncio.get_running_loop().create_future()
        try:
            return await self._aask(prompt, rollout, reply_format, history, temperature)
        finally:
            self._flying.pop(key).set_result(None)

    async def _aask(self, prompt: str, rollout: int | None, reply_format, history: tuple[str, ...],
                    temperature: float | None) -> Reply:
        import dspy

        fmt, bounded, request, kwargs = self._prepare(prompt, rollout, reply_format, history, temperature)
        try:
            async with self.slots or _NO_LIMIT:
                started = time.perf_counter()
                with dspy.track_usage() as tracker:
                    response = await self._lm.acall(request, **kwargs)
        except Exception as exc:
            self._after_failure(exc, fmt, bounded, started)
            return await self._aask(prompt, rollout, reply_format, history, temperature)
        return self._reply(response, tracker, started, fmt)

    async def aclose(self) -> None:
        """Close what async calls opened on the running event loop (pooled connections)."""
        engine = getattr(self._lm, "_async_engine_spec", None)
        if engine is not None and hasattr(engine, "aclose"):
            await engine.aclose()

    def ask(self, prompt: str, *, rollout: int | None = None, reply_format=None,
            history: tuple[str, ...] = (), temperature: float | None = None) -> Reply:
        """One completion. ``rollout`` separates otherwise identical sampled requests in the cache
        and seeds the sampler, so a sampled call repeats exactly where the backend honours seeds.
        ``history`` is the conversation so far (user and assistant turns, alternating) that
        ``prompt`` continues; ``temperature`` overrides the role's for this call."""
        import dspy

        fmt, bounded, request, kwargs = self._prepare(prompt, rollout, reply_format, history, temperature)
        started = time.perf_counter()
        try:
            # DSPy's usage tracker records nothing for a cache hit: that is how a hit is told apart.
            with dspy.track_usage() as tracker:
                response = self._lm(request, **kwargs)
        except Exception as exc:
            self._after_failure(exc, fmt, bounded, started)
            return self.ask(prompt, rollout=rollout, reply_format=reply_format, history=history,
                            temperature=temperature)
        return self._reply(response, tracker, started, fmt)


def refuses_request(exc: BaseException) -> bool:
    """A provider's 'this request is not acceptable' (HTTP 400, an unsupported feature), as opposed to
    a transport failure or an overloaded server; a too-long prompt is not counted (no schema fixes it)."""
    from dspy import lm15

    for error in (exc, exc.__cause__):
        if isinstance(error, lm15.ContextLengthError):
            return False
        if isinstance(error, (lm15.InvalidRequestError, lm15.CapabilityError)):
            return True
        if getattr(error, "status_code", None) == 400:   # LiteLLM's BadRequestError and kin
            return True
    return False


@functools.cache
def _fatal_types() -> tuple[type, ...]:
    """The error types no other item would escape either (bad key, refused permission, unknown model,
    no credit, missing configuration): DSPy's own, the lm15 ones it wraps, and the provider SDKs' for
    errors LiteLLM passes through."""
    from dspy import lm15
    from dspy.utils import exceptions as dspy_errors

    found: list[type] = [lm15.AuthError, lm15.BillingError, lm15.UnsupportedModelError, lm15.UnknownModelError,
                         lm15.NotConfiguredError, dspy_errors.LMAuthError, dspy_errors.LMBillingError,
                         dspy_errors.LMUnsupportedModelError, dspy_errors.LMNotConfiguredError]
    for module in ("openai", "anthropic"):
        try:
            sdk = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(sdk, name) for name in ("AuthenticationError", "PermissionDeniedError", "NotFoundError")
                  if isinstance(getattr(sdk, name, None), type)]
    return tuple(found)


def _is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is of a type that fails every call alike: decided by type."""
    fatal = _fatal_types()
    return any(isinstance(error, fatal) for error in (exc, exc.__cause__ or exc.__context__) if error is not None)


def run_async(coro):
    """Run ``coro`` to the end on a fresh event loop set up for many LLM calls in flight."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(dspy_tuning.LoopExecutor(thread_name_prefix="auto-evol"))
        dspy_tuning.run_dspy_inline(runner.get_loop())
        return runner.run(coro)
