"""Successive halving against full dev evaluation, with candidates whose true failure rates are known.

A scripted evol LLM (no network, no model) makes each candidate method fail a dev item with the
method's true rate (decided by a hash of method, item and seed, so a run repeats exactly). Each seed
draws five candidates with rates 0.20, 0.35, 0.50, 0.60, 0.70 in random order and 50 dev items; both
strategies run through auto-evol's own judging code, and the LLM calls they make are counted.

    python benchmarks/halving_bench.py [--seeds 300]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

RATES = (0.20, 0.35, 0.50, 0.60, 0.70)


def main() -> None:
    from conftest import scripted_llm

    from auto_evol import llm, selection
    from auto_evol.data import Item
    from auto_evol.evaluation import judge
    from auto_evol.method import Method

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--dev", type=int, default=50)
    args = parser.parse_args()
    llm.configure_cache(None, memory=False)
    state = {"seed": 0}

    def script(prompt: str) -> str:
        if prompt.startswith("Evolve (rate"):
            rate = float(prompt.split("rate ", 1)[1].split(")", 1)[0])
            item = prompt.rsplit("Item ", 1)[1]
            draw = int(hashlib.sha256(f"{state['seed']}:{rate}:{item}".encode()).hexdigest()[:8], 16) / 16 ** 8
            return "#Finally Rewritten Instruction#: " + ("(fails)" if draw < rate else "fine") + f" item {item}"
        return "Sure, what do you mean?" if "(fails)" in prompt else "Done."

    evol, _ = scripted_llm(script, name="halving-bench")
    stats = {"full": [0, 0], "halving": [0, 0]}   # [true best picked, calls]
    for seed in range(args.seeds):
        state["seed"] = seed
        rates = random.Random(seed).sample(RATES, len(RATES))
        methods = [Method(name=f"c{i}", text=f"Evolve (rate {r}) Item {{instruction}}") for i, r in enumerate(rates)]
        dev = [Item(id=str(i), instruction=f"{seed}-{i}") for i in range(args.dev)]
        best = rates.index(min(rates))

        def judge_pairs(pairs):
            return [judge(evol, methods[c], dev[i]).failure is not None for c, i in pairs]

        before = evol.usage.calls
        full = [sum(judge_pairs([(c, i) for i in range(args.dev)])) for c in range(len(methods))]
        full_winner = min(range(len(methods)), key=lambda c: (full[c], c))
        stats["full"][0] += full_winner == best
        stats["full"][1] += evol.usage.calls - before
        before = evol.usage.calls
        survivor, _ = selection.successive_halving(len(methods), args.dev, judge_pairs)
        stats["halving"][0] += survivor == best
        stats["halving"][1] += evol.usage.calls - before
    print(f"{args.seeds} seeds, 5 candidates (true failure rates {RATES}), {args.dev} dev items, 2 calls per judged item")
    for name, (hits, calls) in stats.items():
        print(f"  {name:>8}: picks the true best {hits / args.seeds:.1%}, dev-evaluation calls {calls / args.seeds:.0f} "
              f"per step")
    print(f"  halving uses {stats['halving'][1] / stats['full'][1]:.1%} of full evaluation's calls")


if __name__ == "__main__":
    main()
