"""Regenerate dev_sets/gsm8k_seed/ from GSM8K's training split (openai/grade-school-math, MIT).

    python dev_sets/make_gsm8k_seed.py                      # reads ../shared/data/gsm8k/train.jsonl
    python dev_sets/make_gsm8k_seed.py PATH/TO/train.jsonl  # GSM8K's train.jsonl from anywhere

The files are committed, so runs never need this script, the source file or the network. The same
source always gives the same files (the seed is fixed):

- every problem is grouped with its near-duplicates by the rule ``--data FILE`` splits with
  (auto_evol.devset.near_duplicate_groups: word-set Jaccard >= 0.6, numbers normalised). GSM8K's
  7,473 training problems hold 88 such groups of 2 to 8 problems, 187 problems in all: the same
  problem told again with other names and numbers;
- the dev set is 50 problems drawn from those with no near-duplicate anywhere in GSM8K's training
  split, so no training problem, in the pool or not, is a rewrite of a dev problem;
- the training pool is 2,000 problems drawn from the other 7,423 (the paper optimizes on about
  2,000), written in their original order.

Rows: ``id`` (``gsm8k-train-I``, I the 0-based line index in GSM8K's train.jsonl, which is also the
row index of the Hugging Face openai/gsm8k train split), ``instruction`` (the question), ``answer``
(the number after ``####``, commas removed) and ``solution`` (the worked solution without its
``<<...>>`` calculator notes and its ``#### n`` line). A malformed source line stops the script with
one line naming it.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auto_evol.algorithm.devset import near_duplicate_groups  # noqa: E402
from auto_evol.core.errors import UserError  # noqa: E402

SEED = 20261122
TRAIN_SIZE = 2000
DEV_SIZE = 50
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
HERE = Path(__file__).resolve().parent / "gsm8k_seed"
FINAL = re.compile(r"\n?####\s*(.*?)\s*$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
CALCULATOR = re.compile(r"<<[^<>]*>>")


def read_problems(path: Path) -> list[dict]:
    """GSM8K's rows as {index, question, answer, solution}; the first malformed line is a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (give GSM8K's train.jsonl as the first argument)")
    problems = []
    with open(path, "rb") as fh:
        for index, raw in enumerate(fh):
            where = f"{path}:{index + 1}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise UserError(f"{where}: not UTF-8 ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            question, worked = (row.get("question"), row.get("answer")) if isinstance(row, dict) else (None, None)
            if not isinstance(question, str) or not question.strip():
                raise UserError(f"{where}: empty or missing 'question'")
            final = FINAL.search(worked) if isinstance(worked, str) else None
            if final is None:
                raise UserError(f"{where}: 'answer' does not end in '#### <number>'")
            number = final.group(1).replace(",", "")
            if not NUMBER.fullmatch(number):
                raise UserError(f"{where}: final answer {final.group(1)!r} is not a number")
            solution = CALCULATOR.sub("", worked[: final.start()]).strip()
            problems.append({"index": index, "question": question.strip(), "answer": number,
                             "solution": solution})
    if len(problems) < TRAIN_SIZE + DEV_SIZE:
        raise UserError(f"{path}: {len(problems)} problems, {TRAIN_SIZE + DEV_SIZE} needed")
    return problems


def choose(problems: list[dict]) -> tuple[list[dict], list[dict], int]:
    """(train, dev, near-duplicate groups found): dev from problems without a near-duplicate."""
    labels = near_duplicate_groups([p["question"] for p in problems])
    sizes: dict[int, int] = {}
    for label in labels:
        sizes[label] = sizes.get(label, 0) + 1
    alone = [i for i, label in enumerate(labels) if sizes[label] == 1]
    rng = random.Random(SEED)
    dev = rng.sample(alone, DEV_SIZE)
    taken = set(dev)
    train = sorted(rng.sample([i for i in range(len(problems)) if i not in taken], TRAIN_SIZE))
    return [problems[i] for i in train], [problems[i] for i in dev], sum(1 for n in sizes.values() if n > 1)


def write(path: Path, problems: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps({"id": f"gsm8k-train-{p['index']}", "instruction": p["question"],
                                 "answer": p["answer"], "solution": p["solution"]}, ensure_ascii=False) + "\n")


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    problems = read_problems(source)
    train, dev, groups = choose(problems)
    HERE.mkdir(parents=True, exist_ok=True)
    write(HERE / "train.jsonl", train)
    write(HERE / "dev.jsonl", dev)
    if (source.parent / "LICENSE").is_file():
        shutil.copyfile(source.parent / "LICENSE", HERE / "LICENSE")
    print(f"{len(problems)} GSM8K problems, {groups} near-duplicate groups -> "
          f"{len(train)} training and {len(dev)} dev problems in {HERE}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as exc:
        print(f"make_gsm8k_seed: error: {exc}", file=sys.stderr)
        sys.exit(2)
