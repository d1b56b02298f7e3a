"""What the --batch path itself costs per 10,000 requests, apart from the provider's queue.

The loopback OpenAI batch fake (tests/fake_batch.py) runs in its own process and ends each batch at
its creation (no queue time); polls every 0.01 s. `auto-evol evolve --batch all` evolves N seeds for
one round with the information-gain judge (three requests per kept item: evolution, verdict, answer),
then the same seeds online against the same fake's chat endpoint (concurrency 64), for reference.
Printed per 10,000 requests: wall seconds and this process's CPU seconds (the fake's own CPU is read
apart, from the child's rusage once it has stopped), and the batches made.

    python benchmarks/batch_bench.py [--seeds 3400]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["AUTO_EVOL_BATCH_POLL"] = "0.01"
os.environ.setdefault("OPENAI_API_KEY", "test")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(base: str, folder: Path, seeds: int, batch: str | None):
    from auto_evol.evolve import EvolveOptions, evolve

    data = folder / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?", "output": "4"})
                              for i in range(seeds)) + "\n")
    out = folder / f"out-{batch or 'online'}.jsonl"
    options = EvolveOptions(data=str(data), out=str(out), methods=["evol-instruct"], rounds=1, judge=True,
                            evol_model="openai/fake", api_base=base, batch=batch, track=False, cache_dir=None,
                            concurrency=64)
    started_wall, started_cpu = time.perf_counter(), cpu()
    result = evolve(options, observers=[])
    wall, used = time.perf_counter() - started_wall, cpu() - started_cpu
    requests = int(sum(u["calls"] for u in result.calls.values()))
    return requests, wall, used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3400)
    args = parser.parse_args()
    import dspy  # noqa: F401 - imported before the clocks start

    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        folder = Path(tmp)
        url_file = folder / "url"
        fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_batch.py"), "openai", str(url_file), "0"],
                                cwd=ROOT / "tests")
        try:
            deadline = time.time() + 30
            while not url_file.exists() or not url_file.read_text():
                if time.time() > deadline:
                    raise RuntimeError("the batch fake did not start")
                time.sleep(0.05)
            base = url_file.read_text().strip()
            rows = []
            for batch in ("all", None):
                sub = folder / (batch or "online")
                sub.mkdir()
                rows.append((batch, *run(base, sub, args.seeds, batch)))
        finally:
            fake.terminate()
            fake.wait(10)
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"evolve, {args.seeds} seeds, one round with the judge; batch fake ends each batch at creation, polls 0.01 s")
    for batch, requests, wall, used in rows:
        per = 10_000 / max(requests, 1)
        print(f"  {'--batch all' if batch else 'online (64)':<12} {requests} requests: {wall:.2f} s wall, {used:.2f} s CPU "
              f"here -> per 10k requests {wall * per:.2f} s wall, {used * per:.2f} s CPU")
    print(f"  the fake's own CPU over both runs: {child.ru_utime + child.ru_stime:.2f} s")


if __name__ == "__main__":
    main()
