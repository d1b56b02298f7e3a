"""How many LLM calls to keep in flight when the provider's limit is unknown (``--concurrency auto``).

An ``AdaptiveLimit`` gates every HTTP attempt to one server and model (DSPy's retries included) and
moves its limit by what comes back. The rule is TCP's (slow start, then additive increase and
multiplicative decrease), with what a rate limit needs on top:

- slow start: from ``initial`` (8), each success of a call started while the limit binds adds one,
  so the limit doubles per round trip, until the first throttle (HTTP 429 or 503);
- then growth by one per round trip (1/limit per success), or by 5% per round trip once that is
  more (past 20), so a limit of hundreds on slow LLM calls is found in tens of round trips;
- a throttle cuts the limit at most once per window: only a call started after the last cut can cut
  it again, so a burst of 429s answers one excess, not many (and only such calls make it grow). The
  cut is to 3/4 (1/2 at the end of slow start, as in TCP), and no higher than what the server just
  sustained: the successes' summed latency over the last (up to 16) round trips of steady sending
  divided by that span (Little's law). A token bucket's burst lets slow start run far past the
  limit before the first 429; the measured level brings it back in one cut instead of several;
- after a cut the limit stays under a ceiling (one under the throttled limit, and not above the
  measured level rounded up; one lower again if it is throttled there) for 16 round trips, or for
  20 x the Retry-After when that is longer, then probes upward again. Probing provokes the next
  429, and an honoured Retry-After stops every start: spacing the probes keeps those pauses under
  ~5% of the time (``PROBE_COST``). A server that answers "Retry-After: 1" at 200 calls/s would
  otherwise stop the run for a second every few round trips;
- a Retry-After is waited out by the throttled call itself (DSPy's retry); it holds every new start
  too (60 s at most; calls in flight go on) only when the cuts do not help: refused three times in a
  row while held, or at the minimum. Holding every start on each 429 cost a token bucket with
  "Retry-After: 1" a second per probe (0.81 of its rate); holding after two refusals in a row still
  0.88-0.92 (a burst draws two now and then), after three 0.944-0.953 with 1% refused;
- the limit grows only while it binds (calls wait at the gate), so a phase that feeds fewer calls
  than the limit does not inflate it. Bounds: ``minimum`` .. ``maximum`` (1 .. 512).

Why these parts (a discrete-event simulation of a 200/s token bucket at 50 ms, 5,000 calls): plain
AIMD halving on each throttle reached 0.88 of the rate with 2.4% of attempts refused; cutting to 3/4
instead, 0.99 with 2.9%; with the hold, 0.98 with 0.9%. With "Retry-After: 1" honoured, AIMD without
the hold reached 0.2-0.28 of the rate, one stop every few round trips. Against the real loopback
server (benchmarks/ratelimit_bench.py) auto reached 0.93 of the rate with 1% refused, the best fixed
number picked by hand 0.96 with 0.7%.

Pure bookkeeping plus an asyncio gate: no I/O, and no clock but the one passed in (tests pass
theirs). One limit is used from one event loop at a time (evolve runs one loop per phase, in turn).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

AUTO = "auto"
MAXIMUM = 512          # calls in flight at most under auto (also the connection pool's size then)
INITIAL = 8            # where a cold start begins
BACKOFF = 0.75         # the limit after a throttle, as a share of the limit before it (at most)
GROWTH = 0.05          # out of slow start the limit grows by 1, or by this share if more, per round trip
HOLD_TRIPS = 16        # after a cut the limit stays under its ceiling for this many round trips, or for
PROBE_COST = 0.05      # Retry-After / PROBE_COST seconds if longer: probes' pauses cost at most ~5%
MAX_PAUSE = 60.0       # a longer Retry-After holds new starts this long (the OpenAI SDK's bound too)
STUBBORN = 3           # refusals in a row while held that make a Retry-After hold every start
_SPAN_TRIPS = 16       # the measured level spans at most this many mean round trips
_KEPT = 4096           # successes remembered for the measure


def parse(value) -> str | int:
    """``--concurrency``: "auto" or a whole number of calls, at least 1 (UserError otherwise)."""
    from ..core.errors import UserError

    if isinstance(value, bool):
        raise UserError(f"--concurrency must be auto or a whole number of calls, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if text == AUTO:
            return AUTO
        try:
            number = int(text)
        except ValueError:
            raise UserError(f"--concurrency must be auto or a whole number of calls (at least 1), "
                            f"got {value!r}") from None
    if number < 1:
        raise UserError(f"--concurrency must be auto or at least 1, got {number}")
    return number


@dataclass(frozen=True)
class Slot:
    """One attempt let through the gate: when it started, and how many cuts came before it."""
    started: float
    epoch: int


class AdaptiveLimit:
    def __init__(self, initial: int = INITIAL, minimum: int = 1, maximum: int = MAXIMUM, *,
                 backoff: float = BACKOFF, clock=time.monotonic) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        if not 0 < backoff < 1:
            raise ValueError("need 0 < backoff < 1")
        self.minimum, self.maximum, self.backoff, self.clock = minimum, maximum, backoff, clock
        self.limit = float(min(max(initial, minimum), maximum))
        self.threshold = math.inf      # slow start below it; set at the first throttle
        self.epoch = 0                 # cuts so far
        self.in_flight = 0
        self.paused_until = -math.inf  # no new start before (Retry-After)
        self.held_until = -math.inf    # no growth past ``cap`` before (set at each cut)
        self.cap = math.inf
        self.successes = self.throttles = 0
        self.strikes = 0               # refusals in a row, each while held after the cut before it
        self.first_start: float | None = None
        self._done: deque[tuple[float, float]] = deque(maxlen=_KEPT)   # (end, latency) of successes
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    # --- the rule -------------------------------------------------------------------------------
    @property
    def current(self) -> int:
        """Calls that may be in flight now."""
        return max(self.minimum, min(self.maximum, int(self.limit)))

    def paused_for(self) -> float:
        """Seconds until new starts are allowed again (0 when they are)."""
        return max(0.0, self.paused_until - self.clock())

    def room(self) -> int:
        """How many more calls may start now."""
        if self.paused_until > -math.inf and self.paused_for() > 0:
            return 0
        return max(0, self.current - self.in_flight)

    def start(self) -> Slot:
        """Count a call as started (the caller checked ``room``)."""
        self.in_flight += 1
        now = self.clock()
        if self.first_start is None:
            self.first_start = now
        return Slot(now, self.epoch)

    def success(self, slot: Slot) -> None:
        """The call came back well."""
        now = self.clock()
        self.successes += 1
        self._done.append((now, now - slot.started))
        binding = self.in_flight + len(self._waiters) >= self.current
        self.in_flight -= 1
        if now >= self.held_until:   # a hold went by without a refusal: the cuts helped
            self.strikes = 0
        if slot.epoch == self.epoch and binding:
            if self.limit < self.threshold:        # slow start: doubles per round trip
                grown = self.limit + 1.0
            else:                                  # one call or 1/20 more per round trip
                grown = self.limit + max(1.0 / self.limit, GROWTH)
                if now < self.held_until:
                    grown = min(grown, max(self.limit, self.cap))
            self.limit = min(float(self.maximum), grown)
        self._wake()

    def throttle(self, slot: Slot, retry_after: float | None = None) -> None:
        """The server said slow down (429, 503); ``retry_after``: for how long, in seconds, if it said."""
        now = self.clock()
        self.throttles += 1
        self.in_flight -= 1
        pause = min(retry_after, MAX_PAUSE) if retry_after is not None and retry_after > 0 else 0.0
        # The refused call honours its Retry-After itself (DSPy waits it out before the retry). Every
        # new start waits it out too only when cuts did not help: calls started after the last cut
        # were refused three times in a row while the limit was held, or it is at its minimum. Pausing all
        # starts on every 429 cost a token-bucket server's whole second per probe: 0.81 of its rate
        # instead of 0.93 (benchmarks/ratelimit_bench.py, "Retry-After: 1" at 200 calls/s).
        if slot.epoch == self.epoch:
            # Refusals of calls started since the last cut, while the limit is held under its ceiling:
            # a token bucket's bursts draw one or two such refusals now and then (not stubborn); a
            # third in a row says the cuts do not help.
            self.strikes = self.strikes + 1 if now < self.held_until else 0
        stubborn = slot.epoch == self.epoch and (self.strikes >= STUBBORN or self.limit <= self.minimum)
        if slot.epoch == self.epoch:   # the first throttle of a call started since the last cut
            level = self.sustained(now)
            before = self.limit
            starting = before < self.threshold
            # Out of slow start the limit halves (the level a round trip ago got through), as in TCP.
            cut = before * (0.5 if starting else self.backoff)
            if level is not None:
                cut = min(cut, level)
            # The ceiling held for a while: one under the throttled limit, and not above the level the
            # server sustained (not known in slow start, where the measure spans the climb); one lower
            # again when the limit was throttled while held under it.
            ceiling = before - 1.0
            if level is not None and not starting:
                ceiling = min(ceiling, math.ceil(level))
            if now < self.held_until:
                ceiling = min(ceiling, self.cap - 1.0)
            self.cap = max(float(self.minimum), ceiling)
            # Probes are spaced by 16 round trips, or by 20 x a Retry-After that stops every start.
            self.held_until = now + max(pause / PROBE_COST if stubborn else 0.0, HOLD_TRIPS * self._trip())
            self.limit = min(float(self.maximum), max(float(self.minimum), min(cut, self.cap)))
            self.threshold = self.limit
            self.epoch += 1
        if pause and stubborn and now + pause > self.paused_until:
            self.paused_until = now + pause
            self._schedule_wake(pause)
        self._wake()

    def failure(self, slot: Slot) -> None:
        """Any other end (an error that is no throttle, a cancelled call): the limit stays."""
        self.in_flight -= 1
        self._wake()

    def sustained(self, now: float | None = None) -> float | None:
        """Calls the server kept in flight, on average, since sending last became steady (one round
        trip after the first start or the last pause), over at most ``_SPAN_TRIPS`` round trips: the
        summed latency of the successes that ended in that span over its length (Little's law).
        None when that span is under two round trips: the measure would fall short."""
        if not self._done:
            return None
        now = self.clock() if now is None else now
        trip = self._trip()
        since = max(max(self.first_start or 0.0, self.paused_until) + trip, now - _SPAN_TRIPS * trip)
        if trip <= 0 or now - since < 2 * trip:
            return None
        busy = 0.0
        for end, latency in reversed(self._done):
            if end <= since:
                break
            busy += latency
        return busy / (now - since)

    def _trip(self) -> float:
        """The mean latency of the last 64 successes (0 before any)."""
        if not self._done:
            return 0.0
        recent = list(self._done)[-64:]
        return sum(latency for _, latency in recent) / len(recent)

    # --- the asyncio gate -------------------------------------------------------------------------
    async def acquire(self) -> Slot:
        """Wait for room (first come, first served), then start."""
        if not self._waiters and self.room() > 0:
            return self.start()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self.paused_for() > 0:
            self._schedule_wake(self.paused_for())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():   # handed a slot just as it was cancelled
                self.failure(future.result())
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise

    def _wake(self) -> None:
        room = self.room() if self._waiters else 0
        while room > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(self.start())
                room -= 1

    def _schedule_wake(self, delay: float) -> None:
        """Wake the waiters once a pause has passed (on the running loop; none outside one)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            if self._timer[0] is loop and self._timer[1].when() <= loop.time() + delay:
                return   # one is set for sooner: it sets the next when it finds the pause longer
            self._timer[1].cancel()

        def fire() -> None:
            self._timer = None
            if self.paused_for() > 0:
                self._schedule_wake(self.paused_for())
            else:
                self._wake()

        self._timer = (loop, loop.call_later(delay, fire))


# Calls in flight under --concurrency auto where no adaptive limit applies: a DSPy/LiteLLM provider (its
# own retries honour Retry-After; hosted APIs take tens to hundreds of calls at once) and an in-process
# GGUF model (it decodes this many sequences together: more would only queue in its engine).
PROVIDER_CALLS = 64
GGUF_CALLS = 8


class CallSlots:
    """At most ``size`` async calls in flight, shared by every role on one server and model: a fixed
    ``--concurrency N``, or under auto the fixed number of a backend with no adaptive limit. Calls on
    any event loop may pass it: an asyncio.Semaphore belongs to the loop it first waits on, and evolve
    runs a loop per phase, so it keeps one per running loop."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_flight = 0
        self._semaphores: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        held = self._semaphores.get(id(loop))
        if held is None or held[0] is not loop:
            self._semaphores = {k: v for k, v in self._semaphores.items() if not v[0].is_closed()}
            held = self._semaphores[id(loop)] = (loop, asyncio.Semaphore(self.size))
        return held[1]

    def current(self) -> int:
        """Calls that may be in flight now (as AdaptiveLimit.current)."""
        return self.size

    async def __aenter__(self) -> "CallSlots":
        await self._semaphore().acquire()
        self.in_flight += 1
        return self

    async def __aexit__(self, *exc) -> None:
        self.in_flight -= 1
        self._semaphore().release()


def in_flight(*llms) -> Callable[[], str] | None:
    """For a progress line: the calls in flight now over the limits the roles pass, and those limits'
    sum ("12 in flight, limit 64"); None when no role has a limit on its async calls."""
    limits = list({id(x): x for llm in llms for x in (getattr(llm, "gate", None), getattr(llm, "slots", None))
                   if x is not None}.values())
    if not limits:
        return None
    return lambda: f"{sum(x.in_flight for x in limits)} in flight, limit {sum(x.current() for x in limits)}"
