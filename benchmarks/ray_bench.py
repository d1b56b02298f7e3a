"""`evolve --ray` on a two-node Ray cluster on this machine, beside the single process and a bare client,
against the same loopback OpenAI-compatible server in the same run; then a scaling model on paper.

    python benchmarks/ray_bench.py                 # 3,000 items x 3 calls, 50 ms, 64 items in flight
    python benchmarks/ray_bench.py --items 600 --latency 0.2

Every figure is calls/s over the phase's calls (its first call to its last record), and the Ray run's
whole wall time beside it (joining the cluster and starting the workers included). The same total
calls in flight for all three: 64 for the bare client and the single process, workers x batch size
for Ray. Both "nodes" share this machine's 2 cores with the server and the driver, so the Ray figure
here measures the pipeline's overhead, not a cluster's reach: the model below says where N real
nodes stop scaling.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from evolve_bench import LoopbackServer, PhaseClock, bare_client, write_seeds  # noqa: E402


class FirstRecord(PhaseClock):
    """Also notes when the phase's first item came back: before it, the workers start (on a cluster,
    each imports auto-evol and builds its roles), after it the pipeline runs steadily."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def advance(self, name: str) -> None:
        super().advance(name)
        self.times.append(time.perf_counter())

    def startup(self) -> float:
        return self.times[0] - next(iter(self.phases.values()))[0]

    def steady(self, calls_per_item: int = 3) -> float:
        """Calls/s over the second half of the records (records come back a block at a time, so the
        first one stands for a whole block's worth of work)."""
        half = len(self.times) // 2
        return (len(self.times) - half) * calls_per_item / (self.times[-1] - self.times[half - 1])


def run(base: str, folder: Path, items: int, *, ray: str | None = None, workers: int = 4, batch: int = 16,
        concurrency: int = 64):
    from auto_evol.evolve import EvolveOptions, evolve

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "seeds.jsonl"
    write_seeds(data, items)
    clock = FirstRecord()
    options = EvolveOptions(data=str(data), out=str(folder / "out.jsonl"), methods=["evol-instruct"], rounds=1,
                            evol_model="openai/fake", api_base=base, concurrency=concurrency, track=False,
                            ray=ray, ray_workers=workers, ray_batch_size=batch)
    started = time.perf_counter()
    result = evolve(options, observers=[clock])
    wall = time.perf_counter() - started
    calls = sum(u["calls"] for u in result.calls.values())
    return calls, clock.seconds(), wall, clock


def driver_records_per_second(n: int = 20_000) -> float:
    """What the driver does per record that comes back: decode it, journal it, count its calls."""
    from auto_evol.storage.checkpoint import Journal
    from auto_evol.llm.client import Llm, RoleSettings
    from auto_evol.cluster.pipeline import add_usage

    record = json.dumps({"seed_id": "s1", "round": 1, "parent_instruction": "Question number 1? " * 8,
                         "instruction": "Question number 1, with a twist? " * 10, "output": "The answer. " * 40,
                         "status": "kept", "method": "evol-instruct-reasoning", "method_hash": "0" * 12})
    usage = json.dumps([{"role": "evol", "input_tokens": 300, "output_tokens": 60, "seconds": 0.05}] * 2
                       + [{"role": "answer", "input_tokens": 60, "output_tokens": 300, "seconds": 0.05}])
    role = Llm(RoleSettings("openai/fake"), None)
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "j.jsonl") as journal:
        started = time.perf_counter()
        for _ in range(n):
            journal.append(json.loads(record))
            add_usage({"evol": role, "answer": role}, json.loads(usage))
        return n / (time.perf_counter() - started)


def scaling_model(single: float, driver: float) -> None:
    """Throughput of N nodes x C calls in flight against a server of latency L: each node sends C / L
    calls/s until its client's CPU is the limit (K: the single-process figure measured here, per node);
    the cluster sends N times that until the server's capacity S, or until the driver, which journals
    every record (3 calls an item), is the limit."""
    k, d = single, driver * 3
    print(f"\nscaling model: cluster calls/s = min(N x min(C / L, K), S, D)  with K = {k:,.0f} calls/s per node "
          f"(the single process here), D = {d:,.0f} calls/s (the driver's journal, measured: {driver:,.0f} "
          f"records/s x 3 calls)")
    cases = [("loopback-like, 50 ms", 0.05, 64, float("inf")),
             ("hosted API, 5 s replies, 10k requests/min", 5.0, 256, 10_000 / 60),
             ("vLLM per GPU, 2 s replies, 256 in flight", 2.0, 256, float("inf"))]
    for name, latency, c, server in cases:
        row = []
        for n in (1, 2, 4, 8, 16, 32, 64):
            row.append(f"N={n}: {min(n * min(c / latency, k), server, d):,.0f}")
        per_node = min(c / latency, k)
        stop = min(server, d) / per_node
        print(f"  {name} (C = {c}): " + ", ".join(row))
        print(f"    stops scaling past N = {stop:,.1f} nodes ({'the server' if server < d else 'the driver'}"
              f"'s limit); one node sends {per_node:,.0f} calls/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    inflight = args.workers * args.batch * 4   # a worker runs 4 batches at once (Ray Data's async UDFs)
    with LoopbackServer(args.latency) as base, tempfile.TemporaryDirectory() as tmp:
        bare_seconds = asyncio.run(bare_client(base, args.items * 3, inflight))
        bare = args.items * 3 / bare_seconds
        calls, phase, wall, _ = run(base, Path(tmp) / "single", args.items, concurrency=inflight)
        single = calls / phase
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        try:
            r_calls, r_phase, r_wall, r_clock = run(base, Path(tmp) / "ray", args.items, ray=cluster.address,
                                               workers=args.workers, batch=args.batch, concurrency=inflight)
        finally:
            cluster.shutdown()
    ideal = inflight / args.latency
    print(f"{args.items} items x 3 calls, latency {args.latency * 1000:.0f} ms, {inflight} calls in flight "
          f"(ideal {ideal:,.0f} calls/s); 2 shared cores for server, clients and both Ray nodes")
    print(f"  bare aiohttp client:        {bare:8,.0f} calls/s  (ceiling, 1.000)")
    print(f"  single process (evolve):    {single:8,.0f} calls/s  = {single / bare:.3f} of the ceiling "
          f"({calls} calls, whole run {wall:.1f} s)")
    print(f"  --ray, 2 nodes, {args.workers} workers x {args.batch}: {r_calls / r_phase:8,.0f} calls/s  = "
          f"{r_calls / r_phase / bare:.3f} of the ceiling ({r_calls} calls in {r_phase:.1f} s; whole run "
          f"{r_wall:.1f} s with joining the cluster and starting the workers)")
    print(f"    of which: {r_clock.startup():.1f} s until the first record (the workers start: each imports "
          f"auto-evol and builds its roles), then over the second half of the "
          f"records {r_clock.steady():,.0f} calls/s = {r_clock.steady() / bare:.3f} of the ceiling (two worker "
          f"processes, where the bare client is one)")
    scaling_model(single, driver_records_per_second())


if __name__ == "__main__":
    main()
