"""Reliability of `auto-evol evolve` under injected faults and kill -9, for the reliability note.

    python benchmarks/reliability_bench.py faults [--seeds 2000] [--share 0.2]
    python benchmarks/reliability_bench.py kills [--trials 10] [--seeds 400]
    python benchmarks/reliability_bench.py all

faults: evolve N seeds (2 rounds, no judge, concurrency 64, 3 s call timeout) through the CLI against
benchmarks/fake_server.py's loopback server with that share of faulty replies (429 / 500 / timeout /
garbage). A run that exits non-zero or incomplete is rerun (the same command resumes) up to 5 times.
The output is then audited against the seeds and the work folder's journals: every answered seed
exactly once in round 0, no record id twice, every kept journal row in the output (none lost).

kills: a reference run with no kill gives the expected output bytes; then each trial runs the same
command on a fresh output path and cache folder, kill -9s it (at a seeded random moment between 0.2 s
and the reference's wall time, drawn again within the run's own time if it ended first; or, for the
last trials, as soon as the final assembly creates the output's temporary file, has half-written it,
or is writing the rejects), reruns it to completion and compares the output with the reference byte
for byte, counts reference ids missing (lost) and ids written twice (duplicated), and lists temporary
files left beside the output. The rejects file follows the journals' completion order, which varies
between runs even without a kill, so it is compared as a set of rows.

The evolve runs are `python -m auto_evol evolve ...` subprocesses; seeds come from evolve_bench's
write_seeds (unclean numbers, so the fake evolve world eliminates some items and they are retried),
with a share of them stripped of their answer so that round 0's answering path runs too.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from evolve_bench import ROOT, LoopbackServer, write_seeds  # noqa: E402
import fake_server  # noqa: E402

ROUNDS = 2
PYTHON = sys.executable
if importlib.util.find_spec("auto_evol") is None and (ROOT / ".venv" / "bin" / "python").exists():
    PYTHON = str(ROOT / ".venv" / "bin" / "python")   # run from a bare python: use the project's venv
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# --- helpers -----------------------------------------------------------------------------------------

class CountingServer:
    """fake_server.Server on a thread of this process, so the faults it injected can be counted
    (LoopbackServer runs it in a child process whose counts are not reported)."""

    def __init__(self, latency: float, faults: float, timeout_sleep: float, seed: int = 0) -> None:
        self.server = fake_server.Server(latency, faults, timeout_sleep, seed)

    def __enter__(self) -> str:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            srv = self.loop.run_until_complete(
                asyncio.start_server(self.server.handle, "127.0.0.1", 0, backlog=1024))
            self.port = srv.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            srv.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the loopback server did not start")
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.server.counts)


def make_seeds(path: Path, n: int, unanswered: float, seed: int = 0) -> int:
    """evolve_bench's seeds (all question numbers, so some fail in the evolve world), with a seeded
    share of them left without an answer. Returns how many have none."""
    write_seeds(path, n, clean=False)
    rng = random.Random(seed)
    rows = [json.loads(line) for line in open(path)]
    stripped = 0
    for row in rows:
        if rng.random() < unanswered:
            row.pop("output")
            stripped += 1
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return stripped


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file; a torn last line (no newline, or not JSON) is skipped."""
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def evolve_cmd(data: Path, out: Path, base: str, cache: Path, *, timeout: float, judge: bool,
               concurrency: int = 64) -> list[str]:
    return [PYTHON, "-m", "auto_evol", "evolve", "--data", str(data), "--out", str(out), "--rounds", str(ROUNDS),
            "--judge" if judge else "--no-judge", "--evol-model", "openai/fake", "--api-base", base,
            "--concurrency", str(concurrency), "--timeout", str(timeout), "--no-track", "--quiet",
            "--cache-dir", str(cache)]


def run_cli(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV)


def work_of(out: Path) -> Path:
    return Path(str(out) + ".work")


def temp_files_beside(out: Path) -> list[str]:
    """atomic_write's temporaries (.NAME.XXXX.tmp) in the output's folder."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def work_leftovers(out: Path) -> list[str]:
    """Temporaries and shuffle buckets left in the work folder."""
    work = work_of(out)
    if not work.exists():
        return []
    found = [p.name for p in work.iterdir() if p.name.endswith(".tmp")]
    if (work / "shuffle").exists():
        found += [f"shuffle/{p.name}" for p in (work / "shuffle").iterdir()]
    return sorted(found)


def phase_of(out: Path, seeds: int, unanswered: int) -> str:
    """How far a (killed, so frozen) run got, read from its work folder."""
    work = work_of(out)
    if not work.exists():
        return "startup"
    if not (work / "seeds.done").exists():
        return "reading seeds"
    rejects_tmp = [n for n in temp_files_beside(out) if n.startswith(f".{out.stem}.rejects")]
    out_tmp = [n for n in temp_files_beside(out) if n.startswith(f".{out.name}.")]
    if out.exists():
        return "writing rejects" if rejects_tmp else "output written (stats)"
    if out_tmp:
        size = max((out.parent / n).stat().st_size for n in out_tmp)
        return f"assembly (output temp {size} B)"
    if (work / "shuffle").exists():
        return "assembly (shuffle)"
    for round_ in range(ROUNDS, 0, -1):
        rows = read_jsonl(work / f"round{round_}.jsonl")
        if rows or (work / f"round{round_}.jsonl").exists():
            return f"round {round_} ({len(rows)}/{seeds})"
    done = len(read_jsonl(work / "round0.jsonl"))
    return f"answer seeds ({done}/{unanswered})"


def audit(out: Path, data: Path) -> dict:
    """Check an output against its seeds and journals."""
    work = work_of(out)
    records = read_jsonl(out)
    seeds = read_jsonl(data)
    seed_ids = [s["id"] for s in seeds]
    ids = Counter(r["id"] for r in records)
    expected = {f"{s['id']}#0" for s in seeds if s.get("output")}
    round0 = read_jsonl(work / "round0.jsonl")
    journal_dups = sum(c - 1 for c in Counter(r["seed_id"] for r in round0).values() if c > 1)
    answer_failed = {r["seed_id"] for r in round0 if not r["output"]}
    expected |= {f"{r['seed_id']}#0" for r in round0 if r["output"]}
    journal_missing = 0
    reasons: Counter = Counter()
    for round_ in range(1, ROUNDS + 1):
        rows = read_jsonl(work / f"round{round_}.jsonl")
        seen = Counter(r["seed_id"] for r in rows)
        journal_dups += sum(c - 1 for c in seen.values() if c > 1)
        journal_missing += len(set(seed_ids) - set(seen))
        expected |= {f"{r['seed_id']}#{round_}" for r in rows if r["status"] == "kept"}
        reasons.update(r.get("reason") for r in rows if r["status"] != "kept")
    reasons.update(r.get("reason", "empty answer") for r in round0 if not r["output"])
    in_round0 = Counter(r["seed_id"] for r in records if r["round"] == 0)
    not_once = [sid for sid in seed_ids if in_round0[sid] != 1]
    return {
        "records": len(records),
        "by_round": dict(sorted(Counter(r["round"] for r in records).items())),
        "lost": len(expected - set(ids)),
        "duplicated": sum(c - 1 for c in ids.values() if c > 1),
        "extra": len(set(ids) - expected),
        "malformed_ids": sum(1 for r in records if r["id"] != f"{r['seed_id']}#{r['round']}"),
        "seeds_once_in_round0": len(seed_ids) - len(not_once),
        "seeds_not_once": len(not_once),
        "not_once_explained": sum(1 for sid in not_once if in_round0[sid] == 0 and sid in answer_failed),
        "journal_missing": journal_missing,
        "journal_dups": journal_dups,
        "reasons": dict(reasons.most_common()),
    }


# --- faults ------------------------------------------------------------------------------------------

def faults(seeds: int = 2000, share: float = 0.2, *, latency: float = 0.01, timeout: float = 3.0,
           unanswered: float = 0.1, judge: bool = False, max_reruns: int = 5, baseline: bool = True) -> dict:
    server = CountingServer(latency, share, timeout_sleep=3.0)
    with tempfile.TemporaryDirectory() as tmp, server as base:
        tmp = Path(tmp)
        data, out = tmp / "seeds.jsonl", tmp / "out.jsonl"
        stripped = make_seeds(data, seeds, unanswered)
        cmd = evolve_cmd(data, out, base, tmp / "cache", timeout=timeout, judge=judge)
        codes, errors = [], []
        started = time.perf_counter()
        while True:
            proc = run_cli(cmd, tmp)
            codes.append(proc.returncode)
            if proc.returncode == 0 and out.exists():
                break
            errors.append(proc.stderr.strip()[-600:])
            if len(codes) > max_reruns:
                break
        wall = time.perf_counter() - started
        counts = server.counts
        result = audit(out, data)
        result.update(leftovers=temp_files_beside(out) + work_leftovers(out))
        clean = None
        if baseline:   # the same seeds through a fault-free server: what the faults cost in records
            with LoopbackServer(latency) as clean_base:
                clean_out = tmp / "clean" / "out.jsonl"
                clean_out.parent.mkdir()
                proc = run_cli(evolve_cmd(data, clean_out, clean_base, tmp / "clean" / "cache", timeout=timeout,
                                          judge=judge), tmp)
                clean = audit(clean_out, data) if proc.returncode == 0 else {"failed": proc.returncode}
    complete = codes[-1] == 0
    injected = {k: counts.get(k, 0) for k in ("429", "500", "timeout", "garbage")}
    requests = sum(counts.values())
    print(f"faults: {seeds} items ({stripped} without an answer), {ROUNDS} rounds, judge {'on' if judge else 'off'}, "
          f"{share:.0%} of replies faulty (429 / 500 / timeout / garbage), concurrency 64, timeout {timeout:g} s, "
          f"latency {latency * 1000:g} ms")
    if requests:
        print(f"  faults injected: {', '.join(f'{k} {v}' for k, v in injected.items())} "
              f"({sum(injected.values())} of {requests} requests, {sum(injected.values()) / requests:.1%})")
    else:
        print(f"  faults injected: not counted; configured share {share:.0%}")
    print(f"  wall {wall:.1f} s, runs {len(codes)} (exit codes {codes}), reruns {len(codes) - 1}"
          f"{'' if complete else ', NOT COMPLETE'}")
    print(f"  records {result['records']} (by round {result['by_round']}), lost {result['lost']}, "
          f"duplicated {result['duplicated']}, extra {result['extra']}, malformed ids {result['malformed_ids']}")
    print(f"  seeds exactly once in round 0: {result['seeds_once_in_round0']}/{seeds} "
          f"(the other {result['seeds_not_once']}: {result['not_once_explained']} with a failed answer in the "
          f"round-0 journal); journal rows missing {result['journal_missing']}, duplicated {result['journal_dups']}")
    print(f"  eliminations in the journals: {result['reasons']}")
    print(f"  leftover temporaries: {result['leftovers'] or 'none'}")
    if clean is not None and "failed" in clean:
        print(f"  fault-free baseline run failed (exit {clean['failed']})")
    elif clean is not None:
        print(f"  fault-free baseline, same seeds: records {clean['records']} (by round {clean['by_round']}), "
              f"eliminations {clean['reasons']}")
        print(f"  records the faults cost (eliminated items, not lost ones): {clean['records'] - result['records']} "
              f"({(clean['records'] - result['records']) / clean['records']:.1%})")
    for err in errors:
        if err:
            print("  stderr of a failed run: " + err.replace("\n", "\n    "))
    return {**result, "reruns": len(codes) - 1, "wall": wall, "injected": injected}


# --- kills -------------------------------------------------------------------------------------------

ASSEMBLY_TARGETS = (
    ("output temp file created", lambda out: any(n.startswith(f".{out.name}.") for n in temp_files_beside(out))),
    ("output temp file half-written", lambda out: any(
        n.startswith(f".{out.name}.") and _size(out.parent / n) > 0 for n in temp_files_beside(out))),
    ("rejects being written", lambda out: any(n.startswith(f".{out.stem}.rejects") for n in temp_files_beside(out))),
)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _compare_rejects(path: Path, expected: bytes) -> str:
    """The rejects file follows the journals' completion order, which varies from run to run even
    without a kill, so a byte difference that is only an order difference is told apart."""
    if not path.exists():
        return "MISSING"
    got = path.read_bytes()
    if got == expected:
        return "identical"
    if sorted(got.splitlines()) == sorted(expected.splitlines()):
        return "same rows, other order"
    return "DIFFERENT"


def _kill_at_delay(cmd, cwd: Path, delay: float) -> tuple[bool, float]:
    """Start the run, kill -9 it after ``delay`` s; (False, its wall time) when it finished first."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    try:
        proc.wait(timeout=delay)
        return False, time.perf_counter() - started
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, delay


def _kill_when(cmd, cwd: Path, out: Path, target) -> tuple[bool, float]:
    """Start the run, kill -9 it as soon as ``target(out)`` holds; (killed, seconds after start)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    while proc.poll() is None:
        try:
            hit = target(out)
        except FileNotFoundError:
            hit = False
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, time.perf_counter() - started
        time.sleep(0.0005)
    return False, time.perf_counter() - started


def kills(trials: int = 10, seeds: int = 400, *, assembly: int | None = None, latency: float = 0.01,
          unanswered: float = 0.1, judge: bool = False, seed: int = 0) -> dict:
    if assembly is None:
        assembly = 3 if trials >= 5 else min(2, trials)
    rng = random.Random(seed)
    rows = []
    with LoopbackServer(latency) as base, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "seeds.jsonl"
        stripped = make_seeds(data, seeds, unanswered)
        (tmp / "ref").mkdir()
        ref_out = tmp / "ref" / "out.jsonl"
        started = time.perf_counter()
        ref = run_cli(evolve_cmd(data, ref_out, base, tmp / "ref" / "cache", timeout=30, judge=judge), tmp)
        ref_wall = time.perf_counter() - started
        if ref.returncode != 0:
            print(f"kills: the reference run failed (exit {ref.returncode}):\n{ref.stderr[-2000:]}")
            return {"failed": True}
        expected = ref_out.read_bytes()
        expected_rejects = (tmp / "ref" / "out.rejects.jsonl").read_bytes()
        ref_ids = {r["id"] for r in read_jsonl(ref_out)}
        print(f"kills: {seeds} items ({stripped} without an answer), {ROUNDS} rounds, latency {latency * 1000:g} ms; "
              f"reference run {ref_wall:.1f} s, {len(ref_ids)} records, {len(expected)} bytes")
        for t in range(trials):
            kind = "assembly" if t >= trials - assembly else "random"
            span = ref_wall
            for attempt in range(3):   # a kill can miss its moment (the run ended first): again, on a fresh path
                folder = tmp / f"t{t}.{attempt}"
                folder.mkdir()
                out = folder / "out.jsonl"
                cmd = evolve_cmd(data, out, base, folder / "cache", timeout=30, judge=judge)
                if kind == "random":
                    delay = rng.uniform(0.2, span)
                    killed, took = _kill_at_delay(cmd, tmp, delay)
                    label = f"random {delay:5.2f} s" + (f" (attempt {attempt + 1})" if attempt else "")
                    if killed:
                        break
                    span = took    # the run was quicker than the reference: draw within its own time
                    continue
                name, target = ASSEMBLY_TARGETS[(t - (trials - assembly)) % len(ASSEMBLY_TARGETS)]
                killed, delay = _kill_when(cmd, tmp, out, target)
                label = f"at '{name}' ({delay:.2f} s)" + (f" (attempt {attempt + 1})" if attempt else "")
                if killed:
                    break
            phase = phase_of(out, seeds, stripped) if killed else "finished before the kill"
            after_kill = temp_files_beside(out)
            codes = []
            for _ in range(3):
                proc = run_cli(cmd, tmp)
                codes.append(proc.returncode)
                if proc.returncode == 0:
                    break
            records = read_jsonl(out)
            ids = Counter(r["id"] for r in records)
            row = {"trial": t + 1, "kind": kind, "label": label, "killed": killed, "phase": phase,
                   "tmp_after_kill": len(after_kill), "rerun_codes": codes,
                   "identical": out.exists() and out.read_bytes() == expected,
                   "rejects": _compare_rejects(folder / "out.rejects.jsonl", expected_rejects),
                   "lost": len(ref_ids - set(ids)), "duplicated": sum(c - 1 for c in ids.values() if c > 1),
                   "extra": len(set(ids) - ref_ids), "leftovers": temp_files_beside(out),
                   "work_leftovers": work_leftovers(out)}
            rows.append(row)
            print(f"  trial {t + 1:2d}: kill {label}, phase {phase}; temp files after the kill "
                  f"{len(after_kill)}; rerun exit {codes}; identical {'yes' if row['identical'] else 'NO'}"
                  f" (rejects: {row['rejects']}), lost {row['lost']}, "
                  f"duplicated {row['duplicated']}, extra {row['extra']}, leftovers beside the output "
                  f"{row['leftovers'] or 'none'}"
                  + (f", in the work folder {row['work_leftovers']}" if row["work_leftovers"] else ""))
    identical = sum(r["identical"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    duplicated = sum(r["duplicated"] for r in rows)
    with_leftovers = sum(bool(r["leftovers"]) for r in rows)
    print(f"kill trials: {len(rows)}, identical {identical}, lost {lost}, duplicated {duplicated}, "
          f"killed {sum(r['killed'] for r in rows)}, with temp leftovers beside the output {with_leftovers}, "
          f"rejects with the reference's rows {sum(r['rejects'] != 'DIFFERENT' and r['rejects'] != 'MISSING' for r in rows)}")
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["faults", "kills", "all"])
    parser.add_argument("--seeds", type=int, help="items (default: 2000 for faults, 400 for kills)")
    parser.add_argument("--share", type=float, default=0.2, help="faults: share of faulty replies")
    parser.add_argument("--trials", type=int, default=10, help="kills: kill trials")
    parser.add_argument("--assembly-trials", type=int,
                        help="kills: how many of the trials kill during the final assembly (default 3, 2 below 5 trials)")
    parser.add_argument("--latency", type=float, default=0.01, help="server latency, seconds")
    parser.add_argument("--timeout", type=float, default=3.0, help="faults: evolve --timeout, seconds")
    parser.add_argument("--unanswered", type=float, default=0.1, help="share of seeds given without an answer")
    parser.add_argument("--judge", action="store_true", help="run with the information-gain judge (more calls)")
    parser.add_argument("--no-baseline", action="store_true", help="faults: skip the fault-free run of the same seeds")
    args = parser.parse_args()
    if args.which in ("faults", "all"):
        faults(args.seeds if args.seeds and args.which == "faults" else 2000, args.share, latency=args.latency, timeout=args.timeout,
               unanswered=args.unanswered, judge=args.judge, baseline=not args.no_baseline)
    if args.which in ("kills", "all"):
        kills(args.trials, args.seeds if args.seeds and args.which == "kills" else 400,
              assembly=args.assembly_trials, latency=args.latency, unanswered=args.unanswered, judge=args.judge)


if __name__ == "__main__":
    main()
