"""How many LLM calls to keep in flight, and how fast to start them, when the provider's limit is
unknown (``--concurrency auto``).

An ``AdaptiveLimit`` gates every HTTP attempt to one server and model and moves by what comes back.
Servers and gateways limit in two ways, and one knob cannot serve both:

- calls in flight (a local server's slots, a proxy's connection cap): a *window* of calls in flight,
  clocked by completions, keeps every slot busy; the rule is TCP's (slow start from ``initial``,
  doubling per round trip until the first refusal, then one more call per round trip);
- requests per second (token buckets, fixed windows of the clock, sliding windows): a *pace* of starts
  a second, even and fine-grained. A window cannot do it: at 200/s and 50 ms, 10 calls in flight give
  182/s and 11 give 200/s, a 10% step, and a fixed window refuses the whole rest of its second once the
  count is used up (the window rule held 0.75 of such a limit, 0.62 without Retry-After).

Which limit refused is read from the refused call: sent with more calls in flight than any call that
came back well in the last two seconds, the window is at fault (it goes back to that level and stays
under it for 4 round trips); sent at a level that worked, the rate is. Then the pace goes to 95% of the
pace (or, when the server took far less, of the rate it took: answered calls over the last second);
a cold start's first pace is half the rate its last round trips took. The pace grows while calls wait
for it: 4% a second near the pace of the last refusal, 100% a second below 0.85 of it. At most one cut
per round trip, and only by calls sent after the last cut: a burst of refusals answers one excess.

A refused call is not a failed call: llm/http_engine.py sends it again itself, after its Retry-After
or ``retry_wait``, without spending one of DSPy's retries, and keeps its place in the window for a
round trip. Every start is held when cuts do not help: a round trip's worth of calls sent since the
last cut all refused and none answered (a fixed window's count spent: the pace then goes to 95% of what
the last second took), three refused round trips in a row while held, or refusals at the minimum;
for the Retry-After (60 s at most), or without one for a round trip doubling per further pause (1 s
at most).

Measured against the loopback limiters of benchmarks/ratelimit_bench.py (200/s or 10 in flight, 50 ms,
4,000 calls from a cold start, figures in its docstring and issue 26's note).

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
GROWTH = 0.05          # out of slow start the window grows by 1, or by this share if more, per round trip
HOLD_TRIPS = 16        # after a cut, no probe for this many round trips
MAX_PAUSE = 60.0       # a longer Retry-After holds new starts this long (the OpenAI SDK's bound too)
BLIND_PAUSE = 1.0      # the longest hold of every start when the refusals name no Retry-After
EXHAUSTED = 4          # calls in a row refused, none answered, that say the server takes nothing now
STUBBORN = 3           # refused in this many round trips in a row while held: hold every start
PACE_CUT = 0.95        # the pace after a refusal, as a share of the rate the server took
PACE_NEAR = 0.04       # growth of the pace a second from 0.85 of the pace of the last refusal
PACE_FAST = 1.0        # growth a second below it, or before a whole second was measured
PACE_BURST = 0.02      # seconds of starts the pace lets go at once
RATE_SPAN = 1.0        # seconds the server's rate is measured over (a fixed window's whole second)
COLD_TRIP = 0.1       # the round trip assumed between cuts before any call came back
FIT_SPAN = 2.0         # seconds over which the levels of calls in flight that worked are remembered
_KEPT = 4096           # successes remembered for the measures


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
    """One attempt let through the gate: when it started, how many cuts came before it, and how many
    calls were in flight once it had started (itself included)."""
    started: float
    epoch: int
    level: int = 0


class AdaptiveLimit:
    def __init__(self, initial: int = INITIAL, minimum: int = 1, maximum: int = MAXIMUM, *,
                 clock=time.monotonic) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum, self.maximum, self.clock = minimum, maximum, clock
        self.limit = float(min(max(initial, minimum), maximum))   # the window: calls in flight
        self.threshold = math.inf      # slow start below it; set at the first refusal
        self.pace = math.inf           # starts a second; set at the first refusal of the rate
        self.best: float | None = None  # the pace of the last refusal of the rate (fading by 10% a cut)
        self.epoch = 0                 # cuts so far
        self.cut_at = -math.inf
        self.in_flight = 0
        self.waiting = 0               # refused calls waiting to be sent again (the engine counts them)
        self.paused_until = -math.inf  # no new start before (Retry-After)
        self.held_until = -math.inf    # no probing before (set at each cut)
        self.cap = math.inf            # the window's ceiling while held
        self.successes = self.throttles = 0
        self.strikes = 0               # round trips in a row refused while held
        self.first_start: float | None = None
        self._done: deque[tuple[float, float, int]] = deque(maxlen=_KEPT)   # (end, latency, level)
        self._sent = self._refused = 0   # calls sent and refused since the last cut or pause
        self._blind = 0                  # pauses without a Retry-After since the last success
        self._tokens = 1.0
        self._tokens_at = self._paced_at = 0.0
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

    def _refill(self, now: float) -> float:
        burst = max(1.0, self.pace * PACE_BURST)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self.pace)
        self._tokens_at = now
        return self._tokens

    def room(self) -> int:
        """How many more calls may start now."""
        if self.paused_until > -math.inf and self.paused_for() > 0:
            return 0
        window = max(0, self.current - self.in_flight)
        if window == 0 or self.pace == math.inf:
            return window
        return max(0, min(window, int(self._refill(self.clock()))))

    def _next_token(self) -> float:
        """Seconds until the pace lets the next call start."""
        return max(0.0, (1.0 - self._tokens) / self.pace) if self.pace < math.inf else 0.0

    def start(self) -> Slot:
        """Count a call as started (the caller checked ``room``)."""
        self.in_flight += 1
        now = self.clock()
        if self.first_start is None:
            self.first_start = now
        if self.pace < math.inf:
            self._refill(now)
            self._tokens -= 1.0
        self._sent += 1
        return Slot(now, self.epoch, self.in_flight)

    def success(self, slot: Slot) -> None:
        """The call came back well."""
        now = self.clock()
        self.successes += 1
        self._blind = 0
        self._done.append((now, now - slot.started, slot.level))
        full = self.in_flight + (len(self._waiters) if self.pace == math.inf else 0) >= self.current
        self.in_flight -= 1
        if now >= self.held_until:   # a hold went by without a refusal: the cuts helped
            self.strikes = 0
        if slot.epoch == self.epoch:
            if full:                  # the window binds: slow start doubles it per round trip, then +1
                grown = self.limit + (1.0 if self.limit < self.threshold else max(1.0 / self.limit, GROWTH))
                if now < self.held_until:
                    grown = min(grown, max(self.limit, self.cap))
                self.limit = min(float(self.maximum), grown)
            elif self.pace < math.inf and self._waiters and now >= self.held_until:   # the pace binds
                near = self.best is not None and self.pace >= 0.85 * self.best
                rate = PACE_NEAR if near else PACE_FAST
                self.pace *= 1.0 + rate * min(self._trip(), max(0.0, now - self._paced_at))
        self._paced_at = now
        self._wake()

    def throttle(self, slot: Slot, retry_after: float | None = None) -> None:
        """The server refused the call (429, or 503 of a limit); ``retry_after``: for how long, in
        seconds, if it said."""
        now = self.clock()
        self.throttles += 1
        trip = self._trip()
        self._release_later(max(0.0, slot.started + trip - now))
        gap = trip or COLD_TRIP
        # The first refusal of a call sent since the last cut, one round trip after it at the soonest.
        fresh = slot.epoch == self.epoch and now - self.cut_at >= gap
        if fresh:
            self.strikes = self.strikes + 1 if now < self.held_until else 0
            self._cut(slot, now)
        if slot.epoch == self.epoch:
            self._refused += 1
        # Every start is held when the cuts do not help (refused while held, three round trips in a row),
        # at the minimum, or when the server takes nothing now: a round trip's worth of calls sent since
        # the last cut or pause (4 at least) were all refused and none waits for its answer (a fixed
        # window's count used up; a token bucket over its rate refuses some and answers others; a fixed
        # window refuses the last milliseconds of its second after a probe, fewer calls, and answers
        # again at once). Refusals come back at once: in slow start each freed slot was refused again,
        # 290 in the first half second, until the rule saw it.
        trip_calls = min(self.current, self.pace * trip) if self.pace < math.inf else EXHAUSTED
        exhausted = self._refused >= max(EXHAUSTED, trip_calls) and self._refused == self._sent
        stubborn = (fresh and (self.strikes >= STUBBORN or self.current <= self.minimum)) or exhausted
        if exhausted:
            # Nothing taken: the pace is no more than what the last whole second took (a fixed window's
            # count comes at once: the rate of its last round trips was twice too much or more).
            second = sum(1 for end, _, _ in self._done if end > now - RATE_SPAN) / RATE_SPAN
            if second > 0:
                self.pace = max(0.1, min(self.pace, second * PACE_CUT))
                self.best = second if self.best is None else min(self.best, max(second, self.pace))
                self._tokens = min(self._tokens, 1.0)
        if stubborn:
            if retry_after is not None and retry_after > 0:
                pause = min(retry_after, MAX_PAUSE)
            else:   # no word on how long: a round trip, doubling while nothing is answered in between
                pause = min(BLIND_PAUSE, max(trip, 0.01) * 2 ** self._blind)
                self._blind += 1
            if now + pause > self.paused_until:
                self.paused_until = now + pause
                self._schedule_wake(pause)
            self._sent = self._refused = 0
        self._wake()

    def _cut(self, slot: Slot, now: float) -> None:
        fit = self.fit(now)
        hold = HOLD_TRIPS
        if fit is None:                       # nothing came back yet: slow start ends, halved
            self.limit = max(float(self.minimum), self.limit / 2)
            self.cap, hold = self.limit, HOLD_TRIPS // 4
        elif slot.level > fit:                # more in flight than ever worked: the window's fault
            self.limit = max(float(self.minimum), min(self.limit, float(fit)))
            self.cap, hold = self.limit, HOLD_TRIPS // 4
        else:                                 # a level that worked: the rate's
            taken, _ = self.taken(now)
            if self.pace == math.inf:
                # A cold start's first pace: half the rate its last round trips took (slow start's
                # halving: that rate was reached by doubling).
                base = taken * 0.5 / PACE_CUT if taken is not None else math.inf
            elif taken and taken < 0.7 * self.pace:
                base = taken                  # a pace far above what the server takes (none answered
                # in the span says nothing of its rate: a spent window of the clock; the rule below)
                if now >= self.held_until:
                    self.best = max(taken, (self.best or 0.0) * 0.9)
            else:
                base = self.pace
                # The pace of this refusal, an upper bound of the server's rate: the slow growth starts
                # under it. It fades by 10% a probe, so a server that allows less is followed; the cuts
                # that follow within the hold (a bucket's debt) leave it.
                if now >= self.held_until or self.best is None:
                    self.best = max(self.pace, (self.best or 0.0) * 0.9)
            if base < math.inf:
                self.pace = max(0.1, base * PACE_CUT)
                self._tokens = min(self._tokens, 1.0)
        self.threshold = min(self.threshold, self.limit)
        self.held_until = max(self.held_until, now + hold * self._trip())
        self.epoch += 1
        self.cut_at = now
        self._sent = self._refused = 0

    def _release_later(self, delay: float) -> None:
        """A refused call keeps its place in the window until a round trip after it was sent, as a lost
        packet does in TCP: refusals come back at once, and a freed place taken again at once was
        refused again at once (168 refusals in 60 ms at a cold start's window of 64). Outside an event
        loop (the rule's tests) it is freed at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or delay <= 0:
            self.in_flight -= 1
            return

        def release() -> None:
            self.in_flight -= 1
            self._wake()

        loop.call_later(delay, release)

    def failure(self, slot: Slot) -> None:
        """Any other end (an error that is no refusal, a cancelled call): the limit stays."""
        self.in_flight -= 1
        self._wake()

    def fit(self, now: float | None = None) -> int | None:
        """The most calls in flight under which a call came back well in the last ``FIT_SPAN`` s."""
        now = self.clock() if now is None else now
        best = None
        for end, _, level in reversed(self._done):
            if end < now - FIT_SPAN:
                break
            best = level if best is None else max(best, level)
        return best

    def taken(self, now: float | None = None) -> tuple[float | None, float]:
        """(calls a second the server answered well over the last ``RATE_SPAN`` s, or since the first
        start or the last pause when shorter, two round trips at least; that span). None before any."""
        if not self._done:
            return None, 0.0
        now = self.clock() if now is None else now
        # Since the first start or the end of the last pause of every start (a pause is ours, not the
        # server's rate).
        since = max(self.first_start or now, self.paused_until)
        span = min(RATE_SPAN, max(now - since, 2 * self._trip()))
        if span <= 0:
            return None, 0.0
        count = 0
        for end, _, _ in reversed(self._done):
            if end <= now - span:
                break
            count += 1
        return count / span, span

    def answering(self, now: float | None = None) -> bool:
        """Whether a call came back well lately (a 503 then is a limit's, not an outage's)."""
        if not self._done:
            return False
        now = self.clock() if now is None else now
        return now - self._done[-1][0] <= max(2.0, 4 * self._trip())

    def retry_wait(self, refusals: int) -> float:
        """How long a call refused ``refusals`` times in a row without a Retry-After waits before it is
        sent again (through the gate): a round trip or a pace's interval, doubling, 2 s at most."""
        base = max(self._trip(), 1.0 / self.pace if self.pace < math.inf else 0.0, 0.01)
        return min(2.0, base * 2 ** max(0, refusals - 1))

    def _trip(self) -> float:
        """The mean latency of the last 64 successes (0 before any)."""
        if not self._done:
            return 0.0
        n = min(64, len(self._done))
        return sum(self._done[-i - 1][1] for i in range(n)) / n

    # --- the asyncio gate -------------------------------------------------------------------------
    async def acquire(self) -> Slot:
        """Wait for room (first come, first served), then start."""
        if not self._waiters and self.room() > 0:
            return self.start()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake()
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
        if not self._waiters:
            return
        room = self.room()
        while room > 0 and self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(self.start())
                room = self.room()
        if self._waiters:   # held by a pause or by the pace: wake them when it lets the next one go
            delay = self.paused_for() or (self._next_token() if self.in_flight < self.current else 0.0)
            if delay > 0:
                self._schedule_wake(delay)

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

    def line() -> str:
        text = f"{sum(x.in_flight for x in limits)} in flight, limit {sum(_current(x) for x in limits)}"
        waiting = sum(getattr(x, "waiting", 0) for x in limits)
        if waiting or any(getattr(x, "paused_for", lambda: 0)() for x in limits):
            text += f", waiting for the server's limit ({waiting} refused)"
        return text
    return line


def _current(limit) -> int:
    return limit.current if isinstance(limit.current, int) else limit.current()
