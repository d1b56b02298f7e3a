"""--decontaminate at scale: 100,000 records checked against 1,319 benchmark problems, planted copies found.

GSM8K's test split is not in ../shared/data (deliberately), so the benchmark stands in as the last
1,319 problems of the training split (the test split's size); the records are the other 6,154
problems, each also as an "evolution" (the problem with one to three constraint sentences appended,
as e0 adds 10 to 20 words) and reworded with a few words replaced, repeated to 100,000 records; 100
benchmark problems are planted among them: 50 verbatim inside an evolution, 25 with two words and
25 with three words replaced at random. Prints the index and check times, the planted ones caught, and the clean records flagged
(GSM8K's training split tells a few problems twice; those count as flagged here).

    python benchmarks/decontaminate_bench.py [PATH/TO/gsm8k/train.jsonl [N]]
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from auto_evol.algorithm.contamination import BenchmarkIndex

TRAIN = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"
ADDED = ["Give the answer in cents.", "Show every intermediate result.", "Assume the prices rose by 10% first.",
         "Explain which quantity is not needed.", "Check the answer against the totals."]


def reword(text: str, rng: random.Random, k: int) -> str:
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = rng.choice(["some", "several", "the", "each", "her", "his"])
    return " ".join(words)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else TRAIN
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 13
    problems = [json.loads(line)["question"] for line in path.read_text().splitlines()]
    bench, pool = problems[-1319:], problems[:-1319]
    rng = random.Random(0)
    records = []
    while len(records) < 100_000 - 100:
        q = pool[len(records) % len(pool)]
        kind = (len(records) // len(pool)) % 3
        records.append((False, q if kind == 0 else
                        q + " " + " ".join(rng.sample(ADDED, rng.randint(1, 3))) if kind == 1 else reword(q, rng, 2)))
    planted = [("inside an evolution", bench[i] + " " + rng.choice(ADDED)) for i in rng.sample(range(len(bench)), 50)]
    planted += [(f"{k} words replaced", reword(bench[i], rng, k)) for k in (2, 3) for i in rng.sample(range(len(bench)), 25)]
    for item in planted:
        records.insert(rng.randrange(len(records)), item)
    started = time.perf_counter()
    index = BenchmarkIndex((("gsm8k-stand-in", f"b{i}", q) for i, q in enumerate(bench)), n=n)
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    found = [(dirty, index.check(text)) for dirty, text in records]
    checked = time.perf_counter() - started
    kinds: dict[str, list[int]] = {}
    for dirty, hit in found:
        if dirty:
            kinds.setdefault(dirty, [0, 0])[0] += hit is not None
            kinds[dirty][1] += 1
    flagged = sum(1 for dirty, hit in found if not dirty and hit)
    print(f"{n}-grams: {len(bench):,} benchmark items indexed in {indexed:.2f} s; {len(records):,} records checked in "
          f"{checked:.1f} s; planted caught: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in kinds.items())
          + f"; clean records flagged {flagged:,} ({flagged / len(records):.2%}; GSM8K tells some problems twice)")


if __name__ == "__main__":
    main()
