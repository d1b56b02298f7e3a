"""Regenerate dev_sets/gsm8k_seed/ from reasoning-gym's gsm_symbolic generator.

    pip install reasoning-gym
    python dev_sets/make_gsm8k_seed.py          # writes train.jsonl and dev.jsonl

The files are committed, so runs never need this script or the network. The same seed always
gives the same files: problems are drawn once, deduplicated by their text, shuffled with the seed,
and the first DEV_SIZE become the held-out dev set; the rest is the training pool. No problem text
appears in both files (tests/test_devset.py checks it).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 20261121
DRAWN = 700          # problems asked of the generator before deduplication
DEV_SIZE = 50
HERE = Path(__file__).resolve().parent / "gsm8k_seed"
# reasoning-gym appends an answer-format request to every problem; GSM8K problems carry none.
FORMAT_SUFFIX = re.compile(r"\s*Give the result as your final answer\.\s*Do not include units\.\s*$")


def main() -> None:
    import reasoning_gym

    seen: set[str] = set()
    rows = []
    for i, item in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=DRAWN, seed=SEED)):
        question = FORMAT_SUFFIX.sub("", item["question"]).strip()
        if question in seen:
            continue
        seen.add(question)
        rows.append({
            "id": f"gsm-{i:04d}",
            "instruction": question,
            "answer": str(item["answer"]),
        })
    random.Random(SEED).shuffle(rows)
    dev, train = rows[:DEV_SIZE], rows[DEV_SIZE:]
    HERE.mkdir(parents=True, exist_ok=True)
    for name, part in (("dev.jsonl", dev), ("train.jsonl", train)):
        with open(HERE / name, "w", encoding="utf-8") as fh:
            for row in part:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(train)} training problems, {len(dev)} dev problems -> {HERE}")


if __name__ == "__main__":
    main()
