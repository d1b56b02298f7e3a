"""Successive halving and racing against full dev evaluation, with candidates whose true failure
rates are known.

A scripted evol LLM (no network, no model) makes each candidate method fail a dev item with the
method's true rate (decided by a hash of method, item and seed, so a run repeats exactly). Each seed
draws five candidates with a profile's rates in random order and 50 dev items; both strategies run
through auto-evol's own judging code, and the LLM calls they make are counted.

    python benchmarks/halving_bench.py [--seeds 500] [--rates 0.2,0.35,0.5,0.6,0.7] [--direct 4000]

--direct N also runs the same selection functions on N seeds with the pass/fail outcomes drawn
directly (no LLM layer), for tighter figures.

What to expect. On a fixed dev set, full evaluation's choice (fewest failures) is the best possible
decision from all m x |D| results when nothing favours one candidate beforehand: swapping two
candidates' rates makes the data less likely whenever the one with fewer failures gets the higher
rate. Halving reads a subset of those same results, so it can at best tie full evaluation on
average; where it loses, it is because the true best was dropped on an early rung. The benchmark
prints that split, and the profiles show where the loss is large (close runners-up) or nil. Racing
drops only candidates that are clearly worse on the same items, so its cost adapts to how close the
candidates are instead of being fixed at half.
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

PROFILES = {"spread": (0.20, 0.35, 0.50, 0.60, 0.70),   # the example: one close runner-up
            "clear": (0.10, 0.35, 0.50, 0.60, 0.70),    # a clear best
            "close": (0.30, 0.35, 0.40, 0.45, 0.50)}    # all close: hard for any strategy


def main() -> None:
    from conftest import scripted_llm

    from auto_evol.llm import backends
    from auto_evol.algorithm import selection
    from auto_evol.storage.data import Item
    from auto_evol.algorithm.evaluation import judge_item
    from auto_evol.algorithm.method import Method

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--dev", type=int, default=50)
    parser.add_argument("--rates", help="one profile's true failure rates, comma-separated (default: three profiles)")
    parser.add_argument("--direct", type=int, default=0, help="seeds for the selection-only run (0: skip it)")
    args = parser.parse_args()
    backends.configure_cache(None, memory=False)
    state = {"seed": 0}

    def script(prompt: str) -> str:
        if prompt.startswith("Evolve (rate"):
            rate = float(prompt.split("rate ", 1)[1].split(")", 1)[0])
            item = prompt.rsplit("Item ", 1)[1]
            draw = int(hashlib.sha256(f"{state['seed']}:{rate}:{item}".encode()).hexdigest()[:8], 16) / 16 ** 8
            return "#Finally Rewritten Instruction#: " + ("(fails)" if draw < rate else "fine") + f" item {item}"
        return "Sure, what do you mean?" if "(fails)" in prompt else "Done."

    evol, _ = scripted_llm(script, name="halving-bench")
    profiles = {"given": tuple(float(r) for r in args.rates.split(","))} if args.rates else PROFILES
    print(f"{args.seeds} seeds per profile, {args.dev} dev items, 2 calls per judged item")
    for profile, rates_ in profiles.items():
        hits = {"full": 0, "halving": 0, "race": 0}
        calls = {"full": 0, "halving": 0, "race": 0}
        agree = dropped_early = 0
        for seed in range(args.seeds):
            state["seed"] = seed
            rates = random.Random(seed).sample(rates_, len(rates_))
            methods = [Method(name=f"c{i}", text=f"Evolve (rate {r}) Item {{instruction}}")
                       for i, r in enumerate(rates)]
            dev = [Item(id=str(i), instruction=f"{seed}-{i}") for i in range(args.dev)]
            best = rates.index(min(rates))

            def judge_pairs(pairs):
                return [judge_item(evol, methods[c], dev[i]).failure is not None for c, i in pairs]

            before = evol.usage.calls
            full = [sum(judge_pairs([(c, i) for i in range(args.dev)])) for c in range(len(methods))]
            full_winner = min(range(len(methods)), key=lambda c: (full[c], c))
            calls["full"] += evol.usage.calls - before
            before = evol.usage.calls
            survivor, failures = selection.successive_halving(len(methods), args.dev, judge_pairs)
            calls["halving"] += evol.usage.calls - before
            before = evol.usage.calls
            raced, _ = selection.race(len(methods), args.dev, judge_pairs)
            calls["race"] += evol.usage.calls - before
            hits["race"] += raced == best
            hits["full"] += full_winner == best
            hits["halving"] += survivor == best
            agree += survivor == full_winner
            dropped_early += len(failures[best]) < args.dev
        print(f"  {profile} {rates_}:")
        for name in hits:
            print(f"    {name:>8}: picks the true best {hits[name] / args.seeds:.1%}, "
                  f"dev-evaluation calls {calls[name] / args.seeds:.0f} per step "
                  f"({calls[name] / calls['full']:.1%} of full)")
        print(f"    halving agrees with full evaluation's winner {agree / args.seeds:.1%}; the true best was "
              f"dropped before halving's last rung in {dropped_early / args.seeds:.1%} of seeds")

    if args.direct:
        direct(profiles, args.direct, args.dev)


def direct(profiles: dict, seeds: int, n_items: int) -> None:
    """The selection functions alone, on pass/fail outcomes drawn directly from the true rates."""
    import numpy as np

    from auto_evol.algorithm import selection

    print(f"selection only, {seeds} seeds per profile, {n_items} dev items (judged pairs, not calls):")
    for profile, rates_ in profiles.items():
        hits = {"full": 0, "halving": 0, "race": 0}
        pairs = {"full": 0, "halving": 0, "race": 0}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            rates = rng.permutation(rates_)
            outcomes = rng.random((len(rates), n_items)) < rates[:, None]
            best = int(np.argmin(rates))
            hits["full"] += min(range(len(rates)), key=lambda c: (outcomes[c].sum(), c)) == best
            pairs["full"] += outcomes.size
            for name, strategy in (("halving", selection.successive_halving), ("race", selection.race)):
                def judge(chosen):
                    pairs[name] += len(chosen)
                    return [outcomes[c, i] for c, i in chosen]

                hits[name] += strategy(len(rates), n_items, judge)[0] == best
        print(f"  {profile} {tuple(rates_)}: " + ", ".join(
            f"{name} {hits[name] / seeds:.1%} at {pairs[name] / pairs['full']:.1%}" for name in hits))


if __name__ == "__main__":
    main()
