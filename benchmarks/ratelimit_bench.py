"""`auto-evol evolve` against a rate-limited loopback server: --concurrency auto from a cold start,
beside fixed concurrencies that are too high and too low.

    python benchmarks/ratelimit_bench.py                       # R = 200/s, 50 ms, ~5,100 calls, both Retry-After kinds
    python benchmarks/ratelimit_bench.py --retry-after none --calls 3000

The server (benchmarks/fake_server.py) takes R requests a second through a token bucket (burst R/20)
and answers a request over it at once with 429, with ``Retry-After: 1`` (whole seconds, rounded up,
as real servers send) or with no Retry-After. Each run evolves fresh seeds for one round with the
judge (3 calls an item) through evolve's own async path, and reports:

- calls/s: answered calls (200s) over the phase's wall time (its first call to its last item), also
  as a share of R (target >= 0.9);
- the share of attempts answered 429 (target < 5%), and calls that failed for good after DSPy's
  retries (their items are rejected as llm_error);
- the concurrency limit over time, and the time to settle: from then on the limit stays within
  0.7 .. 1.3 times its median over the run's second half (AIMD's saw-tooth cuts to 3/4 stay inside).

The machine's own ceiling is measured in the same run: the same evolve with no rate limit at
concurrency 64 (calls/s), so a ratio to R is not read as the controller's when the client is the
bottleneck. Fixed concurrencies for comparison: 64 (too high), 4 (too low, on a third of the items)
and --reference (12: the best number picked by hand for this server and machine).

Measured 2026-12-07 (``--answers --calls 4000 --shapes all --no-fixed``, 2 shared cores with the test
suite running beside it, ceiling 953 calls/s), share of R / refused, Retry-After seconds then none:
bucket 0.910 / 0.35%, 0.913 / 0.35%; fixed 0.907 / 3.38%, 0.997 / 3.17%; sliding 0.941 / 4.37%,
0.947 / 2.39%; 10 in flight, 503 beyond 0.685 / 0.42%, 0.748; 429 beyond 0.717 / 0.40%, 0.759. No
llm_error. The in-flight shapes still miss 0.9 (issue 26's note says why and what to try).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from evolve_bench import write_seeds  # noqa: E402

from auto_evol.core.observer import Observer  # noqa: E402


class Server:
    def __init__(self, *args: str) -> None:
        self.args = list(args)

    def __enter__(self) -> "Server":
        folder = Path(tempfile.mkdtemp())
        ready, self.stats = folder / "port", folder / "stats.json"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fake_server.py"), *self.args,
                                      "--ready-file", str(ready), "--stats-file", str(self.stats)])
        deadline = time.time() + 30
        while not ready.exists() or not ready.read_text():
            if time.time() > deadline:
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{ready.read_text()}/v1"
        return self

    def counts(self) -> dict:
        return json.loads(self.stats.read_text()) if self.stats.exists() else {}

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()


class Watch(Observer):
    """The phase's wall time and the concurrency limit over time (sampled as items finish)."""

    def __init__(self, every: float = 0.25) -> None:
        self.every, self.live, self.samples = every, None, []
        self.begun = self.ended = None

    def start(self, options, *, concurrency=None, **_) -> None:
        self.live = concurrency

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self.begun = self.ended = time.perf_counter()
        if self.live:
            self.samples = [(0.0, self.live())]

    def advance(self, name: str) -> None:
        self.ended = now = time.perf_counter()
        if self.live and now - self.begun - self.samples[-1][0] >= self.every:
            self.samples.append((now - self.begun, self.live()))


def settle_time(samples) -> tuple[float | None, float | None]:
    """(seconds until the limit stays within 0.7 .. 1.3 times its second-half median, that median)."""
    if len(samples) < 4:
        return None, None
    end = samples[-1][0]
    median = statistics.median(c for t, c in samples if t >= end / 2)
    low, high = 0.7 * median, 1.3 * median
    settled = 0.0
    for t, c in samples:
        if not low <= c <= high:
            settled = None
        elif settled is None:
            settled = t
    return settled, median


def run(base: str, work: Path, items: int, concurrency, timeout: float = 60.0, judge: bool = True):
    import dspy  # noqa: F401 - imported before the clock starts

    from auto_evol.evolve import EvolveOptions, evolve

    data = work / "seeds.jsonl"
    write_seeds(data, items)
    options = EvolveOptions(data=str(data), out=str(work / "out.jsonl"), methods=["evol-instruct"], rounds=1,
                            evol_model="openai/fake", api_base=base, judge=judge, concurrency=concurrency,
                            timeout=timeout, cache_dir=None, track=False, max_error_rate=1.0)
    watch = Watch()
    result = evolve(options, observers=[watch])
    rejects = [json.loads(line) for line in open(result.rejects)]
    return result, watch, sum(r.get("reason") == "llm_error" for r in rejects)


def ceiling(items: int, judge: bool = True) -> None:
    with Server("--latency", "0.05") as server, tempfile.TemporaryDirectory() as tmp:
        result, watch, _ = run(server.base, Path(tmp), items, 64, judge=judge)
    calls = sum(u["calls"] for u in result.calls.values())
    seconds = watch.ended - watch.begun
    print(f"machine ceiling: no rate limit, concurrency 64, 50 ms: {calls} calls in {seconds:.2f} s = "
          f"{calls / seconds:.0f} calls/s (2 shared cores; the rate-limited runs below need 200/s)")


SHAPES = {   # --shapes NAME: the fake server's arguments (R = --rate; the in-flight cap: R x 50 ms calls)
    "bucket": lambda rate: ["--limiter", "bucket", "--rate", str(rate)],
    "fixed": lambda rate: ["--limiter", "fixed", "--rate", str(rate)],
    "sliding": lambda rate: ["--limiter", "sliding", "--rate", str(rate)],
    "inflight503": lambda rate: ["--limiter", "inflight", "--max-in-flight", str(round(rate * 0.05)),
                                 "--refuse-status", "503"],
    "inflight429": lambda rate: ["--limiter", "inflight", "--max-in-flight", str(round(rate * 0.05))],
}


def limited(rate: float, items: int, concurrency, retry_after: str, shape: str = "bucket",
            judge: bool = True) -> dict:
    with Server("--latency", "0.05", *SHAPES[shape](rate), "--retry-after", retry_after) as server, \
            tempfile.TemporaryDirectory() as tmp:
        result, watch, lost = run(server.base, Path(tmp), items, concurrency, judge=judge)
    counts = server.counts()
    seconds = watch.ended - watch.begun
    ok, throttled = counts.get("ok", 0), counts.get("429", 0)
    settled, median = settle_time(watch.samples)
    row = {"shape": shape, "concurrency": concurrency, "retry_after": retry_after, "seconds": round(seconds, 2), "answered": ok,
           "calls_per_s": round(ok / seconds, 1), "share_of_rate": round(ok / seconds / rate, 3),
           "share_429": round(throttled / max(1, ok + throttled), 4), "attempts_429": throttled,
           "failed_for_good": lost, "settle_s": settled, "settled_at": median}
    label = f"{shape} --concurrency {concurrency}"
    print(f"{label:<20} Retry-After {retry_after:<8} {ok} calls in {seconds:6.2f} s = {ok / seconds:6.1f} calls/s = "
          f"{ok / seconds / rate:.3f} of R; 429s {throttled} = {row['share_429']:.2%} of attempts; "
          f"items failed for good (llm_error) {lost}")
    if watch.samples:
        step = max(1, len(watch.samples) // 12)
        trace = ", ".join(f"{t:.1f}s:{c}" for t, c in watch.samples[::step])
        print(f"{'':<20} concurrency over time: {trace}")
        print(f"{'':<20} settled at ~{median:g} after {settled if settled is None else round(settled, 2)} s "
              f"(R x 50 ms = {rate * 0.05:g} calls in flight would just fill R)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--calls", type=int, default=5100, help="calls of the auto runs (3 per item)")
    parser.add_argument("--retry-after", choices=["seconds", "none", "both"], default="both")
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed-concurrency comparisons")
    parser.add_argument("--reference", type=int, default=12,
                        help="also run this fixed concurrency: the best hand-picked one here (R x the ~60 ms a "
                             "call takes on this machine) [default: 12; 0 skips it]")
    parser.add_argument("--shapes", nargs="+", default=["bucket"], choices=[*SHAPES, "all"],
                        help="the limiters to run against [default: bucket]; all: every one")
    parser.add_argument("--answers", action="store_true",
                        help="evolve and answer, no judge (2 calls an item), as issue 26's table")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    per_item = 2 if args.answers else 3
    items = args.calls // per_item
    judge = not args.answers
    shapes = list(SHAPES) if "all" in args.shapes else args.shapes
    print(f"rate limit R = {args.rate:g} requests/s, latency 50 ms, {items} items x {per_item} calls, one round")
    ceiling(items, judge)
    rows = []
    kinds = ["seconds", "none"] if args.retry_after == "both" else [args.retry_after]
    for shape in shapes:
        for kind in kinds:
            rows.append(limited(args.rate, items, "auto", kind, shape, judge))
    for kind in kinds if shapes == ["bucket"] else []:
        if not args.no_fixed:
            rows.append(limited(args.rate, items, 64, kind, judge=judge))
            if args.reference:
                rows.append(limited(args.rate, items, args.reference, kind, judge=judge))
            rows.append(limited(args.rate, items // 3, 4, kind, judge=judge))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
