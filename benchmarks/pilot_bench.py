"""evolve --dry-run --pilot against the run it estimates: per role, the estimate's tokens beside those
the run then spends (the pilot's kept items plus the real run's), and the estimate on paper.

A loopback server answers like an evolver given e0 (tests/fake_openai.e0_world: four steps, a methods
list and a plan of 60-160 words each and two rewrites, the judge 'equal' for 1 in 9, answers of 40-240
words, 1 in 7 a short 'Sorry'); usage is counted in words. Seeds: gsm8k_seed's training problems.

    python benchmarks/pilot_bench.py [SEEDS [PILOT [ROUNDS [OFFSET]]]]      # default 500 20 2 0
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, e0_world  # noqa: E402

from auto_evol.evolve import EvolveOptions, evolve  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    pilot = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    offset = int(sys.argv[4]) if len(sys.argv) > 4 else 0   # seeds from this line of gsm8k_seed's training file
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-fake")
    rows = [json.loads(line) for line in (ROOT / "dev_sets" / "gsm8k_seed" / "train.jsonl").read_text().splitlines()][offset:offset + n]
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(reply=e0_world) as fake:
        data = Path(tmp) / "seeds.jsonl"
        data.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"]}) + "\n" for r in rows))
        kw = dict(data=str(data), out=str(Path(tmp) / "o.jsonl"), methods=["e0"], rounds=rounds,
                  evol_model="openai/fake", api_base=fake.base, track=False, concurrency=32)
        paper = evolve(EvolveOptions(**kw), dry_run=True)
        started = time.perf_counter()
        estimate = evolve(EvolveOptions(**kw), dry_run=True, pilot=pilot)
        took = time.perf_counter() - started
        result = evolve(EvolveOptions(**kw))
    used = estimate["pilot"]["used"]
    print(f"{n} seeds from line {offset}, {rounds} rounds, e0, pilot {pilot} ({took:.1f} s); tokens: estimate / spent (pilot + run) "
          f"/ error; on paper")
    for role in ("evol", "answer"):
        for k in ("input_tokens", "output_tokens"):
            spent = used[role][k] + result.calls[role][k]
            est, lo_hi = estimate["roles"][role][k], estimate["roles"][role]["range"][k]
            print(f"  {role:6} {k:13} {est:>9,} ({lo_hi[0]:,}-{lo_hi[1]:,}) / {spent:>9,} / {est / spent - 1:+.1%}; "
                  f"paper {paper['roles'][role][k]:,} ({paper['roles'][role][k] / spent - 1:+.0%})")
    calls = sum(result.calls[r]["calls"] for r in result.calls)
    print(f"  the real run made {calls:,} calls; the pilot's {used['evol']['calls'] + used['answer']['calls']:,} "
          f"were not made again")


if __name__ == "__main__":
    main()
