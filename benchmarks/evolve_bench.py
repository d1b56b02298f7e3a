"""auto-evol evolve at scale against a loopback OpenAI-compatible server (benchmarks/fake_server.py).

    python benchmarks/evolve_bench.py efficiency   # 10k calls, concurrency 64, 50 ms latency
    python benchmarks/evolve_bench.py memory       # peak RSS evolving 100k instructions
    python benchmarks/evolve_bench.py faults       # 20% injected faults over 2k items: nothing lost
    python benchmarks/evolve_bench.py all

Efficiency = (calls x latency / concurrency) / wall seconds. The machine's own ceiling is measured in
the same run: a bare aiohttp client sending the same number of calls to the same server at the same
concurrency. auto-evol's figure is reported beside it and as a ratio to it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from auto_evol.core.observer import Observer  # noqa: E402 - neither DSPy nor MLflow comes with it
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class LoopbackServer:
    def __init__(self, latency: float, faults: float = 0.0, timeout_sleep: float = 30.0) -> None:
        self.args = ["--latency", str(latency), "--faults", str(faults), "--timeout-sleep", str(timeout_sleep)]

    def __enter__(self) -> str:
        ready = Path(tempfile.mkdtemp()) / "port"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fake_server.py"), *self.args,
                                      "--ready-file", str(ready)])
        deadline = time.time() + 30
        while not ready.exists() or not ready.read_text():
            if time.time() > deadline:
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{ready.read_text()}/v1"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()


def clean_numbers():
    """Question numbers that the fake server's evolve world never fails, so each item costs exactly the
    same calls (evolve, judge, answer)."""
    i = 0
    while True:
        if i % 7 not in (3, 5) and i % 11 != 4 and i % 13 != 6 and i % 5 != 2:
            yield i
        i += 1


def write_seeds(path: Path, n: int, *, clean: bool = True) -> None:
    numbers = clean_numbers() if clean else iter(range(n))
    with open(path, "w") as fh:
        for _, i in zip(range(n), numbers):
            fh.write(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}? Add the two prices.",
                                 "output": "4"}) + "\n")


async def bare_client(base: str, calls: int, concurrency: int) -> float:
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(i: int) -> None:
            async with semaphore:
                async with session.post(base + "/chat/completions", json={
                        "model": "fake", "messages": [{"role": "user", "content": f"Question number {i}?"}]}) as r:
                    (await r.json())["choices"][0]["message"]["content"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return time.perf_counter() - started


class PhaseClock(Observer):
    """An observer of the evolve run that notes when the calls of each phase started and when the
    last one ended."""

    def __init__(self) -> None:
        self.phases: dict[str, list[float]] = {}

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self.phases[name] = [time.perf_counter()] * 2

    def advance(self, name: str) -> None:
        self.phases[name][1] = time.perf_counter()

    def seconds(self) -> float:
        return sum(end - start for start, end in self.phases.values())


def run_evolve(base: str, work: Path, seeds: int, *, judge: bool, timeout: float = 120.0, concurrency: int = 64,
               clean: bool = True, clock: PhaseClock | None = None, cache: bool = False):
    import dspy  # noqa: F401 - imported before the clock starts, as the bare client's aiohttp is (~0.5 s, once per process)

    from auto_evol.evolve import EvolveOptions, evolve

    data = work / "seeds.jsonl"
    write_seeds(data, seeds, clean=clean)
    options = EvolveOptions(data=str(data), out=str(work / "out.jsonl"), methods=["evol-instruct"], rounds=1,
                            evol_model="openai/fake", api_base=base, judge=judge, concurrency=concurrency,
                            timeout=timeout, cache_dir=str(work / "cache") if cache else None, track=False)
    started = time.perf_counter()
    result = evolve(options, observers=[clock] if clock else [])
    return result, time.perf_counter() - started


def efficiency(calls: int = 10_000, concurrency: int = 64, latency: float = 0.05, cache: bool = False) -> None:
    ideal = calls * latency / concurrency
    with LoopbackServer(latency) as base, tempfile.TemporaryDirectory() as tmp:
        bare = asyncio.run(bare_client(base, calls, concurrency))
        clock = PhaseClock()
        result, wall = run_evolve(base, Path(tmp), calls // 2, judge=False, concurrency=concurrency, clock=clock,
                                  cache=cache)
    made = sum(u["calls"] for u in result.calls.values())
    ours = made * latency / concurrency / wall
    calls_only = made * latency / concurrency / clock.seconds()
    print(f"efficiency: {calls} calls, concurrency {concurrency}, latency {latency * 1000:.0f} ms, ideal {ideal:.2f} s, "
          f"reply cache {'on disk' if cache else 'off'}")
    print(f"  bare aiohttp client (ceiling): {bare:.2f} s -> efficiency {ideal / bare:.3f}")
    print(f"  auto-evol evolve ({made} calls, whole run incl. reading and writing): {wall:.2f} s -> "
          f"efficiency {ours:.3f}")
    print(f"  ratio auto-evol / ceiling: {ours / (ideal / bare):.3f}")
    print(f"  the calls alone (first call of the round to its last answer, without startup, reading and "
          f"writing): {clock.seconds():.2f} s -> efficiency {calls_only:.3f}, ratio to ceiling "
          f"{calls_only / (ideal / bare):.3f}")


def memory(seeds: int = 100_000) -> None:
    with LoopbackServer(0.0) as base, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "seeds.jsonl"
        write_seeds(data, seeds)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "auto_evol", "evolve", "--data", str(data), "--out",
                               str(Path(tmp) / "out.jsonl"), "--rounds", "1", "--no-judge", "--evol-model",
                               "openai/fake", "--api-base", base, "--concurrency", "64", "--no-track", "--quiet",
                               "--cache-dir", str(Path(tmp) / "cache")], capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        records = sum(1 for _ in open(Path(tmp) / "out.jsonl")) if proc.returncode == 0 else 0
    print(f"memory: {seeds} instructions, 1 round, {records} records out, {wall:.0f} s, exit {proc.returncode}")
    print(f"  peak RSS of the evolve process: {peak_mb:.0f} MB (target < 500 MB)")
    if proc.returncode:
        print(proc.stderr[-2000:])


def faults(seeds: int = 2000, share: float = 0.2) -> None:
    with LoopbackServer(0.005, faults=share, timeout_sleep=3.0) as base, tempfile.TemporaryDirectory() as tmp:
        result, wall = run_evolve(base, Path(tmp), seeds, judge=True, timeout=1.0, clean=False)
        out = [json.loads(line) for line in open(result.out)]
        rejects = [json.loads(line) for line in open(result.rejects)]
    evolved = {r["seed_id"] for r in out if r["round"] == 1}
    rejected = {r["seed_id"] for r in rejects}
    lost = seeds - len(evolved | rejected)
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    calls = {role: (u["calls"], u["errors"]) for role, u in result.calls.items()}
    print(f"faults: {seeds} items, {share:.0%} of replies faulty (429 / 500 / timeout / garbage), {wall:.0f} s")
    print(f"  kept {len(evolved)}, rejected {len(rejected)} {reasons}, lost {lost} (target 0); "
          f"calls (made, failed after retries) {calls}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["efficiency", "memory", "faults", "all"])
    parser.add_argument("--seeds", type=int, help="override the item count of memory / faults")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency for efficiency, seconds")
    parser.add_argument("--calls", type=int, default=10_000, help="calls for efficiency")
    parser.add_argument("--cache", action="store_true", help="efficiency with DSPy's disk cache on (evolve --cache-dir; off is the CLI's default)")
    args = parser.parse_args()
    if args.which in ("efficiency", "all"):
        efficiency(args.calls, latency=args.latency, cache=args.cache)
    if args.which in ("faults", "all"):
        faults(*([args.seeds] if args.seeds and args.which == "faults" else []))
    if args.which in ("memory", "all"):
        memory(*([args.seeds] if args.seeds and args.which == "memory" else []))


if __name__ == "__main__":
    main()
