"""How much of the paper's LLM-call budget a default optimize run uses.

Auto Evol-Instruct (Table 11) puts the cost of optimizing an evolving method at about 6,120 LLM calls
(T = 10 steps, m = 5 candidates, a dev set of 50, mini-batches of 10). This benchmark runs auto-evol's
own optimize loop with the paper's settings (the defaults) and counts the calls it actually makes, for
each selection strategy (full, halving, race), as a share of those 6,120.

No network and no model: both roles are scripted LLMs (tests/conftest.py). Their world:

* a method's text carries a level L (e0 is level 0). An instruction evolved with it fails with
  probability p(L) = 0.45 * 0.75**L, decided by a stable hash, so a run repeats exactly: with
  --noise nested (the default) one draw per instruction and seed, so a higher level fails a subset
  of the items a lower one fails; with --noise fresh a new draw per level (hash of instruction, L and
  seed), so a better method can still measure worse on 50 items and stop the run early. Half the
  failures are an unreadable rewrite (one call), half a rewrite that the evol LLM answers with a
  question back (two calls, caught by F(r)); a good item costs two calls.
* every optimization call writes a method one level up with probability --improve (a hash of the
  seed and the call's number), else a reply with no method in it (the candidate keeps the incumbent's
  text and is not judged again). Readable candidates of one step differ only in a draft number, so they
  fail the same items; which of them wins never changes what follows, so a run gives the same numbers
  at any concurrency. (Racing therefore has nothing to drop between candidates here, and saves calls
  only where a candidate is clearly worse than the incumbent.)

Options are optimize's defaults except: the data below, a level-0 method file instead of e0, track
off, no cache, methods written to a temporary folder, concurrency 8.

The run stops as the paper's does: after 10 steps, or after the first step without a better method
(patience 1). The data are the first --rows questions of the real GSM8K training split
(../shared/data/gsm8k/train.jsonl beside the repository, or --data PATH with --field COLUMN), or
synthetic questions where that file is missing.

    python benchmarks/budget_bench.py [--seeds 5] [--improve 0.5] [--noise nested|fresh]

Per strategy and seed it prints the steps run, the calls per phase (e0's baseline on the dev set,
then the steps' trajectory, analysis, optimization and dev evaluation), the total, the share of
6,120, and e0's -> e*'s failure rate on the dev set; then a mean line per strategy.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
PHASES = ("trajectory", "analysis", "optimization", "dev evaluation")
EVOLVE = re.compile(r"^Rewrite this \(budget level (\d+), draft (\d+)\): ", re.S)
INIT = "Rewrite this (budget level 0, draft 0): {instruction}\n"


def draw(*parts) -> float:
    """A stable number in [0, 1) from its parts."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16) / 16 ** 12


class World:
    """The scripted evol LLM and optimizer of one run (see the module's docstring)."""

    def __init__(self, seed: int, improve: float, noise: str = "nested") -> None:
        self.seed, self.improve, self.noise = seed, improve, noise
        self.optimizations = 0
        self.lock = threading.Lock()

    @staticmethod
    def fail_rate(level: int) -> float:
        return 0.45 * 0.75 ** level

    def evol(self, prompt: str) -> str:
        found = EVOLVE.match(prompt)
        if found is None:                       # the answer to an evolved instruction
            return "Sure, which numbers do you mean?" if "[vague]" in prompt else "The answer is 4, found step by step."
        level, instruction = int(found.group(1)), prompt[found.end():].strip()
        key = (self.seed, instruction) if self.noise == "nested" else (self.seed, level, instruction)
        if draw(*key) >= self.fail_rate(level):
            return f"#Finally Rewritten Instruction#: {instruction} Show every step of the work."
        if draw(self.seed, "kind", instruction) < 0.5:
            return "I would rather not."
        return f"#Finally Rewritten Instruction#: {instruction} [vague]"

    def optimizer(self, prompt: str) -> str:
        if prompt.startswith("You are reviewing"):
            return "Case 1 failed: no usable rewrite."
        with self.lock:
            self.optimizations += 1
            k = self.optimizations
        current = prompt.split("=== End of current method ===")[0]
        level = int(re.search(r"budget level (\d+)", current).group(1))
        if draw(self.seed, "optimize", k) < self.improve:
            return ("Some thoughts first.\n\nOptimized Method:\n"
                    f"Rewrite this (budget level {level + 1}, draft {k}): {{instruction}}\n")
        return "I am not sure how to improve it."


def write_data(args, folder: Path) -> tuple[Path, str, str]:
    """The questions file for the runs, its instruction column, and where it came from."""
    source = Path(args.data) if args.data else GSM8K
    path = folder / "questions.jsonl"
    if source.is_file():
        rows = []
        with source.open(encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if len(rows) >= args.rows:
                    break
                if line.strip():
                    row = json.loads(line)
                    rows.append({"id": row.get("id", i), args.field: row[args.field]})
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        return path, args.field, f"first {len(rows)} rows of {source}"
    rows = [{"id": i, "question": f"Question number {i}?"} for i in range(args.rows)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path, "question", f"{args.rows} synthetic questions ({source} not found)"


def main() -> None:
    from conftest import scripted_llm

    from auto_evol.llm import backends
    from auto_evol.algorithm import selection

    opt_mod = importlib.import_module("auto_evol.optimize")   # the package exports a function of that name

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy (0 .. N-1)")
    parser.add_argument("--improve", type=float, default=0.5,
                        help="chance that one optimization call writes a better method")
    parser.add_argument("--noise", choices=("nested", "fresh"), default="nested",
                        help="nested: one draw per item (a better level fails a subset); fresh: a draw per level")
    parser.add_argument("--data", help=f"JSONL questions file (default: {GSM8K})")
    parser.add_argument("--field", default="question", help="its instruction column")
    parser.add_argument("--rows", type=int, default=400, help="questions taken from the file")
    parser.add_argument("--strategies", default=",".join(selection.STRATEGIES),
                        help="selection strategies, comma-separated")
    args = parser.parse_args()
    backends.configure_cache(None, memory=False)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    defaults = opt_mod.Options()
    paper = opt_mod.PAPER_CALLS

    with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
        folder = Path(tmp)
        data, field, described = write_data(args, folder)
        (folder / "e0-level.md").write_text(INIT, encoding="utf-8")
        print(f"data: {described}; improve {args.improve}; noise {args.noise}; paper budget {paper} calls "
              f"(T={defaults.steps}, m={defaults.candidates}, |D|={defaults.dev_size}, batch {defaults.batch_size}, "
              f"rounds {defaults.rounds}, patience {defaults.patience})")
        print("calls: base = e0 on the dev set, traj = trajectory, anal = analysis, opt = optimization, "
              "dev = candidates on the dev set")
        summary = {}
        started = time.perf_counter()
        for how in strategies:
            runs = []
            for seed in range(args.seeds):
                world = World(seed, args.improve, args.noise)
                evol, _ = scripted_llm(world.evol, temperature=defaults.evol_temperature, name=f"evol-{how}-{seed}")
                optimizer, _ = scripted_llm(world.optimizer, temperature=defaults.optimizer_temperature,
                                            name=f"optimizer-{how}-{seed}")
                result = opt_mod.optimize(
                    evol=evol, optimizer=optimizer, data=str(data), instruction_field=field,
                    init_method=str(folder / "e0-level.md"), seed=seed, selection=how, track=False,
                    cache_dir=None, methods_dir=str(folder / f"methods-{how}-{seed}"), concurrency=8)
                phases = {p: sum(r.calls.get(p, 0) for r in result.history) for p in PHASES}
                base = sum(1 if r.evolved is None else 2 for r in result.initial.results)
                other = result.calls - base - sum(phases.values())
                level = int(re.search(r"budget level (\d+)", result.best.text).group(1))
                accepted = len(result.accepted_steps)
                print(f"{how:>8} seed {seed}: {len(result.history):2d} steps ({accepted} accepted, e* level {level}); "
                      f"calls base {base} + traj {phases['trajectory']} + anal {phases['analysis']} + "
                      f"opt {phases['optimization']} + dev {phases['dev evaluation']}"
                      + (f" + other {other}" if other else "")
                      + f" = {result.calls} = {result.paper_share:.1%} of {paper}; "
                      f"failure rate {result.rates[0]:.2f} -> {result.rates[-1]:.2f}")
                runs.append((result.calls, result.paper_share, len(result.history), result.rates[-1]))
            summary[how] = runs
        print()
        for how, runs in summary.items():
            n = len(runs)
            calls, share, steps, rate = (sum(r[k] for r in runs) / n for k in range(4))
            print(f"{how:>8}: mean calls {calls:.0f}, mean share {share:.1%}, mean steps {steps:.1f}, "
                  f"mean e* failure rate {rate:.2f} ({n} seeds)")
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
