"""optimize and compare against a loopback server with a known latency: wall time over the critical path.

    python benchmarks/optimize_bench.py                      # every case below, one run each
    python benchmarks/optimize_bench.py --cases fixed lognormal --runs 3
    python benchmarks/optimize_bench.py --cases fixed --concurrency 4     # the old CLI default, for comparison

Each case runs the whole command as a user types it, `auto-evol optimize --data gsm8k_seed ...` (paper
settings: batch 10, dev 50, m = 5, l = 1; 2 steps, --patience 5, --structured off, --no-cache), in a
fresh folder with tracking on (MLflow's store is made by the run, as on a first run; --warm-store makes
it once before the timed run and says so), timed from before the interpreter starts to its exit.

The server (this file, run as a process) answers like a model that follows e0: every evolution is
readable, every optimization request gets a distinct readable method ("Variant N." before e0's text),
and an answer fails (an F(r) 'Sure ... ?') on a share of the dev items that depends on the method, so
candidates differ. Each call sleeps its latency before the reply: fixed, or lognormal (median
--latency, --sigma), drawn from the prompt's hash so a rerun sees the same latencies. Every request
is logged (its kind, method, item, latency, start, end, status).

The critical path is read from that log, as the issue defines it: the sum over the algorithm's chain
of each link's slowest call (e0 on the dev set: evolution, answer; then per step: trajectory,
analysis, optimization, dev evolution, dev answer), 2 + 5 x steps latencies at a fixed latency. Beside
it, the dependency chain proper (e0 beside step 1; per step the trajectory, then the slowest
candidate's analysis + optimization + its slowest dev pair), which a loop without barriers can reach.

``ratelimit``: the server takes 200 requests/s (token bucket, 429 with Retry-After: 1 beyond), 50 ms
per call; reported: the share of the limit the dev evaluation answered (200 OK replies over its span),
the share of its requests refused, and whether every (candidate, dev item) pair was judged.

``compare``: `auto-evol compare --methods e0 evol-instruct --data gsm8k_seed --dev-size 50` (3 rounds)
against a 1,000 ms server, then the same command again with every call cached (the reply cache in the
same folder): its critical path is 4 latencies (three rounds of evolution, then the last round's answer
and its difficulty judgement).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

E0 = (ROOT / "methods" / "e0.md").read_text().split("---", 2)[2].strip()


# --- the server ---------------------------------------------------------------------------------------

def _instruction(prompt: str) -> str:
    for marker in ("#Instruction#:", "#Given Prompt#:", "Instruction:"):
        if marker in prompt:
            return prompt.rsplit(marker, 1)[1].strip()
    return prompt.strip()


def _method_of(prompt: str) -> int:
    found = re.match(r"Variant (\d+)\.", prompt)
    return int(found.group(1)) if found else 0


def _fails(instruction: str, method: int) -> bool:
    """Whether the answer to ``instruction`` evolved by ``method`` fails: 30% of items under e0, 10-50% under
    the variants (by their number), fixed per item."""
    bad = 3 if method == 0 else 1 + (method * 7) % 5
    return zlib.crc32(instruction.split(" [m")[0].encode()) % 10 < bad


class World:
    def __init__(self) -> None:
        self.variants = 0

    def answer(self, prompt: str) -> tuple[str, dict]:
        """(reply text, what the log keeps of the request)."""
        if prompt.startswith("You are reviewing"):
            return "Case 1 failed: its complexity did not grow. The method should add one constraint.", {"kind": "analysis"}
        if prompt.startswith("You improve"):
            self.variants += 1
            return f"Optimized Method:\nVariant {self.variants}. {E0}\n", {"kind": "optimization", "method": self.variants}
        if prompt.startswith("Rate how difficult"):
            return "7", {"kind": "difficulty"}
        if "#Instruction#:" in prompt or "#Given Prompt#" in prompt:
            method = _method_of(prompt)
            instruction = _instruction(prompt)
            text = (f"Step 1 #Methods List#: add units\nStep 2 #Plan#: ask for the answer in dollars\n"
                    f"Step 3 #Rewritten Instruction#: {instruction} In dollars.\n"
                    f"Step 4 #Finally Rewritten Instruction#: {instruction} Give the answer in dollars. [m{method}]")
            return text, {"kind": "evolve", "method": method, "item": zlib.crc32(instruction.encode())}
        tag = re.search(r"\[m(\d+)\]", prompt)
        method = int(tag.group(1)) if tag else 0
        original = prompt.split(" Give the answer in dollars.")[0]
        if _fails(original, method):
            return "Sure, which currency do you mean?", {"kind": "answer", "method": method,
                                                        "item": zlib.crc32(original.encode())}
        return "The answer is 42 dollars, found step by step.", {"kind": "answer", "method": method,
                                                                  "item": zlib.crc32(original.encode())}


async def serve(args) -> None:
    from fake_server import Bucket, _chat, _response

    world, log = World(), []
    bucket = Bucket(args.rate, args.rate / 20) if args.rate else None
    t0 = 0.0   # the log's times are time.monotonic(), which the benchmark reads too

    def latency(prompt: str) -> float:
        if not args.sigma:
            return args.latency
        rng = random.Random(zlib.crc32(prompt.encode()) ^ args.seed)
        return args.latency * math.exp(args.sigma * rng.gauss(0.0, 1.0))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = json.loads(await reader.readexactly(length)) if length else {}
                start = time.monotonic() - t0
                prompt = body["messages"][-1]["content"]
                if isinstance(prompt, list):
                    prompt = "".join(part.get("text", "") for part in prompt)
                if bucket is not None and bucket.take():
                    log.append({"kind": "refused", "start": start, "end": start, "status": 429})
                    writer.write(_response(429, b'{"error": {"message": "rate limit reached"}}', "Retry-After: 1\r\n"))
                    await writer.drain()
                    continue
                text, entry = world.answer(prompt)
                wait = latency(prompt)
                await asyncio.sleep(wait)
                log.append({**entry, "latency": wait, "start": start, "end": time.monotonic() - t0, "status": 200})
                writer.write(_response(200, json.dumps(_chat(text)).encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    args.ready_file.write_text(str(srv.sockets[0].getsockname()[1]))
    await stop.wait()
    srv.close()
    args.log.write_text("\n".join(json.dumps(e) for e in log))


# --- reading the log --------------------------------------------------------------------------------

def _dev_items() -> set[int]:
    rows = (ROOT / "dev_sets" / "gsm8k_seed" / "dev.jsonl").read_text().splitlines()
    return {zlib.crc32(json.loads(r)["instruction"].encode()) for r in rows if r.strip()}


def critical_paths(log: list[dict], m: int, batch: int) -> tuple[float, float, int]:
    """(the issue's critical path: the sum of each link's slowest call; the dependency chain; steps)."""
    dev = _dev_items()
    ok = [e for e in log if e["status"] == 200]
    e0_evolve = [e for e in ok if e["kind"] == "evolve" and e["method"] == 0 and e["item"] in dev]
    e0_answer = [e for e in ok if e["kind"] == "answer" and e["method"] == 0 and e["item"] in dev]
    trajectory = sorted((e for e in ok if e["kind"] == "evolve" and e["item"] not in dev), key=lambda e: e["start"])
    analyses = sorted((e for e in ok if e["kind"] == "analysis"), key=lambda e: e["start"])
    optimizations = sorted((e for e in ok if e["kind"] == "optimization"), key=lambda e: e["method"])
    steps = -(-len(analyses) // m)

    def slowest(entries) -> float:
        return max((e["latency"] for e in entries), default=0.0)

    def pair(entries_evolve, entries_answer) -> dict:
        """item -> its dev pair's latency (evolution + answer)."""
        out = {}
        for e in entries_evolve:
            out[e["item"]] = out.get(e["item"], 0.0) + e["latency"]
        for e in entries_answer:
            out[e["item"]] = out.get(e["item"], 0.0) + e["latency"]
        return out

    links = slowest(e0_evolve) + slowest(e0_answer)
    chain = 0.0
    e0_chain = max(pair(e0_evolve, e0_answer).values(), default=0.0)
    for k in range(steps):
        variants = set(range(k * m + 1, (k + 1) * m + 1))
        traj = trajectory[k * batch:(k + 1) * batch]
        ana = analyses[k * m:(k + 1) * m]
        opt = [e for e in optimizations if e["method"] in variants]
        dev_evolve = [e for e in ok if e["kind"] == "evolve" and e["method"] in variants and e["item"] in dev]
        dev_answer = [e for e in ok if e["kind"] == "answer" and e["method"] in variants and e["item"] in dev]
        links += slowest(traj) + slowest(ana) + slowest(opt) + slowest(dev_evolve) + slowest(dev_answer)
        per_candidate = []
        for index, (a, o) in enumerate(zip(ana, opt)):
            v = o["method"]
            pairs = pair([e for e in dev_evolve if e["method"] == v], [e for e in dev_answer if e["method"] == v])
            per_candidate.append(a["latency"] + o["latency"] + max(pairs.values(), default=0.0))
        step_chain = slowest(traj) + max(per_candidate, default=0.0)
        chain += max(step_chain, e0_chain) if k == 0 else step_chain
    return links, chain, steps


# --- the runs -----------------------------------------------------------------------------------------

class Server:
    def __init__(self, folder: Path, *, latency: float, sigma: float = 0.0, rate: float | None = None,
                 seed: int = 0) -> None:
        self.ready, self.log = folder / "port", folder / "server.jsonl"
        args = [sys.executable, __file__, "--serve", "--latency", str(latency), "--sigma", str(sigma),
                "--seed", str(seed), "--ready-file", str(self.ready), "--log", str(self.log)]
        if rate:
            args += ["--rate", str(rate)]
        self.proc = subprocess.Popen(args)
        while not self.ready.exists() or not self.ready.read_text():
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.ready.read_text()}/v1"

    def stop(self) -> list[dict]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def _auto_evol(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "OPENAI_API_KEY": "unused", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    _auto_evol.span = (started, started + wall)
    if done.returncode != 0:
        raise SystemExit(f"auto-evol {' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done


def optimize_args(base: str, concurrency: str | None) -> list[str]:
    args = ["optimize", "--data", "gsm8k_seed", "--evol-model", "openai/bench", "--optimizer-model", "openai/bench",
            "--api-base", base, "--steps", "2", "--patience", "5", "--batch-size", "10", "--dev-size", "50",
            "--candidates", "5", "--rounds", "1", "--structured", "off", "--no-cache", "--quiet"]
    return args + (["--concurrency", concurrency] if concurrency else [])


def run_optimize(name: str, *, latency: float, sigma: float, concurrency: str | None, warm: bool, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if warm:   # the store made once before the timed run (not counted)
            server = Server(folder, latency=0.0, seed=seed)
            _auto_evol(optimize_args(server.base, concurrency) + ["--steps", "1", "--experiment", "warm"], folder)
            server.stop()
            (folder / "port").unlink()
        server = Server(folder, latency=latency, sigma=sigma, seed=seed)
        wall, done = _auto_evol(optimize_args(server.base, concurrency), folder)
        log = server.stop()
    links, chain, steps = critical_paths(log, m=5, batch=10)
    calls = sum(1 for e in log if e["status"] == 200)
    began, ended = _auto_evol.span
    return {"case": name, "wall_s": round(wall, 2),
            "before_first_call_s": round(min(e["start"] for e in log) - began, 2),
            "calls_span_s": round(max(e["end"] for e in log) - min(e["start"] for e in log), 2),
            "after_last_call_s": round(ended - max(e["end"] for e in log), 2), "critical_path_s": round(links, 2),
            "dependency_chain_s": round(chain, 2), "wall_over_critical_path": round(wall / links, 2),
            "wall_over_dependency_chain": round(wall / chain, 2), "calls": calls, "steps": steps,
            "concurrency": concurrency or "default", "store": "warm" if warm else "fresh"}


def run_ratelimit(*, rate: float, concurrency: str | None, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = Server(folder, latency=0.05, rate=rate, seed=seed)
        wall, done = _auto_evol(optimize_args(server.base, concurrency), folder)
        log = server.stop()
    dev = _dev_items()
    variants = sorted({e["method"] for e in log if e["kind"] == "optimization"})
    steps = [variants[k:k + 5] for k in range(0, len(variants), 5)]
    shares, refused_shares, pairs, spans = [], [], set(), []
    for step in steps:   # each step's dev evaluation apart: between them the next step's trajectory and optimizer
        judged = [e for e in log if e["status"] == 200 and e.get("method") in step and e["kind"] in ("evolve", "answer")
                  and e.get("item") in dev]
        first, last = min(e["start"] for e in judged), max(e["end"] for e in judged)
        refused = [e for e in log if e["status"] == 429 and first <= e["start"] <= last]
        answered = [e for e in log if e["status"] == 200 and first <= e["end"] <= last]
        shares.append(len(answered) / (last - first) / rate)
        refused_shares.append(len(refused) / (len(refused) + len(judged)))
        spans.append(round(last - first, 2))
        pairs |= {(e["method"], e["item"]) for e in judged if e["kind"] == "evolve"}
    return {"case": f"ratelimit {rate:.0f}/s, 50 ms", "wall_s": round(wall, 2), "dev_spans_s": spans,
            "share_of_limit": [round(x, 3) for x in shares], "refused_share": [round(x, 4) for x in refused_shares],
            "refused_total": sum(1 for e in log if e["status"] == 429),
            "pairs_judged": len(pairs), "pairs_expected": len(variants) * len(dev),
            "concurrency": concurrency or "default"}


def compare_args(base: str, concurrency: str | None, cache: Path) -> list[str]:
    args = ["compare", "--methods", "e0", "evol-instruct", "--data", "gsm8k_seed", "--dev-size", "50",
            "--evol-model", "openai/bench", "--api-base", base, "--structured", "off", "--cache-dir", str(cache),
            "--quiet"]
    return args + (["--concurrency", concurrency] if concurrency else [])


def run_compare(*, latency: float, concurrency: str | None, seed: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = Server(folder, latency=latency, seed=seed)
        wall, _ = _auto_evol(compare_args(server.base, concurrency, folder / "cache"), folder)
        began, ended = _auto_evol.span
        cached, _ = _auto_evol(compare_args(server.base, concurrency, folder / "cache"), folder)
        log = server.stop()
    calls = sum(1 for e in log if e["status"] == 200)
    critical = 4 * latency
    first, last = min(e["start"] for e in log), max(e["end"] for e in log if e["end"] <= ended)
    return [{"case": "compare", "wall_s": round(wall, 2), "before_first_call_s": round(first - began, 2),
             "calls_span_s": round(last - first, 2), "after_last_call_s": round(ended - last, 2),
             "critical_path_s": critical,
             "wall_over_critical_path": round(wall / critical, 2), "calls": calls,
             "concurrency": concurrency or "default"},
            {"case": "compare, every call cached", "wall_s": round(cached, 2), "concurrency": concurrency or "default"}]


def bare_python() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--cases", nargs="+", default=["fixed", "lognormal", "ratelimit", "compare"],
                        choices=["fixed", "lognormal", "ratelimit", "compare"])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", help="--concurrency for the commands [default: theirs]")
    parser.add_argument("--warm-store", action="store_true", help="make MLflow's store before the timed run")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    print(json.dumps({"python_start_s": round(bare_python(), 3), "cpus": os.cpu_count()}))
    for run in range(args.runs):
        seed = args.seed + run
        for case in args.cases:
            if case == "fixed":
                rows = [run_optimize("optimize, 500 ms", latency=0.5, sigma=0.0, concurrency=args.concurrency,
                                     warm=args.warm_store, seed=seed)]
            elif case == "lognormal":
                rows = [run_optimize("optimize, lognormal median 500 ms sigma 1", latency=0.5, sigma=1.0,
                                     concurrency=args.concurrency, warm=args.warm_store, seed=seed)]
            elif case == "ratelimit":
                rows = [run_ratelimit(rate=200, concurrency=args.concurrency, seed=seed)]
            else:
                rows = run_compare(latency=1.0, concurrency=args.concurrency, seed=seed)
            for row in rows:
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
