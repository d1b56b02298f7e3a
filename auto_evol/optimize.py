"""Auto Evol-Instruct: optimize an evolving method, step by step, from e0 to e*.

Each step t: sample a mini-batch from the training pool; evolve it ``rounds`` times with e_{t-1}
(the trajectory); m times, concurrently, the optimizer analyses the trajectory (feedback) and writes
a candidate method from that feedback; every candidate evolves the held-out dev set and the evol LLM
answers each evolved instruction; the candidate with the lowest failure rate becomes e_t if it beats
e_{t-1} (a tie keeps e_{t-1}). Stop after ``patience`` steps without improvement, or after ``steps``.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .algorithm import method as method_mod
from .algorithm import selection, stats
from .algorithm.candidate import Candidate, apropose
from .algorithm.devset import Split, batch, dev_fingerprint, load_split
from .algorithm.evaluation import Evaluation, ajudge_item
from .algorithm.feedback import aanalyse
from .algorithm.method import Method
from .algorithm.phases import Phases
from .algorithm.trajectory import Trajectory, aevolve_rounds, rollout_id
from .core.errors import Outage, UserError
from .core.observer import Observer, Observers, Queued
from .llm import backends
from .llm import client as llm_mod
from .llm import concurrency as concurrency_mod
from .llm import cost as cost_mod
from .llm.client import LLMError, Llm, RoleSettings, Usage
from .llm.roles import build_roles
from .storage.checkpoint import check_writable

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
    concurrency: int | str = "auto"   # calls in flight: auto (the adaptive limit for an OpenAI-compatible server,
                                      # 64 for a provider, 8 for a GGUF model) or a number, per server and model
    name: str | None = None
    methods_dir: str = "methods"
    cache_dir: str | None = backends.DEFAULT_CACHE_DIR
    track: bool = True
    experiment: str | None = None   # MLflow experiment; the data set's name when None
    trace: bool = False             # record every LLM call as an MLflow trace
    resume: str | None = None       # run id of an interrupted run to go on with
    selection: str = selection.DEFAULT   # a name in selection.STRATEGIES
    accept: str = "lower"           # lower: a lower failure rate wins; paired: only a paired test's verdict
    confidence: float = 0.95        # for --accept paired
    max_error_rate: float = llm_mod.MAX_ERROR_RATE   # stop when this share of a role's recent calls failed
    structured: str = "auto"        # JSON-schema replies (evolver, analysis, optimization): auto | on | off
    max_cost: float | None = None   # USD this process may spend: no step starts that would pass it (cost.py)
    batch: str | None = None        # all | evol (the same): the dev evaluation's calls go to the provider's batch API
    ray: str | None = None          # the dev evaluation spreads over a Ray cluster (pipeline.py): its address, ""
                                    # for RAY_ADDRESS or a local Ray; the trajectories and the optimizer stay here
    ray_workers: int | None = None  # workers judging dev pairs under --ray; None: 2 per node
    ray_batch_size: int = 16        # dev pairs one worker takes at once (its calls in flight)
    decontaminate: list[str] = field(default_factory=list)   # benchmark sets: their items are left out of the
                                    # training pool and the dev set (evolve's check, contamination.py)
    decontaminate_ngram: int = 13

    def evol_settings(self) -> RoleSettings:
        return RoleSettings(self.evol_model, self.api_base, self.evol_temperature, self.evol_top_p,
                            self.evol_max_tokens, structured=self.structured)

    def optimizer_settings(self) -> RoleSettings:
        return RoleSettings(self.optimizer_model, self.api_base, self.optimizer_temperature,
                            self.optimizer_top_p, self.optimizer_max_tokens, structured=self.structured)

    def validate(self) -> None:
        self.concurrency = concurrency_mod.parse(self.concurrency)
        for name in ("steps", "candidates", "batch_size", "dev_size", "rounds", "patience",
                     "evol_max_tokens", "optimizer_max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.selection not in selection.STRATEGIES:
            raise UserError(f"--selection must be {selection.names()}, got {self.selection!r}")
        if self.accept not in ("lower", "paired"):
            raise UserError(f"--accept must be lower or paired, got {self.accept!r}")
        llm_mod.check_structured(self.structured)
        llm_mod.check_error_rate(self.max_error_rate)
        if not 0.5 <= self.confidence < 1:
            raise UserError("--confidence must be at least 0.5 and below 1")
        if self.max_cost is not None and not self.max_cost > 0:
            raise UserError(f"--max-cost must be above 0 (USD), got {self.max_cost}")
        if self.batch is not None:
            from .llm.batch.batcher import check_mode

            check_mode(self.batch, "optimize")
        if self.ray is not None and self.batch is not None:
            raise UserError("--batch and --ray do not go together: batch APIs are a hosted provider's queue, Ray "
                            "spreads online calls over a cluster; choose one")
        if self.ray_batch_size < 1 or (self.ray_workers is not None and self.ray_workers < 1):
            raise UserError("--ray-workers and --ray-batch-size must be at least 1")
        if self.max_cost is not None and not self.track:
            raise UserError("--max-cost stops a run for --resume to go on with, which needs its MLflow record: "
                            "drop --no-track")
        if self.accept == "paired" and self.dev_size < stats.MIN_ITEMS:
            raise UserError(f"--accept paired needs --dev-size of at least {stats.MIN_ITEMS}")
        for name in ("evol_temperature", "optimizer_temperature"):
            if not 0 <= getattr(self, name) <= 2:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 2")


@dataclass(frozen=True)
class StepRecord:
    step: int
    incumbent: Method
    incumbent_rate: float
    candidates: tuple[Candidate, ...]
    trajectory: Trajectory          # the mini-batch evolved with the incumbent
    accepted: int | None            # index of the candidate that became e_t, or None
    calls: dict[str, int]           # LLM calls per phase
    cached: dict[str, int]          # of which answered from the cache
    seconds: dict[str, float]       # wall seconds per phase
    usage: dict[str, dict] = field(default_factory=dict)   # LLM usage per role in this step (Usage.snapshot)
    costs: dict = field(default_factory=dict)              # role -> cost.Cost of this step's calls
    dev_usage: dict = field(default_factory=dict)          # the evol role's usage judging the candidates
    dev_cost: float | None = None                          # its USD; None: no known price
    batch_usage: dict = field(default_factory=dict)        # of ``usage``, per role: the calls sent to batches
    dev_batch_usage: dict = field(default_factory=dict)    # of ``dev_usage``: the calls sent to batches

    @property
    def cost(self) -> float | None:
        """USD of the step's calls (None: a role without a known price)."""
        return cost_mod.total(self.costs) if self.costs else None

    def candidate_costs(self) -> list[float | None]:
        """USD of each candidate's dev evaluation. Tokens are counted per role, not per dev item, so the
        step's dev-evaluation cost is apportioned by judged items (halving and racing judge some candidates
        on fewer); a text judged once is paid for by the first candidate that has it, the others 0."""
        seen: set[str] = set()
        judged = []
        for c in self.candidates:
            fresh = c.evaluation is not None and c.method.hash not in seen
            seen.add(c.method.hash)
            judged.append(len(c.evaluation.results) if fresh else 0)
        if self.dev_cost is None:
            return [None] * len(judged)
        return [self.dev_cost * n / sum(judged) if sum(judged) else 0.0 for n in judged]

    @property
    def rates(self) -> list[float]:
        """Each candidate's failure rate; one with the incumbent's own text has the incumbent's rate."""
        return [c.evaluation.rate if c.evaluation else self.incumbent_rate for c in self.candidates]


@dataclass
class LoopState:
    """Where the loop stands after a finished step: everything a resumed run needs to go on."""
    init: Method
    incumbent: Method
    incumbent_rate: float
    rates: list[float]             # e0's failure rate, then the incumbent's after each finished step
    accepted: list[bool] = field(default_factory=list)
    lineage: list[str] = field(default_factory=list)
    incumbent_failures: list[bool] = field(default_factory=list)   # per dev item, for paired tests
    spent: dict[str, dict] = field(default_factory=dict)   # LLM usage per role up to this checkpoint, all processes
    spent_batch: dict[str, dict] = field(default_factory=dict)   # of ``spent``: the calls sent to batches (--batch)
    e_star_name: str | None = None  # e*'s file name, fixed before it is written (a resumed finish reuses it)
    registered: tuple[str, bool] | None = None   # e*'s prompt URI and whether it became champion, once done

    @property
    def next_step(self) -> int:
        return len(self.accepted) + 1

    def advance(self, record: "StepRecord") -> None:
        self.accepted.append(record.accepted is not None)
        if record.accepted is not None:
            winner = record.candidates[record.accepted]
            self.incumbent, self.incumbent_rate = winner.method, winner.evaluation.rate
            self.incumbent_failures = winner.evaluation.flags()
            self.lineage.append(winner.method.name)
        self.rates.append(self.incumbent_rate)

    def done(self, options: Options) -> bool:
        return len(self.accepted) >= options.steps or selection.should_stop(self.accepted, options.patience)

    def to_dict(self) -> dict:
        def method(m: Method) -> dict:
            return {"name": m.name, "text": m.text, "parent": m.parent, "made_by": m.made_by, "extra": m.extra}

        return {"init": method(self.init), "incumbent": method(self.incumbent),
                "incumbent_rate": self.incumbent_rate, "rates": self.rates, "accepted": self.accepted,
                "lineage": self.lineage, "incumbent_failures": self.incumbent_failures, "spent": self.spent,
                "spent_batch": self.spent_batch, "e_star_name": self.e_star_name, "registered": self.registered}

    @classmethod
    def from_dict(cls, data: dict) -> "LoopState":
        return cls(init=Method(**data["init"]), incumbent=Method(**data["incumbent"]),
                   incumbent_rate=data["incumbent_rate"], rates=list(data["rates"]),
                   accepted=list(data["accepted"]), lineage=list(data["lineage"]),
                   incumbent_failures=list(data.get("incumbent_failures", [])), spent=dict(data.get("spent", {})),
                   spent_batch=dict(data.get("spent_batch", {})),
                   e_star_name=data.get("e_star_name"),
                   registered=tuple(data["registered"]) if data.get("registered") else None)


# What the optimization itself cost in the paper (Table 11: ~6,120 calls at T = 10, m = 5, |D| = 50,
# mini-batch 10); a run reports its own calls as a share of it.
PAPER_CALLS = 6120


@dataclass
class OptimizeResult:
    best: Method                              # e*
    rates: list[float]                        # failure rate of e0, then of the incumbent after each step
    history: list[StepRecord] = field(default_factory=list)   # the steps this call ran
    initial: Evaluation | None = None         # e0 on the dev set (None when resumed past it)
    lineage: list[str] = field(default_factory=list)
    accepted_steps: list[int] = field(default_factory=list)
    method_path: Path | None = None
    run_id: str | None = None
    prompt_uri: str | None = None             # e* in the MLflow prompt registry
    champion: bool = False                    # e* became the data set's champion
    usage: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)   # provider adaptations and fallbacks, one line each
    costs: dict = field(default_factory=dict)   # role -> cost.Cost of ``usage`` (all processes of the run)
    batch_usage: dict[str, dict] = field(default_factory=dict)   # of ``usage``: the calls sent to batches
    stopped: str | None = None        # "--max-cost": stopped after a finished step, e* not made; --resume goes on
    process_cost: float | None = None  # USD this process spent (what --max-cost caps)

    @property
    def cost(self) -> float | None:
        """USD of the run's calls over all its processes (None: a role without a known price)."""
        return cost_mod.total(self.costs) if self.costs else None

    @property
    def calls(self) -> int:
        """LLM calls the run made (cache hits included), over all its processes."""
        return int(sum(u.get("calls", 0) for u in self.usage.values()))

    @property
    def paper_share(self) -> float:
        """This run's calls as a share of the paper's optimization budget (PAPER_CALLS)."""
        return self.calls / PAPER_CALLS


def estimate(options: Options) -> dict:
    """optimize --dry-run: an upper bound on the calls, tokens and cost of a run with these settings,
    per phase and per role, from the paper's budget (PAPER_CALLS) counted with this run's sizes. No LLM
    is built or called.

    Calls: e0 on the dev set 2|D|; per step, the trajectory batch x rounds (evol), m analyses and m
    optimizations (optimizer), and at most m x |D| x 2 dev calls (evol: every candidate new and judged on
    every dev item, every evolution answered); every one of --steps runs (patience may stop earlier);
    and, when tracking, a champion from other dev items judged again (2|D|). Output tokens: every reply
    at its role's --*-max-tokens. Input tokens are estimates: characters / 4, the method at its starting
    length, a growing conversation at its largest."""
    from .tracking import registry
    from .algorithm.candidate import OPTIMIZATION_PROMPT
    from .algorithm.feedback import ANALYSIS_PROMPT

    options.validate()
    if options.resume:
        raise UserError("--dry-run estimates a new run; it does not take --resume")
    init = registry.resolve(options.init_method)
    split = _decontaminated(load_split(options.data, dev_size=options.dev_size, batch_size=options.batch_size,
                                       seed=options.seed, instruction_field=options.instruction_field), options)
    items = split.dev + split.train
    mean = sum(len(i.instruction) for i in items) / max(len(items), 1)   # characters of an instruction
    dev, size, m, steps = len(split.dev), min(options.batch_size, len(split.train)), options.candidates, options.steps
    evol_out, opt_out = options.evol_max_tokens, options.optimizer_max_tokens
    evolve_in = (len(init.text) + mean) / 4     # the evolver's prompt
    answer_in = mean * 1.3 / 4                  # an evolved instruction
    analysis_in = (len(ANALYSIS_PROMPT) + size * (options.rounds + 1) * (mean * 1.3 + 12)) / 4
    optimize_in = analysis_in + opt_out + (len(OPTIMIZATION_PROMPT) + len(init.text)) / 4
    # phase: (role, calls, input tokens per call, output tokens per call)
    phases = {
        "baseline": ("evol", 2 * dev, (evolve_in + answer_in) / 2, evol_out),
        "trajectory": ("evol", steps * size * options.rounds, evolve_in, evol_out),
        "analysis": ("optimizer", steps * m, analysis_in, opt_out),
        "optimization": ("optimizer", steps * m, optimize_in, opt_out),
        "dev evaluation": ("evol", steps * m * dev * 2, (evolve_in + answer_in) / 2, evol_out),
    }
    if options.track:
        phases["champion check"] = ("evol", 2 * dev, (evolve_in + answer_in) / 2, evol_out)
    # --batch: the evol role's dev-set judging (e0, the candidates, the champion) goes to batches, at the
    # batch price; the trajectories and the optimizer stay online
    batched = {"baseline", "dev evaluation", "champion check"} if options.batch else set()
    by_phase = {name: {"role": role, "calls": calls, "input_tokens": int(calls * per_in),
                       "output_tokens": int(calls * per_out), "price": "batch" if name in batched else "online"}
                for name, (role, calls, per_in, per_out) in phases.items()}
    roles = {"evol": options.evol_settings(), "optimizer": options.optimizer_settings()}
    spent = {}
    for role, settings in roles.items():
        keys = ("calls", "input_tokens", "output_tokens")
        usage = {k: sum(p[k] for p in by_phase.values() if p["role"] == role) for k in keys}
        part = {k: sum(p[k] for name, p in by_phase.items() if p["role"] == role and name in batched) for k in keys}
        spent[role] = cost_mod.role_cost(role, usage, cost_mod.price_of(settings), settings.model, batched=part)
    by_role, cost_usd = cost_mod.estimate(spent)
    calls = sum(r["calls"] for r in by_role.values())
    return {"upper_bound": True, "data": split.name, "dev_items": dev, "batch": size, "steps": steps,
            "candidates": m, "rounds": options.rounds, "phases": by_phase, "roles": by_role,
            "calls": calls, "paper_calls": PAPER_CALLS,
            "cost_usd": cost_usd, **({"notes": list(split.notes)} if split.notes else {}),
            "assumes": "an upper bound: every step runs, every candidate is new and judged on every dev item "
                       "(halving, racing, duplicates and failed evolutions call less), every reply uses its whole "
                       "--*-max-tokens, no reply comes from the cache; input tokens are estimates (characters / 4, "
                       "the method at its starting length); "
                       + ("batch prices for the dev-set judging (--batch), online for the rest" if options.batch
                          else "online (not batch) prices")}


def _rollout(seed: int, step: int, index: int) -> int:
    """A stable id per (seed, step, candidate): separates the m sampled optimizer calls in the cache."""
    return rollout_id(seed, step, index)


class _DevJudge:
    """The (method, dev item) pairs of one evaluation, each judged once: a pair asked again (a strategy's
    rung after the pairs sent the moment the method was read) gets the call already under way. Online,
    each pair is a task on the run's loop (through the batched role under --batch); under --ray the
    pairs sent together go to the cluster together, from a worker thread, each pair's result set as
    it comes back."""

    def __init__(self, run: "_Run", phases: Phases, shown: str) -> None:
        self.run, self.phases, self.shown = run, phases, shown
        self.futures: dict[tuple[str, int], asyncio.Future] = {}

    def send(self, pairs: list[tuple[Method, int]]) -> list[asyncio.Future]:
        """The futures of ``pairs``' DevResults, in order; the pairs not asked before are sent now."""
        fresh = list({(m.hash, i): (m, i) for m, i in pairs if (m.hash, i) not in self.futures}.values())
        if fresh:
            self.phases.expect(self.shown, len(fresh))
            dev, role = self.run.split.dev, self.run.batched or self.run.evol
            if self.run.cluster is None:
                for method, i in fresh:
                    self.futures[(method.hash, i)] = self.phases.task(
                        "dev evaluation", ajudge_item(role, method, dev[i]), shown=self.shown)
            else:
                self._spread(fresh)
        return [self.futures[(m.hash, i)] for m, i in pairs]

    async def results(self, pairs: list[tuple[Method, int]]) -> list:
        return list(await asyncio.gather(*self.send(pairs)))

    def _spread(self, fresh: list[tuple[Method, int]]) -> None:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in fresh]
        for (method, i), future in zip(fresh, futures):
            self.futures[(method.hash, i)] = future
        pairs = [(method, self.run.split.dev[i]) for method, i in fresh]

        def landed(future: asyncio.Future, result) -> None:   # on the loop, for each pair as it comes back
            if not future.done():
                future.set_result(result)
                self.phases.advance(self.shown)

        def done(index: int, result) -> None:   # on the worker thread
            loop.call_soon_threadsafe(landed, futures[index], result)

        async def spread() -> None:
            try:
                await asyncio.to_thread(self.run.cluster.judge, pairs, self.run.evol, done)
            except BaseException as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                raise

        self.phases.task("dev evaluation", spread(), advances=False)


class _Run:
    """One optimize run's calls on one event loop (client.run_async), each started as soon as what it
    needs is known: e0's dev evaluation beside step 1's trajectory and analyses (both need only e0); a
    candidate's optimization after its own analysis, its dev pairs the moment its method is read (the
    pairs every strategy asks of every candidate: Strategy.first); a strategy's next pairs as soon as
    the flags it waits for are in; the next step as soon as a step's decision is known. Decisions read
    the evidence in the order the sequential loop read it (selection's steps take flags in item order),
    so a run makes the same candidates, rates, e* and records whatever the timing; only seconds differ.

    The roles' calls in flight are bounded by their limits (client.Llm.slots, the adaptive gates), not
    by the loop. Observers hear every event on a thread of their own, in order (observer.Queued), so
    MLflow's writes for a step never hold up the next step's calls."""

    def __init__(self, options: Options, split: Split, evol: Llm, optimizer: Llm, heard, batched, cluster) -> None:
        self.options, self.split, self.evol, self.optimizer = options, split, evol, optimizer
        self.heard, self.batched, self.cluster = heard, batched, cluster
        self.strategy = selection.STRATEGIES[options.selection]

    def _owners(self) -> dict[str, list]:
        """Each role's Usage objects: the evol role's online calls and, under --batch, its batched ones."""
        return {"evol": [self.evol.usage] + ([self.batched.usage] if self.batched is not None else []),
                "optimizer": [self.optimizer.usage] if self.optimizer is not self.evol else []}

    async def evaluate(self, method: Method, shown: str) -> Evaluation:
        """``method`` on the whole dev set (e0 before the first step, a champion from other dev items)."""
        phases = Phases(self.heard, ("dev evaluation",))
        try:
            dev = _DevJudge(self, phases, shown)
            return Evaluation(method, tuple(await dev.results([(method, i) for i in range(len(self.split.dev))])))
        finally:
            await phases.close()

    async def step(self, number: int, incumbent: Method, standing: Callable[[], Awaitable[LoopState]]) -> StepRecord:
        """Step ``number`` from ``incumbent``; ``standing()`` gives the loop's state (awaiting e0's dev
        evaluation on a fresh run's first step), needed only for the decision."""
        options, split, evol, optimizer = self.options, self.split, self.evol, self.optimizer
        phases = Phases(self.heard, ("trajectory", "analysis", "optimization", "dev evaluation"))
        label = f"step {number}"
        try:
            mini_batch = batch(split.train, options.batch_size, options.seed, number)
            phases.begin(f"{label}: trajectory", len(mini_batch))
            evolutions = await asyncio.gather(*(
                phases.task("trajectory", aevolve_rounds(evol, incumbent, item, options.rounds),
                            shown=f"{label}: trajectory") for item in mini_batch))
            trajectory = Trajectory(incumbent, tuple(evolutions))
            dev = _DevJudge(self, phases, f"{label}: dev evaluation")
            # The pairs every strategy asks of every candidate go out the moment its method is read (on Ray
            # they wait for the strategy, so that a rung is one job on the cluster, as before).
            first = range(self.strategy.first(len(split.dev), options.candidates) if self.cluster is None else 0)

            async def candidate(index: int) -> Candidate:
                shown = f"{label}: candidates"
                rollout = _rollout(options.seed, number, index)
                try:
                    found = await phases.task("analysis", aanalyse(optimizer, trajectory, rollout=rollout), shown=shown)
                except LLMError:
                    return Candidate(index, incumbent, "(the analysis call failed)", readable=False)
                made = await phases.task("optimization", apropose(
                    optimizer, incumbent, found, index=index, rollout=rollout, name=f"step{number}-c{index + 1}",
                    made_by=f"optimizer {optimizer.settings.label}, step {number}, candidate {index + 1}"), shown=shown)
                if made.method.hash != incumbent.hash:
                    dev.send([(made.method, i) for i in first])
                return made

            phases.begin(f"{label}: candidates", 2 * options.candidates)
            candidates = list(await asyncio.gather(*(candidate(i) for i in range(options.candidates))))
            # Each distinct new text is judged once: a candidate that kept the incumbent's text (unreadable
            # reply) or repeats another candidate is not paid for twice, and can never replace the
            # incumbent by noise.
            distinct: dict[str, Method] = {}
            for c in candidates:
                if c.method.hash != incumbent.hash:
                    distinct.setdefault(c.method.hash, c.method)
            state = await standing()
            incumbent_flags = state.incumbent_failures if len(state.incumbent_failures) == len(split.dev) else None
            evaluations, finalists = await self._judge_candidates(list(distinct.values()), dev, incumbent_flags)
            candidates = [dataclasses.replace(c, evaluation=evaluations.get(c.method.hash)) for c in candidates]
            calls, cached, seconds = phases.counts()
            owners = self._owners()
            dev_usage = cost_mod.add(*(phases.usage(o, "dev evaluation") for o in owners["evol"]))
            dev_batch_usage = phases.usage(self.batched.usage, "dev evaluation") if self.batched is not None else {}
            usage = {role: cost_mod.add(Usage().snapshot(), *(phases.usage(o) for o in found))
                     for role, found in owners.items()}
            batch_usage = {"evol": phases.usage(self.batched.usage)} if self.batched is not None else {}
            record = StepRecord(number, incumbent, state.incumbent_rate, tuple(candidates), trajectory, None, calls,
                                cached, seconds, usage=usage, batch_usage=batch_usage, dev_usage=dev_usage,
                                dev_batch_usage=dev_batch_usage)
            return dataclasses.replace(record, accepted=self._decide(record, state, finalists))
        finally:
            await phases.close()

    def _decide(self, record: StepRecord, state: LoopState, finalists: set[str]) -> int | None:
        """The candidate that becomes e_t, or None. Only candidates judged on the whole dev set may
        replace the incumbent (halving and racing drop the others on the way)."""
        options, split = self.options, self.split
        decision = [rate if c.evaluation is not None and c.method.hash in finalists else math.inf
                    for c, rate in zip(record.candidates, record.rates)]
        chosen = selection.winner(record.incumbent_rate, decision)
        if chosen is not None and options.accept == "paired" and len(state.incumbent_failures) == len(split.dev):
            flags = record.candidates[chosen].evaluation.flags()
            if not stats.paired_better(flags, state.incumbent_failures, confidence=options.confidence,
                                       seed=options.seed + record.step):
                chosen = None
        return chosen

    async def _judge_candidates(self, methods: list[Method], dev: _DevJudge,
                                incumbent: list[bool] | None) -> tuple[dict[str, Evaluation], set[str]]:
        """Each method's evaluation by the selection strategy's steps (a prefix for methods that halving
        or racing dropped), and the hashes of the methods judged on every item. ``incumbent``: its
        failure flags per dev item, which racing uses to drop candidates that cannot beat it. A
        strategy's pairs asked together are in flight together (under --batch: the same batches)."""
        n_items = len(self.split.dev)
        results: list[dict[int, object]] = [{} for _ in methods]
        steps = self.strategy.steps(len(methods), n_items, incumbent=incumbent)
        try:
            pairs = steps.send(None)
            while True:
                judged = await dev.results([(methods[c], i) for c, i in pairs])
                for (c, i), result in zip(pairs, judged):
                    results[c][i] = result
                pairs = steps.send([r.failure is not None for r in judged])
        except StopIteration:
            pass
        evaluations = {m.hash: Evaluation(m, tuple(results[c][i] for i in sorted(results[c])))
                       for c, m in enumerate(methods)}
        return evaluations, {h for h, e in evaluations.items() if len(e.results) == n_items}


def _batched(options: Options, evol: Llm, run_id: str | None):
    """--batch: the evol role as the dev evaluation uses it (a BatchRole with usage of its own: the evol
    role's usage is the sum, its batched part billed at the batch price), or None. Its journal is the
    run's (store.batch_journal), which a --resume attaches to; an untracked run's is named for its
    settings under the cache dir, so the same command run again attaches too. The trajectories (few calls) and the optimizer stay online."""
    if not options.batch:
        return None
    import json

    from .llm.batch import batcher as batch_mod
    from .tracking import store

    if run_id is not None:
        path = store.batch_journal(run_id)
    else:
        what = dataclasses.replace(options, concurrency=1, max_cost=None, max_error_rate=1.0, resume=None,
                                   trace=False, track=False, batch="all")
        fields = dataclasses.asdict(what)
        if not fields["decontaminate"]:   # a run without it keeps the journal it had before the flag existed
            del fields["decontaminate"], fields["decontaminate_ngram"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
        path = Path(options.cache_dir or backends.DEFAULT_CACHE_DIR) / "batches" / \
            f"optimize-{digest.hexdigest()[:16]}.jsonl"
    # One process per journal (an untracked run's is shared by the same command run twice): refused here.
    return batch_mod.BatchRole(evol, batch_mod.BatchJournal(path).open())


def optimize(options: Options | None = None, *, observers: Iterable[Observer] | None = None,
             evol: Llm | None = None, optimizer: Llm | None = None, **overrides) -> OptimizeResult:
    """Run Auto Evol-Instruct and return e* with the method history and failure rates.

    ``optimize(data="gsm8k_seed", steps=2)`` takes the same options as the command line;
    ``evol``/``optimizer`` may be given ready-made (a scripted LM in tests). ``resume=RUN_ID`` goes on
    from the last finished step of an interrupted run, with that run's own settings. ``observers``
    hear the run's events (observer.py); the MLflow logger, which records the run when ``track`` is
    on (and which --resume reads back), is put first when the list holds none (the CLI passes only
    the terminal's progress bars and tables).

    The steps: read back a resumed run's settings and state under its lock; check every setting;
    load the method and the data split; build the roles; run the loop with the observers around it.
    """
    from .tracking import registry, store, loggers as tracking  # MLflow is imported only when a run starts

    options = dataclasses.replace(options or Options(), **overrides)
    observers = list(observers or [])
    if not any(isinstance(o, tracking.OptimizeLogger) for o in observers):
        observers.insert(0, tracking.OptimizeLogger())   # first: a console after it reports a run already on record
    with contextlib.ExitStack() as held:
        state: LoopState | None = None
        if options.resume:
            held.enter_context(store.run_lock(options.resume))   # one process per run
            stored, saved = store.load_resume(options.resume)
            state = LoopState.from_dict(saved) if saved else None
            options = _resumed_options(stored, options)
        options.validate()
        # Everything that can be wrong with the input is found before the first LLM call.
        init = state.init if state else registry.resolve(options.init_method)
        split = _decontaminated(load_split(options.data, dev_size=options.dev_size, batch_size=options.batch_size,
                                           seed=options.seed, instruction_field=options.instruction_field), options)
        check_writable(Path(options.methods_dir), f"--methods-dir {options.methods_dir}")
        cost_mod.require_prices(options.max_cost, (
            (evol.settings if evol else options.evol_settings(), "--evol-model"),
            (optimizer.settings if optimizer else options.optimizer_settings(), "--optimizer-model")))
        if options.batch:   # only the evol role is batched (its dev evaluation): it needs a batch endpoint
            from .llm.batch.batcher import check_batchable

            check_batchable(evol.settings if evol else options.evol_settings())
        if options.ray is not None:
            from .cluster.connect import check_address, resolve

            check_address(resolve(options.ray))
        evol, optimizer = _llms(options, evol, optimizer)
        cluster_run = _on_cluster(options, evol, held)
        heard = Observers(observers)
        try:
            with heard:
                # Every event but the last ones is heard on a thread of the observers' own, in order: the
                # MLflow store is opened (on a first run: made and migrated, ~2 s) while the first calls go.
                queued = Queued(heard)
                try:
                    # --trace: DSPy's settings take the MLflow callback only from the thread that configured
                    # them, this one, so that run starts here.
                    (heard if options.trace else queued).start(
                        options, split=split, init=init, next_step=state.next_step if state else 1,
                        calls=concurrency_mod.in_flight(evol, optimizer))
                    if options.batch:
                        queued.drain()   # the batch journal is named for the run
                    batched = _batched(options, evol, queued.run_id)
                    if batched is not None:
                        held.callback(batched.close)   # its journal's lock, held to the end of the run
                    result = _run(options, state, split, init, evol, optimizer, queued, batched, cluster_run)
                    queued.drain()
                finally:
                    queued.shut()
                result.run_id = heard.run_id
                heard.finish(result)
        except Outage as exc:
            if heard.run_id is None:
                raise
            raise Outage(f"{exc}. The finished steps are kept: go on with --resume {heard.run_id}") from None
    return result


def _on_cluster(options: Options, evol: Llm, held: contextlib.ExitStack):
    """--ray: joined to the cluster for the run (left when ``held`` closes), and the phase runner the dev
    evaluations spread over (its workers build the evol role from its settings, with the same reply
    cache); None without --ray."""
    if options.ray is None:
        return None
    from .cluster import connect as cluster, pipeline

    held.enter_context(cluster.connected(cluster.resolve(options.ray)))
    role = (pipeline.absolute(evol.settings), "--evol-model")   # a dev pair's evolution and answer: the evol role's
    return pipeline.Cluster({"evol": role, "answer": role},
                            pipeline.RayOptions(options.ray_workers, options.ray_batch_size),
                            pipeline.absolute_dir(options.cache_dir), options.ray_batch_size, options.max_error_rate)


def _run(options: Options, state: LoopState | None, split: Split, init: Method, evol: Llm, optimizer: Llm,
         heard: Queued, batched=None, cluster_run=None) -> OptimizeResult:
    """The loop itself, on one event loop: e0 on the dev set (unless resumed past it) beside the first
    step, the steps until a stop rule holds, then e* saved and registered. Every event goes to
    ``heard``, heard on a thread of its own (observer.Queued); ``batched``: the evol role the dev
    evaluations use under --batch; ``cluster_run``: the Ray cluster they spread over under --ray."""
    try:
        return llm_mod.run_async(_arun(options, state, split, init, evol, optimizer, heard, batched, cluster_run))
    except BaseException:
        with contextlib.suppress(BaseException):   # what the run heard before it stopped is kept (checkpoints)
            heard.drain()
        raise


async def _arun(options: Options, state: LoopState | None, split: Split, init: Method, evol: Llm, optimizer: Llm,
                heard: Queued, batched, cluster_run) -> OptimizeResult:
    started = time.perf_counter()
    spent_before = dict(state.spent) if state else {}
    batch_before = dict(state.spent_batch) if state else {}
    roles = {"evol": evol.settings, "optimizer": optimizer.settings}

    def now() -> tuple[dict, dict]:
        """This process's usage per role so far, and of it the calls sent to batches."""
        return _usage({}, evol, optimizer, batched), _batch_usage({}, batched)

    process_start = now()

    def process_cost() -> float | None:
        usage, batch_usage = now()
        return cost_mod.total(cost_mod.costs(cost_mod.delta(usage, process_start[0]), roles,
                                             batched=cost_mod.delta(batch_usage, process_start[1])))

    def run_usage() -> tuple[dict, dict]:
        """The run's usage over all its processes, and of it the calls sent to batches."""
        return _usage(spent_before, evol, optimizer, batched), _batch_usage(batch_before, batched)

    def checkpoint() -> None:
        state.spent, state.spent_batch = run_usage()
        heard.checkpoint(state.to_dict())

    run = _Run(options, split, evol, optimizer, heard, batched, cluster_run)
    initial: Evaluation | None = None

    async def judge_init() -> LoopState:
        """e0 on the dev set: only the first step's decision needs it, so it runs beside that step."""
        nonlocal state, initial
        initial = await run.evaluate(init, "e0 on the dev set")
        if initial.errors == len(initial.results):
            raise Outage(f"every call for {init.name} on the dev set failed after its retries "
                         f"(the last error: {evol.last_error or 'unknown'}); nothing can be judged")
        heard.baseline(initial)
        state = LoopState(init, init, initial.rate, [initial.rate], lineage=[init.name],
                          incumbent_failures=initial.flags())
        checkpoint()
        return state

    baseline = asyncio.ensure_future(judge_init()) if state is None else None

    async def standing() -> LoopState:
        return await baseline if baseline is not None else state

    try:
        history: list[StepRecord] = []
        stopped = None
        number = state.next_step if state is not None else 1
        while state is None or not state.done(options):
            if _over_budget(options.max_cost, process_cost(), history[-1].cost if history else None):
                stopped = "--max-cost"
                break
            record = await _watching(run.step(number, state.incumbent if state else init, standing), baseline)
            dev = cost_mod.role_cost("evol", record.dev_usage, cost_mod.price_of(evol.settings), evol.settings.model,
                                     batched=record.dev_batch_usage)
            record = dataclasses.replace(record, costs=cost_mod.costs(record.usage, roles, batched=record.batch_usage),
                                         dev_cost=dev.usd)
            history.append(record)
            state.advance(record)
            heard.step(record)
            checkpoint()
            number += 1
        if baseline is not None:
            await baseline   # done by now (the first step waited for it): raises what it met, if anything
        result = OptimizeResult(best=state.incumbent, rates=list(state.rates), history=history, initial=initial,
                                lineage=list(state.lineage),
                                accepted_steps=[i + 1 for i, ok in enumerate(state.accepted) if ok], stopped=stopped)
        if stopped is None:   # else e* is not made: the run goes on with --resume, from this checkpoint
            result.best = best = _final_method(state, split.name, options)
            if state.e_star_name != best.name:
                state.e_star_name = best.name     # written down before the file: a resumed finish reuses it
                checkpoint()
            result.method_path = method_mod.save(best, Path(options.methods_dir))
            if options.track:
                if state.registered is None:   # once per run, also when a resumed run finishes again
                    heard.drain()   # the run's own records first: the registry reads the store they are in
                    state.registered = await _register(best, state, split, run)
                    checkpoint()
                result.prompt_uri, result.champion = state.registered
        result.usage, result.batch_usage = run_usage()
        result.costs = cost_mod.costs(result.usage, roles, batched=result.batch_usage)
        result.process_cost = process_cost()
        result.notices = list(dict.fromkeys([*split.notes, *evol.notices, *optimizer.notices]))
        result.seconds = round(time.perf_counter() - started, 2)
        return result
    finally:
        if baseline is not None and not baseline.done():
            baseline.cancel()
            await asyncio.gather(baseline, return_exceptions=True)
        for role in (evol, optimizer) + ((batched,) if batched is not None else ()):
            with contextlib.suppress(Exception):
                await role.aclose()


async def _watching(main: Awaitable, watched: asyncio.Future | None):
    """``main``'s result, unless ``watched`` (e0's dev evaluation beside the first step) fails first:
    then ``main`` is cancelled and that failure raised at once (an outage found on e0 stops the step)."""
    task = asyncio.ensure_future(main)
    if watched is not None and not watched.done():
        await asyncio.wait({task, watched}, return_when=asyncio.FIRST_COMPLETED)
        if watched.done() and not watched.cancelled() and watched.exception() is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise watched.exception()
    return await task


def _over_budget(max_cost: float | None, spent: float | None, last_step: float | None) -> bool:
    """--max-cost, checked before each step: no step starts once this process has spent the cap, or
    when one more step costing what the last one did would pass it (the first step of a process starts
    while anything is left: its cost is not known before it runs)."""
    if max_cost is None or spent is None:
        return False
    return spent >= max_cost or (last_step is not None and spent + last_step > max_cost)


def _usage(before: dict[str, dict], evol: Llm, optimizer: Llm, batched=None) -> dict[str, dict]:
    """LLM usage per role: what earlier processes of this run spent plus this one's (the evol role's
    online calls and, under --batch, ``batched``'s: the sum)."""
    # One Llm for both roles (the caller's, or equal settings before roles.build_roles gave each its own):
    # its calls are counted once, as the evol role's.
    now = {"evol": _evol_usage(evol, batched)[0],
           "optimizer": optimizer.usage.snapshot() if optimizer is not evol else Usage().snapshot()}
    return {role: {k: round(v + before.get(role, {}).get(k, 0), 3) for k, v in counts.items()}
            for role, counts in now.items()}


def _batch_usage(before: dict[str, dict], batched=None) -> dict[str, dict]:
    """Of ``_usage``: the calls sent to batches (the evol role's through ``batched``), earlier processes' too."""
    now = {"evol": batched.usage.snapshot()} if batched is not None else {}
    return {role: cost_mod.add(before.get(role), now.get(role)) for role in {**before, **now}}


def _evol_usage(evol: Llm, batched=None) -> tuple[dict, dict]:
    """The evol role's usage (its online calls plus its batched ones), and of it the batched calls'."""
    online = evol.usage.snapshot()
    if batched is None:
        return online, {}
    part = batched.usage.snapshot()
    return cost_mod.add(online, part), part


def _decontaminated(split: Split, options: Options) -> Split:
    """--decontaminate: training and dev items that overlap a benchmark item (evolve's n-gram check,
    contamination.py) are left out, so a method is never optimized, or judged, on the benchmark it will
    be evaluated by; the split says what it left out (a notice on the terminal and in MLflow). Checked
    before any call, as the split is."""
    if not options.decontaminate:
        return split
    if options.decontaminate_ngram < 1:
        raise UserError(f"--decontaminate-ngram must be at least 1, got {options.decontaminate_ngram}")
    from .algorithm.contamination import BenchmarkIndex
    from .storage.data import benchmark_items

    index = BenchmarkIndex(((spec, item_id, text) for spec in options.decontaminate
                            for item_id, text in benchmark_items(spec)), n=options.decontaminate_ngram)
    hits = {item.id: index.check(item.instruction) for item in split.train + split.dev}
    train = [i for i in split.train if hits[i.id] is None]
    dev = [i for i in split.dev if hits[i.id] is None]
    if len(train) == len(split.train) and len(dev) == len(split.dev):
        return dataclasses.replace(split, notes=(*split.notes, f"--decontaminate: no item overlaps "
                                                 f"{', '.join(options.decontaminate)} ({len(index)} items)"))
    if len(train) < options.batch_size or not dev:
        raise UserError(f"{options.data}: after --decontaminate left out {len(split.train) - len(train)} training and "
                        f"{len(split.dev) - len(dev)} dev items, too few remain for a mini-batch of "
                        f"{options.batch_size} and a dev set")
    first = next(h for h in hits.values() if h is not None)
    first_id = next(k for k, h in hits.items() if h is first)
    note = (f"--decontaminate: left out {len(split.train) - len(train)} training and {len(split.dev) - len(dev)} dev "
            f"items that overlap {', '.join(options.decontaminate)} (e.g. {first_id}: {first.benchmark} "
            f"{first.item_id}); the dev set has {len(dev)} items")
    return dataclasses.replace(split, train=train, dev=dev, notes=(*split.notes, note))


def _resumed_options(stored: dict, given: Options) -> Options:
    """A resumed run's own settings; an --api-base given again must name the same server (its
    user:password, never stored, is taken from it)."""
    from .core.secrets import redact

    known = {f.name for f in dataclasses.fields(Options)}
    had_credentials = bool(stored.get("api_base_credentials"))
    legacy = "api_base_credentials" not in stored   # stored before credentials were noted (their URL: None)
    settings = {k: v for k, v in stored.items() if k in known}
    stored_base = settings.get("api_base")
    if given.api_base is not None:
        if redact(given.api_base) != (stored_base or "") and not (legacy and stored_base is None):
            raise UserError(f"--resume {given.resume}: the run used --api-base {stored_base or '(none)'}; a resumed run "
                            f"keeps its server (got {redact(given.api_base)})")
        if had_credentials and redact(given.api_base) == given.api_base:
            raise UserError(f"--resume {given.resume}: the run's --api-base {stored_base} had a user:password part; "
                            f"give it again with that part")
        settings["api_base"] = given.api_base
    elif had_credentials:
        raise UserError(f"--resume {given.resume}: the run's --api-base {stored_base} had a user:password part, "
                        f"which is never stored; give the same --api-base again")
    # What may change on a resume: how fast it runs, and how many failed calls it puts up with.
    # --max-cost caps this process's spending, so a resumed run takes the one given now (none: no cap).
    # --batch given again replaces the run's own (left out, the run keeps it).
    keep = {"concurrency": given.concurrency, "max_cost": given.max_cost, "ray": given.ray,
            "ray_workers": given.ray_workers, "ray_batch_size": given.ray_batch_size}
    if given.batch is not None:
        keep["batch"] = given.batch
    if given.max_error_rate != llm_mod.MAX_ERROR_RATE:
        keep["max_error_rate"] = given.max_error_rate
    return dataclasses.replace(Options(**settings), resume=given.resume, track=True, **keep)


def _llms(options: Options, evol: Llm | None, optimizer: Llm | None) -> tuple[Llm, Llm]:
    if evol is not None and optimizer is not None:
        return evol, optimizer
    built_evol, built_optimizer = build_roles(
        (options.evol_settings(), "--evol-model"), (options.optimizer_settings(), "--optimizer-model"),
        cache_dir=options.cache_dir, concurrency=options.concurrency, max_error_rate=options.max_error_rate,
        burst=options.candidates * options.dev_size)
    return evol or built_evol, optimizer or built_optimizer


async def _register(best: Method, state: LoopState, split: Split, run: _Run) -> tuple[str, bool]:
    """Register e* as a new version of the data set's prompt; move 'champion' only if e* beats it.

    The champion's failure rate is compared on this run's dev set: taken from its version's tags when
    it was measured on the same dev items, measured now otherwise.
    """
    from .tracking import registry

    fingerprint = dev_fingerprint(split.dev)
    rate = state.rates[-1]
    champion = registry.champion(split.name)
    if champion is None:
        better = True
    elif champion.tags.get("dev_fingerprint") == fingerprint and "failure_rate" in champion.tags:
        better = rate < float(champion.tags["failure_rate"])
    else:
        rival = Method(name=f"{split.name}@champion", text=champion.template)
        better = rate < (await run.evaluate(rival, "champion check")).rate
    version = registry.register(split.name, best, tags={"dev_fingerprint": fingerprint, "failure_rate": f"{rate:.6f}",
                                                        "failure_rate_e0": f"{state.rates[0]:.6f}"})
    if better:
        registry.set_champion(split.name, version)
    return registry.uri(split.name, version), better


def _final_method(state: LoopState, data_name: str, options: Options) -> Method:
    """e* as it is saved: the winning text, named for the data set, with its lineage in the header."""
    directory = Path(options.methods_dir)
    name = options.name or state.e_star_name or method_mod.free_name(f"{data_name}-{_dt.date.today().isoformat()}",
                                                                     directory)
    best = state.incumbent
    made_by = (f"auto-evol optimize on {data_name}: evol {options.evol_settings().label}, "
               f"optimizer {options.optimizer_settings().label}")
    return Method(name=name, text=best.text, parent=best.parent or best.name, made_by=made_by,
                  extra={"lineage": " -> ".join(state.lineage), "hash": best.hash})
