"""Auto Evol-Instruct: optimize an evolving method, step by step, from e0 to e*.

Each step t: sample a mini-batch from the training pool; evolve it ``rounds`` times with e_{t-1}
(the trajectory); m times, concurrently, the optimizer analyses the trajectory (feedback) and writes
a candidate method from that feedback; every candidate evolves the held-out dev set and the evol LLM
answers each evolved instruction; the candidate with the lowest failure rate becomes e_t if it beats
e_{t-1} (a tie keeps e_{t-1}). Stop after ``patience`` steps without improvement, or after ``steps``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import llm as llm_mod
from . import method as method_mod
from . import selection
from .candidate import Candidate, propose
from .devset import Split, batch, load_split
from .errors import UserError
from .evaluation import Evaluation, judge
from .feedback import analyse
from .llm import LLMError, Llm, RoleSettings
from .method import Method
from .trajectory import Trajectory, evolve

PHASES = ("trajectory", "analysis", "optimization", "dev evaluation")


@dataclass
class Options:
    """Every setting of an optimize run. Defaults are the paper's."""
    data: str = "gsm8k_seed"
    instruction_field: str | None = None
    init_method: str = "e0"
    steps: int = 10
    candidates: int = 5
    batch_size: int = 10
    dev_size: int = 50
    rounds: int = 1
    patience: int = 1
    seed: int = 0
    evol_model: str | None = None
    optimizer_model: str | None = None
    api_base: str | None = None
    evol_temperature: float = llm_mod.EVOL_DEFAULTS.temperature
    evol_top_p: float | None = llm_mod.EVOL_DEFAULTS.top_p
    evol_max_tokens: int = llm_mod.EVOL_DEFAULTS.max_tokens
    optimizer_temperature: float = llm_mod.OPTIMIZER_DEFAULTS.temperature
    optimizer_top_p: float | None = llm_mod.OPTIMIZER_DEFAULTS.top_p
    optimizer_max_tokens: int = llm_mod.OPTIMIZER_DEFAULTS.max_tokens
    concurrency: int = 4
    name: str | None = None
    methods_dir: str = "methods"
    cache_dir: str | None = str(Path.home() / ".cache" / "auto-evol")
    track: bool = True

    def evol_settings(self) -> RoleSettings:
        return RoleSettings(self.evol_model, self.api_base, self.evol_temperature, self.evol_top_p,
                            self.evol_max_tokens)

    def optimizer_settings(self) -> RoleSettings:
        return RoleSettings(self.optimizer_model, self.api_base, self.optimizer_temperature,
                            self.optimizer_top_p, self.optimizer_max_tokens)

    def validate(self) -> None:
        for name in ("steps", "candidates", "batch_size", "dev_size", "rounds", "patience", "concurrency",
                     "evol_max_tokens", "optimizer_max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("evol_temperature", "optimizer_temperature"):
            if not 0 <= getattr(self, name) <= 2:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 2")


@dataclass(frozen=True)
class StepRecord:
    step: int
    incumbent: Method
    incumbent_rate: float
    candidates: tuple[Candidate, ...]
    accepted: int | None            # index of the candidate that became e_t, or None
    calls: dict[str, int]           # LLM calls per phase
    cached: dict[str, int]          # of which answered from the cache
    seconds: dict[str, float]       # wall seconds per phase

    @property
    def rates(self) -> list[float]:
        return [c.evaluation.rate for c in self.candidates]


@dataclass
class OptimizeResult:
    best: Method                              # e*
    initial: Evaluation                       # e0 on the dev set
    history: list[StepRecord] = field(default_factory=list)
    method_path: Path | None = None
    run_id: str | None = None
    usage: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rates(self) -> list[float]:
        """Failure rate of the incumbent after each step, starting with e0's."""
        rates = [self.initial.rate]
        for record in self.history:
            rates.append(record.rates[record.accepted] if record.accepted is not None else rates[-1])
        return rates


class Reporter:
    """What the loop tells the outside world; the default says nothing."""

    def start(self, options: Options, split: Split, init: Method) -> None: ...
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, name: str) -> None: ...
    def baseline(self, evaluation: Evaluation) -> None: ...
    def step(self, record: StepRecord) -> None: ...
    def finish(self, result: OptimizeResult) -> None: ...


T = TypeVar("T")
R = TypeVar("R")


class _Runner:
    """Runs one phase's independent LLM tasks concurrently and counts its calls and seconds."""

    def __init__(self, pool: ThreadPoolExecutor, reporter: Reporter, llms: Iterable[Llm]) -> None:
        self.pool, self.reporter, self.llms = pool, reporter, list(llms)
        self.calls: dict[str, int] = {}
        self.cached: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def map(self, phase: str, fn: Callable[[T], R], items: list[T]) -> list[R]:
        before = self._counts()
        started = time.perf_counter()
        self.reporter.phase(phase, len(items))

        def run(item: T) -> R:
            out = fn(item)
            self.reporter.advance(phase)
            return out

        results = list(self.pool.map(run, items))
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started
        after = self._counts()
        self.calls[phase] = self.calls.get(phase, 0) + after[0] - before[0]
        self.cached[phase] = self.cached.get(phase, 0) + after[1] - before[1]
        return results

    def _counts(self) -> tuple[int, int]:
        return (sum(llm.usage.calls for llm in self.llms), sum(llm.usage.cached for llm in self.llms))

    def take(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        out = self.calls, self.cached, {k: round(v, 2) for k, v in self.seconds.items()}
        self.calls, self.cached, self.seconds = {}, {}, {}
        return out


def _rollout(seed: int, step: int, index: int) -> int:
    """A stable id per (seed, step, candidate): separates the m sampled optimizer calls in the cache."""
    digest = hashlib.sha256(f"{seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def evaluate(method: Method, dev: list, evol: Llm, runner: _Runner) -> Evaluation:
    return Evaluation(method, tuple(runner.map("dev evaluation", lambda item: judge(evol, method, item), dev)))


def optimize(options: Options | None = None, *, reporter: Reporter | None = None,
             evol: Llm | None = None, optimizer: Llm | None = None, **overrides) -> OptimizeResult:
    """Run Auto Evol-Instruct and return e* with the method history and failure rates.

    ``optimize(data="gsm8k_seed", steps=2)`` takes the same options as the command line;
    ``evol``/``optimizer`` may be given ready-made (a scripted LM in tests).
    """
    options = dataclasses.replace(options or Options(), **overrides)
    options.validate()
    reporter = reporter or Reporter()
    # Everything that can be wrong with the input is found before the first LLM call.
    init = method_mod.load(options.init_method)
    split = load_split(options.data, dev_size=options.dev_size, batch_size=options.batch_size,
                       seed=options.seed, instruction_field=options.instruction_field)
    if evol is None or optimizer is None:
        llm_mod.check(options.evol_settings(), "--evol-model")
        llm_mod.check(options.optimizer_settings(), "--optimizer-model")
        llm_mod.configure_cache(Path(options.cache_dir) / "dspy" if options.cache_dir else None)
        slots = max(1, min(options.concurrency, 8))
        evol = evol or llm_mod.build(options.evol_settings(), slots=slots)
        optimizer = optimizer or llm_mod.build(options.optimizer_settings(), slots=slots)

    from . import tracking  # MLflow is imported only when a run starts

    tracker = tracking.OptimizeTracker(options, split, init) if options.track else tracking.NullTracker()
    started = time.perf_counter()
    reporter.start(options, split, init)
    with ThreadPoolExecutor(options.concurrency) as pool, tracker:
        runner = _Runner(pool, reporter, (evol, optimizer))
        incumbent = init
        initial = incumbent_eval = evaluate(init, split.dev, evol, runner)
        runner.take()
        reporter.baseline(initial)
        tracker.baseline(initial)
        result = OptimizeResult(best=init, initial=initial)
        accepted_flags: list[bool] = []
        for step in range(1, options.steps + 1):
            record = _step(step, incumbent, incumbent_eval, split, options, evol, optimizer, runner)
            result.history.append(record)
            reporter.step(record)
            tracker.step(record)
            accepted_flags.append(record.accepted is not None)
            if record.accepted is not None:
                winner = record.candidates[record.accepted]
                incumbent, incumbent_eval = winner.method, winner.evaluation
            if selection.should_stop(accepted_flags, options.patience):
                break
        result.best = _final_method(incumbent, init, split.name, options, result.history)
        result.usage = {"evol": evol.usage.snapshot(), "optimizer": optimizer.usage.snapshot()}
        result.seconds = round(time.perf_counter() - started, 2)
        result.method_path = method_mod.save(result.best, Path(options.methods_dir))
        tracker.finish(result)
        result.run_id = tracker.run_id
    reporter.finish(result)
    return result


def _step(step: int, incumbent: Method, incumbent_eval: Evaluation, split: Split, options: Options,
          evol: Llm, optimizer: Llm, runner: _Runner) -> StepRecord:
    mini_batch = batch(split.train, options.batch_size, options.seed, step)
    evolutions = runner.map("trajectory", lambda item: evolve(evol, incumbent, item, options.rounds), mini_batch)
    trajectory = Trajectory(incumbent, tuple(evolutions))

    def feedback(index: int) -> str | None:
        try:
            return analyse(optimizer, incumbent, trajectory, rollout=_rollout(options.seed, step, index))
        except LLMError:
            return None

    indices = list(range(options.candidates))
    feedbacks = runner.map("analysis", feedback, indices)

    def candidate(index: int) -> Candidate:
        text = feedbacks[index]
        if text is None:
            return Candidate(index, incumbent, "(the analysis call failed)", readable=False)
        return propose(optimizer, incumbent, text, index=index, rollout=_rollout(options.seed, step, index),
                       name=f"step{step}-c{index + 1}",
                       made_by=f"optimizer {optimizer.settings.label}, step {step}, candidate {index + 1}")

    candidates = runner.map("optimization", candidate, indices)
    # Every (candidate, dev item) pair is one task, so all m x |D| judgements share the pool.
    pairs = [(c, item) for c in candidates for item in split.dev]
    judged = runner.map("dev evaluation", lambda pair: judge(evol, pair[0].method, pair[1]), pairs)
    n = len(split.dev)
    candidates = [dataclasses.replace(c, evaluation=Evaluation(c.method, tuple(judged[i * n:(i + 1) * n])))
                  for i, c in enumerate(candidates)]
    chosen = selection.winner(incumbent_eval.rate, [c.evaluation.rate for c in candidates])
    calls, cached, seconds = runner.take()
    return StepRecord(step, incumbent, incumbent_eval.rate, tuple(candidates), chosen, calls, cached, seconds)


def _final_method(best: Method, init: Method, data_name: str, options: Options,
                  history: list[StepRecord]) -> Method:
    """e* as it is saved: the winning text, named for the data set, with its lineage in the header."""
    directory = Path(options.methods_dir)
    name = options.name or method_mod.free_name(f"{data_name}-{_dt.date.today().isoformat()}", directory)
    lineage = [init.name] + [r.candidates[r.accepted].method.name for r in history if r.accepted is not None]
    made_by = (f"auto-evol optimize on {data_name}: evol {options.evol_settings().label}, "
               f"optimizer {options.optimizer_settings().label}")
    return Method(name=name, text=best.text, parent=best.parent or best.name, made_by=made_by,
                  extra={"lineage": " -> ".join(lineage), "hash": best.hash})
