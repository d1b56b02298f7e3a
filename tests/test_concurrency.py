"""--concurrency auto: the adaptive limit's rule, its asyncio gate, the HTTP engine under it, and an
evolve run against a rate-limited loopback server."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auto_evol.llm import concurrency
from auto_evol.llm.concurrency import AdaptiveLimit
from auto_evol.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def full_window(limit: AdaptiveLimit):
    """Start as many calls as the limit lets through now."""
    return [limit.start() for _ in range(limit.room())]


def round_trip(limit: AdaptiveLimit, clock: Clock, slots: list) -> list:
    """Every call of ``slots`` comes back well, each freed slot taken again at once (calls wait at the
    gate, so the limit binds); the calls started meanwhile are the next window."""
    window = []
    for slot in slots:
        clock.now += 0.01
        limit.success(slot)
        window += full_window(limit)
    return window


def test_slow_start_doubles_per_window_then_growth_is_one_per_window():
    clock = Clock()
    limit = AdaptiveLimit(initial=4, clock=clock)
    window = full_window(limit)
    for expected in (8, 16, 32):
        window = round_trip(limit, clock, window)
        assert limit.current == expected == len(window)
    # A throttle ends slow start; from then on a whole window of successes adds one.
    limit.throttle(window.pop())
    clock.now += 100                        # past the hold that follows the cut
    for slot in window:                     # started before the cut: they neither grow nor cut it
        limit.success(slot)
    after = limit.current
    window = round_trip(limit, clock, full_window(limit))
    assert limit.current == after + 1


def test_a_burst_of_429s_cuts_once_per_window_and_later_calls_cut_again():
    limit = AdaptiveLimit(initial=16, clock=Clock())
    window = full_window(limit)
    for slot in window:          # every call of the window throttled: one cut (halving out of slow start)
        limit.throttle(slot)
    assert limit.current == 8 and limit.epoch == 1
    later = full_window(limit)
    limit.throttle(later[0])     # a call started after the cut: cuts again, by a quarter
    assert limit.current == 6 and limit.epoch == 2
    for slot in later[1:]:
        limit.throttle(slot)
    assert limit.current == 6


def test_no_growth_when_the_limit_does_not_bind_or_the_call_started_before_a_cut():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    slot = limit.start()          # one call of eight allowed: the limit does not bind
    limit.success(slot)
    assert limit.limit == 8
    window = full_window(limit)
    limit.throttle(window[0])
    cut = limit.limit
    for slot in window[1:]:       # started before the cut: they neither grow nor cut it
        limit.success(slot)
    assert limit.limit == cut


def test_a_retry_after_stops_every_start_only_when_a_cut_did_not_help():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    window = round_trip(limit, clock, full_window(limit))   # successes: a round-trip time is known
    limit.throttle(window[0], retry_after=2.0)
    for slot in window[1:]:
        limit.success(slot)
    now = clock.now
    # The refused call waits its Retry-After itself (DSPy's retry); the others go on at the cut limit,
    # which stays under its ceiling for 16 round trips before it probes again.
    assert limit.paused_for() == 0 and limit.room() == limit.current > 0
    assert now < limit.held_until < now + 2.0
    # Refused again, for calls started after the cut and while held: a burst may do that once or twice
    # (no pause); refused a third time in a row: the cuts do not help, every start waits the Retry-After
    # out, and probing waits 20 x the Retry-After (each probe may cost a pause of every start).
    for _ in range(concurrency.STUBBORN - 1):
        limit.throttle(limit.start(), retry_after=2.0)
        assert limit.paused_for() == 0
    limit.throttle(limit.start(), retry_after=2.0)
    assert limit.room() == 0 and limit.paused_for() == pytest.approx(2.0)
    assert limit.held_until == pytest.approx(now + 2.0 / concurrency.PROBE_COST)
    clock.now += 1.99
    assert limit.room() == 0
    clock.now += 0.02
    assert limit.room() == limit.current > 0


def test_the_async_gate_starts_nothing_before_retry_after_and_then_resumes():
    async def scenario():
        limit = AdaptiveLimit(initial=8)            # room for three cuts above the minimum
        first, second = await limit.acquire(), await limit.acquire()
        limit.throttle(first, retry_after=0.3)      # a cut: the others go on
        limit.success(second)
        assert limit.paused_for() == 0
        for _ in range(concurrency.STUBBORN - 1):                # refused again while held: a burst, maybe
            limit.throttle(await limit.acquire(), retry_after=0.3)
            assert limit.paused_for() == 0
        third = await limit.acquire()
        throttled_at = time.monotonic()
        limit.throttle(third, retry_after=0.3)      # and again: the cuts do not help, everyone waits
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done()           # room, but paused
        slot = await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - throttled_at >= 0.29
        limit.success(slot)
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_the_gate_serves_waiters_in_order_and_a_cancelled_waiter_keeps_no_slot():
    async def scenario():
        limit = AdaptiveLimit(initial=1)
        held = await limit.acquire()
        order = []

        async def wait(name):
            slot = await limit.acquire()
            order.append(name)
            limit.failure(slot)

        first, cancelled, last = (asyncio.create_task(wait(n)) for n in ("first", "cancelled", "last"))
        await asyncio.sleep(0)
        cancelled.cancel()
        limit.failure(held)
        await asyncio.gather(first, last)
        assert order == ["first", "last"] and limit.in_flight == 0

    asyncio.run(scenario())


def test_bounds_hold():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, minimum=2, maximum=20, clock=clock)
    window = full_window(limit)
    for _ in range(10):
        window = round_trip(limit, clock, window)
    assert limit.current == 20
    for slot in window:
        limit.failure(slot)
    for _ in range(20):
        clock.now += 100
        limit.throttle(limit.start(), retry_after=0.5)
    assert limit.current == 2
    with pytest.raises(ValueError):
        AdaptiveLimit(minimum=0)


def test_a_cut_goes_no_higher_than_the_level_the_server_sustained():
    """A token bucket's burst lets slow start overshoot: the cut goes to what the server kept in
    flight (Little's law over the last round trips), not to half of the overshoot."""
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    limit.threshold = 8   # out of slow start
    # 10 calls of 0.1 s always in flight for 2 s: the server sustained ~10.
    for _ in range(20):
        slots = [limit.start() for _ in range(10)]
        clock.now += 0.1
        for slot in slots:
            limit.success(slot)
    limit.limit = 64.0
    limit.throttle(limit.start())
    assert limit.sustained() == pytest.approx(10, rel=0.15)
    assert limit.current <= 10 and limit.cap <= 11


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("12", 12), (3, 3)])
def test_parse_takes_auto_or_a_positive_number(value, expected):
    assert concurrency.parse(value) == expected


@pytest.mark.parametrize("value", ["0", "lots", -1, "2.5", True])
def test_parse_refuses_anything_else(value):
    with pytest.raises(UserError, match="--concurrency"):
        concurrency.parse(value)


@pytest.mark.parametrize("value, message", [("0", "at least 1"), ("lots", "auto or a whole number")])
def test_a_bad_concurrency_is_one_line_and_exit_2(tmp_path, value, message):
    (tmp_path / "s.jsonl").write_text('{"instruction": "Question number 1?"}\n')
    out = subprocess.run([sys.executable, "-m", "auto_evol", "evolve", "--data", "s.jsonl", "--out", "o.jsonl",
                          "--concurrency", value, "--no-track"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: --concurrency") and message in lines[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_the_progress_line_shows_the_live_concurrency():
    from rich.console import Console

    from auto_evol.cli.console import EvolveConsole
    from auto_evol.evolve import EvolveOptions

    level = [8]
    shown = EvolveConsole(Console(file=open("/dev/null", "w")))
    shown.start(EvolveOptions(data="x"), seeds=1, methods=[], concurrency=lambda: level[0])
    shown.phase("round 1", 10)
    level[0] = 13
    shown.advance("round 1")
    task = shown.progress.tasks[0]
    assert task.fields["live"] == "concurrency 13" and task.completed == 1
    shown.close(None)


class RateLimited:
    """benchmarks/fake_server.py with a rate limit, in a subprocess."""

    def __init__(self, *args: str) -> None:
        self.args = args

    def __enter__(self) -> str:
        ready = Path(self.folder) / "port"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fake_server.py"), *self.args,
                                      "--ready-file", str(ready), "--stats-file", str(Path(self.folder) / "stats")])
        deadline = time.time() + 20
        while not ready.exists() or not ready.read_text():
            assert time.time() < deadline, "the rate-limited server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{ready.read_text()}/v1"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()

    def counts(self) -> dict:
        return json.loads((Path(self.folder) / "stats").read_text())


def test_the_engine_turns_a_429_into_a_throttle_that_dspy_retries(tmp_path):
    from dspy import lm15
    from dspy.utils.exceptions import LMRateLimitError, is_retryable_lm_error

    from auto_evol.llm.http_engine import AsyncOpenAICompatEngine, OpenAICompatEngine

    request = lm15.Request(model="openai/fake", messages=(lm15.Message.user("Question number 1?"),),
                           config=lm15.Config(max_tokens=16))
    server = RateLimited("--latency", "0", "--rate", "1", "--burst", "1")
    server.folder = tmp_path

    async def scenario(base):
        gate = AdaptiveLimit(initial=4)
        engine = AsyncOpenAICompatEngine(OpenAICompatEngine(base, timeout=5), gate)
        try:
            await engine.complete(request)   # the bucket's one token
            with pytest.raises(lm15.RateLimitError) as caught:
                await engine.complete(request)
        finally:
            await engine.aclose()
        return gate, caught.value

    with server as base:
        gate, error = asyncio.run(scenario(base))
    # What DSPy's retry loop sees (its error boundary wraps the engine's error) is retried after 1 s.
    from dspy.clients.errors import wrap_error
    from dspy.clients.execution import _delay

    seen = wrap_error(error, model="openai/fake", provider=None)
    assert isinstance(seen, LMRateLimitError) and is_retryable_lm_error(seen) and _delay(seen, 0) == 1.0
    assert gate.successes == 1 and gate.throttles == 1 and gate.in_flight == 0
    # The first refusal cuts the limit; the refused call waits its Retry-After in DSPy's retry (above),
    # the other calls are not held (a cut that does not help holds them: see the tests above).
    assert gate.paused_for() == 0 and gate.epoch == 1


def test_evolve_auto_against_a_rate_limited_server_finishes_every_item_and_grows(tmp_path):
    from auto_evol.evolve import EvolveOptions, evolve
    from auto_evol.core.observer import Observer

    class Watch(Observer):
        def __init__(self) -> None:
            self.live, self.seen = None, []

        def start(self, options, *, concurrency=None, **_):
            self.live = concurrency

        def advance(self, name):
            self.seen.append(self.live())

    items = 240
    (tmp_path / "s.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "instruction": f"Question number {i}? Add the two prices.", "output": "4"}) + "\n"
        for i in range(items)))
    server = RateLimited("--latency", "0.05", "--rate", "300", "--retry-after", "seconds")
    server.folder = tmp_path
    watch = Watch()
    with server as base:
        started = time.monotonic()
        result = evolve(EvolveOptions(data=str(tmp_path / "s.jsonl"), out=str(tmp_path / "out.jsonl"), rounds=1,
                                      evol_model="openai/fake", api_base=base, cache_dir=None, track=False,
                                      max_error_rate=1.0), observers=[watch])
        seconds = time.monotonic() - started
    assert result.complete
    rejects = [json.loads(line) for line in open(result.rejects)]
    assert result.rounds[0].kept + len(rejects) == items          # every item done
    assert not [r for r in rejects if r["reason"] == "llm_error"]  # no call failed for good
    assert watch.live is not None and max(watch.seen) > concurrency.INITIAL
    counts = server.counts()
    assert counts.get("429", 0) > 0 and counts["ok"] >= items   # it met the limit, and got past it
    assert seconds < 30
