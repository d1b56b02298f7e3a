"""--concurrency auto: the adaptive limit's rule, its asyncio gate, the HTTP engine under it, and an
evolve run against a rate-limited loopback server."""
from __future__ import annotations

import asyncio
import json
import math
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


def test_slow_start_doubles_per_window_then_growth_is_about_one_per_window():
    clock = Clock()
    limit = AdaptiveLimit(initial=4, clock=clock)
    window = full_window(limit)
    for expected in (8, 16, 32):
        window = round_trip(limit, clock, window)
        assert limit.current == expected == len(window)
    # Refused with 32 in flight where nothing above 16 has come back yet: the window's fault. Slow start
    # ends at the level that worked, and no pace is set (the rate was not at fault).
    refused = window.pop()
    assert refused.level == 32 and limit.fit() == 16
    limit.throttle(refused)
    assert limit.current == 16 and limit.threshold == 16 and limit.pace == math.inf
    clock.now += 100                        # past the hold that follows the cut
    for slot in window:                     # started before the cut: they neither grow nor cut it
        limit.success(slot)
    after = limit.limit
    assert after == 16
    window = round_trip(limit, clock, full_window(limit))
    window = round_trip(limit, clock, window)
    assert limit.limit == pytest.approx(after + 2, abs=0.15)    # two windows of successes: about +2


def test_refusals_cut_once_per_round_trip():
    clock = Clock()
    limit = AdaptiveLimit(initial=16, clock=clock)
    window = full_window(limit)
    for slot in window:          # every call refused and none answered: one cut (slow start halved)
        limit.throttle(slot)
    assert limit.current == 8 and limit.epoch == 1
    later = full_window(limit)
    limit.throttle(later[0])     # sent after the cut, but refused within the same instant: no new cut
    assert limit.epoch == 1
    clock.now += concurrency.COLD_TRIP * 1.01            # a call sent after the cut and refused a round trip later cuts again
    limit.throttle(later[1])
    assert limit.epoch == 2 and limit.current == 4


def rate_bound(limit: AdaptiveLimit, clock: Clock, seconds: float, level: int = 4, latency: float = 0.05):
    """``level`` calls of ``latency`` always in flight for ``seconds``: all answered well."""
    for _ in range(int(seconds / latency)):
        slots = [limit.start() for _ in range(level)]
        clock.now += latency
        for slot in slots:
            limit.success(slot)


def test_a_refusal_at_a_level_that_worked_sets_a_pace_and_the_pace_spaces_the_starts():
    clock = Clock()
    limit = AdaptiveLimit(initial=64, clock=clock)
    rate_bound(limit, clock, 2.0)                # 4 in flight at 50 ms: 80 answered calls a second
    assert limit.taken()[0] == pytest.approx(80, rel=0.05)
    limit.throttle(limit.start())                # one call, at level 1: the rate refused it
    assert limit.current == 64                   # the window stays
    assert limit.pace == pytest.approx(40, rel=0.05)    # a cold start's first pace: half the rate taken
    # The pace lets a burst of 2% of a second go (at least one call), then one call per 1/pace.
    clock.now += 1.0
    assert limit.room() == 1
    limit.start()
    assert limit.room() == 0
    clock.now += 1.01 / limit.pace
    assert limit.room() == 1
    # Refused again a round trip later, at the same level, the pace near the rate taken: 95% of it.
    clock.now += 0.1
    pace = limit.pace
    limit.throttle(limit.start())
    assert limit.pace == pytest.approx(pace * concurrency.PACE_CUT)


def test_a_spent_window_of_the_clock_pauses_every_start_for_its_retry_after():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    rate_bound(limit, clock, 1.0)                # 80 answered in the last second
    clock.now += 0.2
    # A fixed window's count used up: every call sent is refused, none answered. The refusals beyond
    # the first do not cut again, but once a round trip's worth of calls (4 at least) are all refused,
    # every start waits for the Retry-After, and the pace is no more than the last second took.
    limit.throttle(limit.start(), retry_after=0.7)    # the first: a cut
    assert limit.room() > 0
    for _ in range(concurrency.EXHAUSTED):
        limit.throttle(limit.start(), retry_after=0.7)
    assert limit.room() == 0 and limit.paused_for() == pytest.approx(0.7)
    assert limit.pace <= 80 * concurrency.PACE_CUT + 1e-9
    clock.now += 0.69
    assert limit.room() == 0
    clock.now += 0.02
    assert limit.room() > 0


def test_without_a_retry_after_the_pause_is_a_round_trip_doubling_to_a_second():
    clock = Clock()
    limit = AdaptiveLimit(initial=8, clock=clock)
    rate_bound(limit, clock, 1.0)
    pauses = []
    for _ in range(8):
        clock.now += 2.0                         # the pause and more went by; nothing answered
        for _ in range(1 + concurrency.EXHAUSTED):    # a cut, then a round trip's worth refused
            limit.throttle(limit.start())
        pauses.append(round(limit.paused_for(), 3))
    assert pauses[0] == pytest.approx(0.05) and pauses[1] == pytest.approx(0.1)
    assert pauses[-1] == concurrency.BLIND_PAUSE and pauses == sorted(pauses)
    limit.success(limit.start())                 # answered again: the next pause starts short again
    clock.now += 2.0
    for _ in range(1 + concurrency.EXHAUSTED):
        limit.throttle(limit.start())
    assert limit.paused_for() < 0.2


def test_the_async_gate_starts_nothing_before_retry_after_and_then_resumes():
    async def scenario():
        limit = AdaptiveLimit(initial=8)
        limit.throttle(await limit.acquire(), retry_after=0.3)        # a cut
        refused = [await limit.acquire() for _ in range(concurrency.EXHAUSTED)]
        for slot in refused:                     # all refused since, none answered: every start waits
            limit.throttle(slot, retry_after=0.3)
        throttled_at = time.monotonic()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done()                 # paused
        slot = await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - throttled_at >= 0.29
        limit.success(slot)
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_a_refused_call_keeps_its_place_in_the_window_for_a_round_trip():
    """Refusals come back at once: a place freed at once would be refused again at once."""
    async def scenario():
        limit = AdaptiveLimit(initial=4)
        for _ in range(3):                       # a round trip of 50 ms is known
            slot = await limit.acquire()
            await asyncio.sleep(0.05)
            limit.success(slot)
        slot = await limit.acquire()
        limit.throttle(slot)
        assert limit.in_flight == 1              # still counted
        await asyncio.sleep(0.08)
        assert limit.in_flight == 0              # freed once its round trip went by

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


def test_the_engine_waits_out_a_429_itself_and_spends_no_retry(tmp_path):
    from dspy import lm15

    from auto_evol.llm.http_engine import AsyncOpenAICompatEngine, OpenAICompatEngine

    request = lm15.Request(model="openai/fake", messages=(lm15.Message.user("Question number 1?"),),
                           config=lm15.Config(max_tokens=16))
    server = RateLimited("--latency", "0", "--rate", "2", "--burst", "1")
    server.folder = tmp_path
    seen = []

    async def scenario(base):
        gate = AdaptiveLimit(initial=4)
        engine = AsyncOpenAICompatEngine(OpenAICompatEngine(base, timeout=5), gate)

        async def watch():
            while True:
                seen.append(gate.waiting)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            replies = [await engine.complete(request) for _ in range(3)]   # the bucket's one token, then 2/s
        finally:
            watcher.cancel()
            await engine.aclose()
        return gate, replies

    with server as base:
        started = time.monotonic()
        gate, replies = asyncio.run(scenario(base))
        seconds = time.monotonic() - started
    # No error reached the caller (DSPy's retries): every call came back with its reply, the refusals
    # waited out inside the engine, each counted as waiting while it waited.
    assert len(replies) == 3 and all(r.message.text for r in replies)
    assert gate.successes == 3 and gate.throttles >= 1 and gate.in_flight == 0 and gate.waiting == 0
    assert max(seen) >= 1 and seconds < 10
    assert server.counts()["429"] == gate.throttles


def test_a_503_is_a_limit_only_while_the_server_answers_or_names_a_retry_after(tmp_path, monkeypatch):
    """A 503 from a server that answers nothing is an outage: DSPy's retries and the run's outage rule
    decide (a limit's wait would hold a dead server's calls for a quarter of an hour)."""
    from dspy import lm15

    from auto_evol.llm import http_engine
    from auto_evol.llm.http_engine import AsyncOpenAICompatEngine, OpenAICompatEngine

    gate = AdaptiveLimit(initial=4)
    engine = AsyncOpenAICompatEngine(OpenAICompatEngine("http://127.0.0.1:9/v1", timeout=5), gate)
    replies = iter([(503, "busy", None)])

    async def attempt(request):
        return next(replies)

    monkeypatch.setattr(engine, "_attempt", attempt)
    request = lm15.Request(model="openai/fake", messages=(lm15.Message.user("Q?"),), config=lm15.Config())
    with pytest.raises(lm15.ServerError):
        asyncio.run(engine.complete(request))
    # The same 503 while other calls come back well is the limit's: waited out, then answered.
    gate.success(gate.start())
    ok = json.dumps({"choices": [{"message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    replies = iter([(503, "busy", None), (503, "busy", 0.01), (200, ok, None)])
    reply = asyncio.run(engine.complete(request))
    assert reply.message.text == "4"
    # Refused for longer than MAX_REFUSED: the call is given up to DSPy's retries after all.
    monkeypatch.setattr(http_engine, "MAX_REFUSED", 0.05)
    replies = iter([(429, "slow down", 0.03)] * 10)
    with pytest.raises(lm15.RateLimitError):
        asyncio.run(engine.complete(request))


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
