"""Evolve a whole dataset: rounds of evolution, answers and elimination, checkpointed as they finish.

Each round evolves every instruction of the pool once with a method drawn (seeded) from the chosen
ones, has the evolved instruction judged for information gain and answered, and eliminates failures
(Evol-Instruct's four rules and F(r)). A failed instruction goes back to the pool unchanged and is
tried again next round. The output merges the seeds and every round's kept records in a seeded
random order, optionally sampled to ``sample`` records.

All state lives in ``<out>.work/``, whose layout workfolder.py owns: the seeds as read, one journal
per round. A rerun of the same command skips whatever a journal already holds, so a crash, kill -9,
rate limit or --max-calls stop never costs finished work and never duplicates a record. Evolving one
item is trajectory.evolution_steps, the same steps optimize and compare take, driven here with async
calls under Evol-Instruct's elimination rules.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .algorithm import contamination, dedup as dedup_mod
from .algorithm.failure import Failure
from .algorithm.method import CLASSIC, Method
from .algorithm.rounds import RoundPlan, round_item, seed_answer
from .algorithm.trajectory import arun_steps
from .core.errors import UserError
from .core.observer import Observer, Observers
from .llm import backends
from .llm import client as llm_mod
from .llm import concurrency as concurrency_mod
from .llm import cost as cost_mod
from .llm.client import Llm, RoleSettings
from .llm.roles import build_roles
from .storage import locks, output
from .storage.checkpoint import Journal, atomic_write, check_writable, read, remove_leftovers
from .storage.data import BadRow, guess_field, guess_output_field, row_id, row_problem, stream_rows, with_input
from .storage.workfolder import WorkFolder
from .tracking.registry import resolve_methods


@dataclass
class EvolveOptions:
    data: str
    out: str = "evolved.jsonl"
    methods: list[str] = field(default_factory=lambda: [CLASSIC])   # NAME or NAME=WEIGHT
    rounds: int = 4
    sample: int | None = None
    format: str | None = None                 # from the --out suffix when None
    seed: int = 0
    instruction_field: str | None = None
    input_field: str = "input"
    output_field: str | None = None           # the first of output, response, ... (data.py) when None
    evol_model: str | None = None
    answer_model: str | None = None           # the evol model when None
    api_base: str | None = None
    evol_temperature: float = 0.0             # the paper's greedy evolution; see retry_temperature
    retry_temperature: float = 1.0            # an item failed last round is evolved again at this temperature
                                              # (Evol-Instruct's own evolution sampling) when evol_temperature is 0
    evol_max_tokens: int = 1024
    answer_temperature: float = 1.0           # Evol-Instruct's answer sampling
    answer_top_p: float = 0.9
    answer_max_tokens: int = 2048
    judge: bool = True                        # the equal / not equal information-gain judge
    concurrency: int | str = "auto"           # calls in flight: "auto" adapts to an OpenAI-compatible server's
                                              # limit (concurrency.py); a number fixes it (also what other
                                              # backends keep under auto: FIXED_UNDER_AUTO)
    timeout: float = 120.0                    # seconds for one call to a provider
    max_calls: int | None = None
    max_cost: float | None = None             # USD this process may spend (cost.py's prices); rerun to go on
    max_instruction_chars: int = 20000
    max_error_rate: float = llm_mod.MAX_ERROR_RATE    # stop when this share of a role's recent calls failed
    on_bad_line: str = "skip"
    restart: bool = False                     # drop the work folder of an earlier run first
    cache_dir: str | None = None              # DSPy's reply cache: off by default, see below
    track: bool = True
    structured: str = "auto"                  # JSON-schema replies from the evolver: auto | on | off
    batch: str | None = None                  # send all | evol | answer calls to the provider's batch API (llm/batch/)
    batch_size: int | None = None             # requests per batch; None: the provider's limit
    ray: str | None = None                    # run the phases on a Ray cluster (pipeline.py): its address, ""
                                              # for RAY_ADDRESS or a local Ray; None: this process alone
    ray_workers: int | None = None            # workers answering calls per phase; None: 2 per node
    ray_batch_size: int = 64                  # items a worker takes at once
    vllm_tensor_parallel: int = 1             # GPUs per vLLM engine (a vllm:MODEL role)
    vllm_replicas: int = 1                    # vLLM engines per vllm:MODEL role
    decontaminate: list[str] = field(default_factory=list)   # benchmark sets (files, hf:NAME): their items'
                                              # copies and light rewordings are rejected (contamination.py)
    decontaminate_ngram: int = contamination.NGRAM   # words per n-gram of that check
    dedup: str = "off"                        # off | near: near-duplicate evolutions reduced to one (dedup.py)
    push_to_hub: str | None = None            # OWNER/NAME: upload the --format hf folder (storage/hub.py)
    # Why no reply cache by default: the work folder's journals keep every finished item and the steps
    # finished of unfinished ones (round*.partial.jsonl), so a rerun pays for no finished call anyway,
    # while the cache's per-call key hashing and SQLite writes held evolve to 0.69 of a bare client's
    # calls/s (10,000 calls at 50 ms, concurrency 64; 0.89 without). --cache-dir turns it on, for
    # reusing replies across work folders (another --out, --restart).

    def evol_settings(self) -> RoleSettings:
        return RoleSettings(self.evol_model, self.api_base, self.evol_temperature, None, self.evol_max_tokens,
                            self.timeout, self.structured)

    def answer_settings(self) -> RoleSettings:
        return RoleSettings(self.answer_model or self.evol_model, self.api_base, self.answer_temperature,
                            self.answer_top_p, self.answer_max_tokens, self.timeout, self.structured)

    def fingerprint(self, methods: list[tuple[Method, float]]) -> dict:
        """The settings that decide what a run produces: a rerun continues only when they match."""
        keep = ("data", "rounds", "seed", "instruction_field", "input_field", "output_field", "evol_model",
                "answer_model", "api_base", "evol_temperature", "retry_temperature", "evol_max_tokens",
                "answer_temperature", "answer_top_p", "answer_max_tokens", "judge", "max_instruction_chars",
                "structured")
        from .core.secrets import redact

        # A password in --api-base is never written down; a rerun may give it again, or another one.
        found = {**{k: getattr(self, k) for k in keep}, "api_base": redact(self.api_base) or None,
                 "methods": [[m.hash, w] for m, w in methods]}
        if self.decontaminate:   # it decides which seeds are evolved and which evolutions are kept
            found.update(decontaminate=list(self.decontaminate), decontaminate_ngram=self.decontaminate_ngram)
        return found


@dataclass
class RoundStats:
    """Kept and eliminated (by reason) items of one round, with the words before and after of the kept."""
    round: int
    kept: int = 0
    eliminated: Counter = field(default_factory=Counter)
    words_before: int = 0
    words_after: int = 0

    def to_dict(self) -> dict:
        return {"round": self.round, "kept": self.kept, "eliminated": dict(self.eliminated),
                "mean_words_before": round(self.words_before / self.kept, 2) if self.kept else None,
                "mean_words_after": round(self.words_after / self.kept, 2) if self.kept else None}


@dataclass(frozen=True)
class EvolveStats:
    """What a run did, as written to ``OUT.work/stats.json`` and logged to MLflow: typed here, so the
    file's shape is stated once; ``to_dict`` gives the JSON (its keys in this order)."""
    records: int
    complete: bool
    rounds: tuple[RoundStats, ...]
    bad_lines: int
    calls: dict                       # usage per role, as Usage.snapshot() gives it
    seconds: float
    notices: tuple[str, ...] = ()     # the roles' adaptations and fallbacks, each once
    cost: dict = field(default_factory=dict)   # per role: tokens and USD (cost.Cost.to_dict), and the total
    finishing: dict = field(default_factory=dict)   # "decontamination", "dedup" (evolve._finishing), when asked for

    @classmethod
    def of(cls, result: "EvolveResult", notices: list[str], finishing: dict | None = None) -> "EvolveStats":
        return cls(records=result.records, complete=result.complete, rounds=tuple(result.rounds),
                   bad_lines=len(result.bad_lines), calls=result.calls, seconds=result.seconds,
                   notices=tuple(dict.fromkeys(notices)),
                   cost=cost_mod.report(result.costs) if result.costs else {}, finishing=dict(finishing or {}))

    def to_dict(self) -> dict:
        return {"records": self.records, "complete": self.complete, "rounds": [s.to_dict() for s in self.rounds],
                "bad_lines": self.bad_lines, "calls": self.calls, "seconds": self.seconds,
                "notices": list(self.notices), "cost": self.cost, **self.finishing}


@dataclass
class EvolveResult:
    out: Path
    records: int
    rejects: Path
    rounds: list[RoundStats]
    bad_lines: list[BadRow]
    calls: dict
    seconds: float
    complete: bool                  # False when --max-calls or --max-cost stopped it: rerun to go on
    run_id: str | None = None
    stats: EvolveStats | None = None  # as written to stats.json
    costs: dict = field(default_factory=dict)   # role (as in ``calls``) -> cost.Cost, this process's calls
    stopped: str | None = None      # the flag that stopped it early: "--max-calls" or "--max-cost"


def _words(text: str) -> int:
    return len(text.split())


FIXED_UNDER_AUTO = 64   # calls in flight under --concurrency auto for roles with no adaptive gate


def _gates(*llms) -> list:
    """The adaptive limits (concurrency.AdaptiveLimit) the roles' calls pass, each once."""
    found = [getattr(llm, "gate", None) for llm in llms]
    return list({id(g): g for g in found if g is not None}.values())


def _fixed(concurrency: int | str, auto: int | None = None) -> int:
    """A number of calls in flight: --concurrency's, or under auto ``auto`` (FIXED_UNDER_AUTO when None)."""
    if concurrency == concurrency_mod.AUTO:
        return auto if auto is not None else FIXED_UNDER_AUTO
    return concurrency


def _width(concurrency: int | str, llms):
    """The items to keep in flight: a fixed number, or under auto (when a role has an adaptive gate)
    a function of the gates' limits: twice their sum plus 16, so the gates, not the feeder, hold the
    calls back (an item waits at a gate, sleeps out a retry or works between its calls)."""
    gates = _gates(*llms) if concurrency == concurrency_mod.AUTO else []
    if not gates:
        return _fixed(concurrency)
    top = 2 * concurrency_mod.MAXIMUM * len(gates)
    return lambda: min(top, 2 * sum(g.current for g in gates) + 16)


def _live_concurrency(evol, answerer):
    """For the progress line under auto: the calls the gates let through now (None without gates)."""
    gates = _gates(evol, answerer)
    return (lambda: sum(g.current for g in gates)) if gates else None


# --- the run ---------------------------------------------------------------------------------------

class _Budget:
    """--max-calls: how many more calls this process may start; --max-cost: whether they still fit under
    the USD cap. Both count this process only (a rerun starts its own count; what earlier runs spent is
    in the work folder already and is not paid again).

    A call's cost is known only once it is back, so the cap is kept by estimate: the spend so far plus
    ``more`` calls (the next item's and those in flight, counted whole even when partly done) at the
    dearest cost per call seen so far (measured over the calls back between two looks). Each phase (the
    seeds' answers, each round) starts with one item alone, so its kinds of calls are measured before
    more go out. When the estimate refuses while calls are in flight, ``_drive`` waits for one to come
    back and asks again; it stops once nothing is left in flight. So a run ends within about one item's
    cost of the cap; it can pass it only when calls in flight cost more per call than every call seen
    before them. The process's very first item starts whenever the cap is not reached (nothing is known
    of a call's cost before it).

    Under --batch (a role whose calls go to batches, priced at the batch price) a phase's first item does
    not run alone: it would be a batch of one request, hours of latency, before the rest. Items go in
    waves instead (``_fits_wave``): a wave is the items let go at one look; once one is refused, no more
    go until the whole wave is back, whose calls (each kind in its proportion: the evolutions, verdicts
    and answers come back in batches of their own, so a look mid-wave would see only the cheaper first
    ones) give the phase's cost per call for the next. A phase's first wave, nothing of it measured yet,
    is sized by a bound per call: its role's price (at the price its endpoint bills) for --*-max-tokens
    out and as many in, the dearest role's. So a run passes the cap only where that first wave's prompts
    are longer than --*-max-tokens, or a later wave's items cost more than the last wave's did on average
    (a cap smaller than one item's bound still lets one item go alone, as above)."""

    def __init__(self, limit: int | None, llms: list[Llm], max_cost: float | None = None) -> None:
        self.limit, self.max_cost = limit, max_cost
        self.llms = list({id(x): x for x in llms}.values())  # evol and answer may be one Llm
        self.start = self.used()
        self.stopped_by: str | None = None   # the flag that refused the last item refused
        if max_cost is not None:
            self.prices = [cost_mod.price_of(llm.settings) for llm in self.llms]   # all known: evolve checked
            self.batched = [_batched(llm) for llm in self.llms]
            self.begun = [llm.usage.snapshot() for llm in self.llms]
            self.seen = (0, 0.0)       # calls back and their cost at the last look
            self.dearest = 0.0         # USD per call
            self.probe: int | None = None   # a phase's first item runs alone: its calls (``more``), once started
            self.probing = False
            # --batch (``_fits_wave``): a call's cost bound until a phase's first wave is back; one item's
            # calls (``more`` with nothing in flight), from a phase's first look; whether a wave is out
            self.bound = max(sum(price.per_token(batched)) * llm.settings.max_tokens
                             for llm, price, batched in zip(self.llms, self.prices, self.batched))
            self.unit: int | None = None
            self.closed = False

    def used(self) -> int:
        return sum(llm.usage.calls for llm in self.llms)

    def spent(self) -> float:
        """USD this process's calls cost so far (0 without --max-cost: no prices are looked up)."""
        if self.max_cost is None:
            return 0.0
        total = 0.0
        for llm, price, batched, begun in zip(self.llms, self.prices, self.batched, self.begun):
            now = llm.usage.snapshot()
            total += cost_mod.cost({k: now[k] - begun[k] for k in ("input_tokens", "output_tokens")}, price,
                                   batch=batched)
        return total

    def allows(self, more: int) -> bool:
        calls = self.used() - self.start
        if self.limit is not None and calls + more > self.limit:
            self.stopped_by = "--max-calls"
            return False
        if self.max_cost is not None and not self._fits(calls, more):
            self.stopped_by = "--max-cost"
            return False
        return True

    def _measure(self, calls: int, spent: float) -> None:
        if calls > self.seen[0]:
            self.dearest = max(self.dearest, (spent - self.seen[1]) / (calls - self.seen[0]))
            self.seen = (calls, spent)

    def _fits(self, calls: int, more: int) -> bool:
        spent = self.spent()
        if any(self.batched):
            return self._fits_wave(calls, more, spent)
        self._measure(calls, spent)
        if self.probing:
            if self.probe is None:   # the phase's first item (nothing in flight: ``more`` is one item's calls)
                self.probe = more
                return spent < self.max_cost and spent + more * self.dearest <= self.max_cost
            if more > self.probe:    # it is still in flight: refused, so _drive waits for it
                return False
            self.probing = False
        return spent + more * self.dearest <= self.max_cost

    def _fits_wave(self, calls: int, more: int, spent: float) -> bool:
        """``_fits`` under --batch: items in waves, each sized by what the phase's last wave cost per call
        (its first by the price bound), the next let go once a refused one is back whole."""
        if self.unit is None:   # a phase's first look, nothing in flight: what came back before was the last phase's
            self.unit, self.seen = more, (calls, spent)
        idle = more <= self.unit
        if idle:                # the last wave is back whole: its calls, every kind in proportion, measured
            self._measure(calls, spent)
            self.closed = False
        elif self.closed:       # a wave is out: the next goes once it is back
            return False
        if self.dearest:
            fits = spent + more * self.dearest <= self.max_cost
        else:                   # nothing of the phase paid for yet: the bound (an item alone goes while under the cap)
            fits = spent < self.max_cost if idle else spent + more * self.bound <= self.max_cost
        self.closed = not fits
        return fits

    def phase(self) -> None:
        """A phase begins: its first item runs alone (under --max-cost), to measure its calls; under --batch
        (where that would be a batch of one request) its first wave is sized by the price bound instead."""
        if self.max_cost is not None:
            self.probe, self.probing = None, not any(self.batched)
            self.unit, self.closed = None, False
            if any(self.batched):
                self.dearest = 0.0   # each phase's kinds of calls measured anew (by its first wave)


def _batched(role) -> bool:
    """Whether a role's calls go to its provider's batch API (batch.BatchRole), billed at the batch price."""
    return getattr(role, "batched", False) is True


def evolve(options: EvolveOptions, *, observers: Iterable[Observer] | None = None, evol: Llm | None = None,
           answerer: Llm | None = None, dry_run: bool = False, pilot: int | None = None) -> EvolveResult | dict:
    """Evolve ``options.data``; with ``dry_run`` only count the calls and tokens it would take, and with
    ``pilot`` N as well run the first N seeds for real to measure them (``_pilot``; their results stay in
    the work folder, so the real run does not pay for them again).

    The steps: check every setting and the output's place; build (and check) the roles; take the work
    folder's lock; read the input into the work folder; answer the seeds that have no answer; run the
    rounds; assemble the output and the rejects; record the run. Everything up to the first LLM call
    that can be wrong with the input is found before it, and an error there leaves nothing behind.
    ``observers`` hear the run's events (observer.py); the MLflow logger, which records a finished
    run when ``track`` is on, is added when the list holds none.
    """
    from .tracking.loggers import EvolveLogger

    observers = list(observers or [])
    if not any(isinstance(o, EvolveLogger) for o in observers):
        observers.insert(0, EvolveLogger())   # first: a console after it reports a run already on record
    _validate(options)
    options = dataclasses.replace(options, concurrency=concurrency_mod.parse(options.concurrency))
    out = Path(options.out)
    fmt = output.format_for(out, options.format)
    methods = resolve_methods(options.methods)
    work = WorkFolder(out)
    _check_out(out, work, fmt)
    if options.push_to_hub:
        from .storage import hub

        hub.check(options.push_to_hub, fmt)
    if pilot is not None and not dry_run:
        raise UserError("--pilot is for --dry-run: it runs the first N items to measure what the rest would take")
    if pilot is not None and pilot < 1:
        raise UserError(f"--pilot must be at least 1, got {pilot}")
    if pilot is not None and _uses_cluster(options):
        raise UserError("--pilot runs its items in this process; leave out --ray (and vllm: roles)")
    benchmarks = _benchmarks(options)
    if dry_run and pilot is None:
        return _estimate(options, methods, benchmarks)
    cost_mod.require_prices(options.max_cost, (
        (evol.settings if evol else options.evol_settings(), "--evol-model"),
        (answerer.settings if answerer else options.answer_settings(), "--answer-model")))
    if options.batch:
        from .llm.batch.batcher import check_roles

        check_roles(options.batch, evol.settings if evol else options.evol_settings(),
                    answerer.settings if answerer else options.answer_settings())
    if evol is None or answerer is None:
        built_evol, built_answerer = _build_roles(options)
        evol, answerer = evol or built_evol, answerer or built_answerer
    if options.batch:   # the roles --batch names go to batch endpoints, a whole batch of items in flight
        from .llm.batch import batcher as batch_mod

        evol, answerer, concurrency = batch_mod.batched_roles(
            options.batch, evol, answerer, work.batches,
            concurrency=_fixed(options.concurrency, concurrency_mod.MAXIMUM if _gates(evol, answerer) else None),
            config=batch_mod.BatchConfig.from_env(max_requests=options.batch_size))
        options = dataclasses.replace(options, concurrency=concurrency)
    # The batch journal is read and locked on the first call, so after the lock and work.claim (which
    # may drop it on --restart); release lets go of it however the run ends.
    try:
        with _on_cluster(options) as cluster_run, \
                locks.hold(work.lock, f"{work.path} (the work folder of --out {out})", note=evol.notice), \
                Observers([] if pilot else observers) as heard:
            if pilot:
                return _pilot(pilot, options, methods, work, evol, answerer, heard, benchmarks)
            return _run(options, out, fmt, methods, work, evol, answerer, heard, cluster_run, benchmarks)
    finally:
        if options.batch:
            batch_mod.release(evol, answerer)


def _validate(options: EvolveOptions) -> None:
    if options.on_bad_line not in ("skip", "fail"):
        raise UserError("--on-bad-line must be skip or fail")
    concurrency_mod.parse(options.concurrency)
    for name in ("rounds", "evol_max_tokens", "answer_max_tokens", "max_instruction_chars"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if options.sample is not None and options.sample < 1:
        raise UserError(f"--sample must be at least 1, got {options.sample}")
    if options.max_calls is not None and options.max_calls < 1:
        raise UserError(f"--max-calls must be at least 1, got {options.max_calls}")
    if options.max_cost is not None and not options.max_cost > 0:
        raise UserError(f"--max-cost must be above 0 (USD), got {options.max_cost}")
    if options.timeout <= 0:
        raise UserError(f"--timeout must be above 0, got {options.timeout}")
    if options.dedup not in ("off", "near"):
        raise UserError(f"--dedup must be off or near, got {options.dedup!r}")
    if options.decontaminate_ngram < 1:
        raise UserError(f"--decontaminate-ngram must be at least 1, got {options.decontaminate_ngram}")
    for name in ("evol_temperature", "retry_temperature", "answer_temperature"):
        if not 0 <= getattr(options, name) <= 2:
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 2")
    if not 0 < options.answer_top_p <= 1:
        raise UserError(f"--answer-top-p must be above 0 and at most 1, got {options.answer_top_p}")
    llm_mod.check_error_rate(options.max_error_rate)
    llm_mod.check_structured(options.structured)
    _validate_cluster(options)
    if options.batch_size is not None and options.batch is None:
        raise UserError("--batch-size is for --batch: add --batch, or leave --batch-size out")
    if options.batch is not None or options.batch_size is not None:
        from .llm.batch.batcher import check_mode

        check_mode(options.batch)
        if options.batch_size is not None and options.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")


def _uses_cluster(options: EvolveOptions) -> bool:
    """--ray, or a vllm:MODEL role (its engines run on Ray: a local one without --ray)."""
    from .cluster.pipeline import is_vllm

    return options.ray is not None or is_vllm(options.evol_settings()) or is_vllm(options.answer_settings())


def _validate_cluster(options: EvolveOptions) -> None:
    for name in ("ray_batch_size", "vllm_tensor_parallel", "vllm_replicas"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if options.ray_workers is not None and options.ray_workers < 1:
        raise UserError(f"--ray-workers must be at least 1, got {options.ray_workers}")
    if not _uses_cluster(options):
        return
    what = "--ray" if options.ray is not None else "a vllm:MODEL role (it runs on Ray)"
    if options.batch is not None:
        raise UserError(f"--batch and {what} do not go together: batch APIs are a hosted provider's queue, "
                        f"Ray spreads online calls over a cluster; choose one")
    if options.max_cost is not None:
        raise UserError(f"--max-cost is not kept under {what} yet; use --max-calls (kept per phase)")
    from .cluster.connect import check_address, resolve

    if options.ray is not None:
        check_address(resolve(options.ray))


def _build_roles(options: EvolveOptions) -> tuple[Llm, Llm]:
    """The evol and answer roles, checked and built (roles.build_roles). A vllm:MODEL role's calls
    are made by engines on the cluster: the driver keeps only its settings and usage."""
    from .cluster.pipeline import is_vllm

    specs = [(options.evol_settings(), "--evol-model"), (options.answer_settings(), "--answer-model")]
    own = [spec for spec in specs if not is_vllm(spec[0])]
    built = iter(build_roles(
        *own, cache_dir=options.cache_dir, concurrency=options.concurrency, memory=False,
        max_error_rate=options.max_error_rate, checks_dir=options.cache_dir or backends.DEFAULT_CACHE_DIR)
        if own else [])
    roles, engines = [], {}
    for settings, _ in specs:
        if is_vllm(settings):
            roles.append(engines.setdefault(settings, Llm(settings, None)))
        else:
            roles.append(next(built))
    return roles[0], roles[1]


@contextlib.contextmanager
def _on_cluster(options: EvolveOptions):
    """The Ray phase runner (pipeline.Cluster) for the run, joined to its cluster; None without --ray."""
    if not _uses_cluster(options):
        yield None
        return
    from .cluster import connect as cluster, pipeline

    # Workers run elsewhere: a relative cache folder or GGUF file is made absolute here, where it was meant.
    specs = {"evol": (pipeline.absolute(options.evol_settings()), "--evol-model"),
             "answer": (pipeline.absolute(options.answer_settings()), "--answer-model")}
    ray_options = pipeline.RayOptions(options.ray_workers, options.ray_batch_size, options.vllm_tensor_parallel,
                                      options.vllm_replicas)
    with cluster.connected(cluster.resolve(options.ray)):
        needed = pipeline.engines_gpus(specs.values(), ray_options)
        if needed > cluster.gpus():
            flag, settings = next((f, s) for s, f in specs.values() if pipeline.is_vllm(s))
            raise UserError(f"{flag} {settings.model}: its vLLM engines need {needed} GPU(s) (--vllm-replicas "
                            f"{options.vllm_replicas} x --vllm-tensor-parallel {options.vllm_tensor_parallel}) "
                            f"and the Ray cluster has {cluster.gpus():g}")
        yield pipeline.Cluster(specs, ray_options, pipeline.absolute_dir(options.cache_dir), options.concurrency,
                               options.max_error_rate)


def _check_out(out: Path, work: WorkFolder, fmt: str = output.DEFAULT_FORMAT) -> None:
    """The output and its work folder can be written where --out says, before any work is done. A
    folder format (hf) takes a folder that is new, empty, or an earlier dataset of this format (its
    README.md and data/ are replaced); any other folder is someone else's."""
    if output.FORMATS[fmt].folder:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: is a file; --format {fmt} writes a folder (data/ and README.md): "
                            f"name a new or empty folder")
        if out.is_dir():
            foreign = [p.name for p in out.iterdir() if p.name not in (output.HF_DATA, "README.md")
                       and not p.name.startswith(".")]
            if foreign:
                raise UserError(f"--out {out}: the folder holds other files ({', '.join(sorted(foreign)[:3])}); "
                                f"--format {fmt} replaces a folder's README.md and data/, so name a new or empty one")
        check_writable(out if out.is_dir() else out.parent, f"--out {out}")
        work.check()
        return
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name a file such as {out / 'evolved.jsonl'}"
                        f" (or write a Hugging Face dataset folder with --format hf)")
    check_writable(out.parent, f"--out {out}")
    work.check()


def _benchmarks(options: EvolveOptions) -> contamination.BenchmarkIndex | None:
    """--decontaminate's benchmark sets read and indexed (before any call: a bad file is one line)."""
    if not options.decontaminate:
        return None
    from .storage.data import benchmark_items

    return contamination.BenchmarkIndex(
        ((spec, item_id, text) for spec in options.decontaminate for item_id, text in benchmark_items(spec)),
        n=options.decontaminate_ngram)


def _run(options: EvolveOptions, out: Path, fmt: str, methods, work: WorkFolder, evol: Llm, answerer: Llm,
         heard: Observers, cluster_run=None, benchmarks=None) -> EvolveResult:
    """The run itself, under the work folder's lock; every event goes to ``heard``."""
    if cluster_run is not None:   # before a --restart drops anything: every node must see the folder
        from .cluster.connect import check_shared

        try:
            check_shared(work.path, f"--out {out}")
        except UserError:
            if not work.ingested:   # only the lock's folder was made: nothing of a run is there
                work.remove()
            raise
    seeds_path, bad = _claim(options, methods, work, benchmarks)
    started = time.perf_counter()
    seeds = sum(1 for _ in read(seeds_path))
    heard.start(options, seeds=seeds, methods=methods, concurrency=_live_concurrency(evol, answerer))
    budget = _Budget(options.max_calls, [evol, answerer], options.max_cost)
    if cluster_run is not None:
        complete = _cluster_seeds(cluster_run, work, seeds_path, evol, answerer, budget, heard)
    else:
        complete = llm_mod.run_async(_answer_seeds(options, work, seeds_path, answerer, budget, heard))
    for round_ in range(1, options.rounds + 1):
        if not complete:
            break
        # Every round's pool holds every seed once (a round ends only when each of its items has its record).
        pool = seeds_path if round_ == 1 else work.journal(round_ - 1)
        if cluster_run is not None:
            complete = _cluster_round(cluster_run, round_, pool, seeds, options, work, methods, evol, answerer,
                                      budget, heard, benchmarks)
        else:
            complete = llm_mod.run_async(_round(round_, pool, seeds, options, work, methods, evol, answerer,
                                                budget, heard, benchmarks=benchmarks))
    usage = {"evol": evol.usage.snapshot(), "answer": answerer.usage.snapshot()} if answerer is not evol else {
        "evol_and_answer": evol.usage.snapshot()}
    # --dedup near: which kept evolutions repeat another record (only once every round is whole)
    duplicates = _near_duplicates(options, work, seeds_path) if complete and options.dedup == "near" else {}
    result = EvolveResult(out=out, records=0, rejects=work.rejects,
                          rounds=_round_stats(work, options.rounds, duplicates),
                          bad_lines=bad, calls=usage, seconds=0.0, complete=complete,
                          costs=cost_mod.costs(usage, {"evol": evol.settings, "answer": answerer.settings,
                                                       "evol_and_answer": evol.settings},
                                               # a role sent to batches (--batch) is billed at the batch price
                                               batched={role: u for role, u in usage.items() if _batched(
                                                   answerer if role == "answer" else evol)}),
                          stopped=None if complete else budget.stopped_by)
    if complete:
        # Temporary files of an assembly that was killed: this process holds the lock, so they are no
        # one else's.
        remove_leftovers(*work.outputs())
        # At most every seed plus every kept evolution (seeds that got no answer drop out).
        bound = seeds + sum(s.kept for s in result.rounds)
        result.records = _assemble(options, work, seeds_path, out, fmt, bound, duplicates)
        _write_rejects(work, options.rounds, result.rejects, duplicates)
    result.seconds = round(time.perf_counter() - started, 2)
    result.stats = EvolveStats.of(result, evol.notices + answerer.notices,
                                  finishing=_finishing(options, work, benchmarks, duplicates, result.rounds))
    work.write_stats(result.stats.to_dict())
    heard.finish(result)
    result.run_id = heard.run_id
    if complete and output.FORMATS[fmt].folder:   # the card needs the stats (and the MLflow run, when recorded)
        _write_card(options, out, methods, evol, answerer, result, seeds)
        if options.push_to_hub:
            from .storage import hub

            hub.push(out, options.push_to_hub)
    return result


def _claim(options: EvolveOptions, methods, work: WorkFolder, benchmarks) -> tuple[Path, list[BadRow]]:
    """The work folder made this run's and the input read into it; an error here leaves no folder behind."""
    fresh = not work.ingested or options.restart
    try:
        work.claim(options.fingerprint(methods), restart=options.restart)
        found = _ingest(options, work, benchmarks)
    except BaseException:
        if fresh:   # nothing was done yet: leave no folder (or manifest) behind; the lock goes with it,
            work.remove()   # as this process, its holder, is about to let go
        raise
    work.drop_stale_temps()
    return found


def _near_duplicates(options: EvolveOptions, work: WorkFolder, seeds_path: Path) -> dict[str, str]:
    """--dedup near over the seeds and every round's kept evolutions (dedup.py): {dropped id: repeated id}.
    Holds their texts in memory (one string per record), unlike the rest of the run."""
    seeds = [(row["seed_id"], with_input(row["instruction"], row["input"])) for row in read(seeds_path)]
    evolved = [dedup_mod.Evolved(f"{row['seed_id']}#{round_}", row["seed_id"], round_, row["instruction"])
               for round_ in range(1, options.rounds + 1) for row in read(work.journal(round_))
               if row["status"] == "kept"]
    return dedup_mod.near_duplicates(seeds, evolved)


def _finishing(options: EvolveOptions, work: WorkFolder, benchmarks, duplicates: dict, rounds) -> dict:
    """stats.json's account of --decontaminate and --dedup (absent when neither was asked for)."""
    found = {}
    if benchmarks is not None:
        found["decontamination"] = {
            "benchmarks": list(options.decontaminate), "benchmark_items": len(benchmarks),
            "ngram": benchmarks.n, "share": benchmarks.share,
            "seeds": sum(1 for _ in read(work.contaminated)),
            "evolved": sum(s.eliminated.get(contamination.CONTAMINATED, 0) for s in rounds)}
    if options.dedup != "off":
        found["dedup"] = {"mode": options.dedup, "removed": len(duplicates),
                          "per_round": {str(s.round): s.eliminated.get(dedup_mod.NEAR_DUPLICATE, 0) for s in rounds}}
    return found


def _write_card(options: EvolveOptions, out: Path, methods, evol: Llm, answerer: Llm, result: EvolveResult,
                seeds: int) -> None:
    from .core.secrets import redact
    from .storage import card

    specs = [spec.rpartition("=")[0] if "=" in spec and spec.rpartition("=")[2].replace(".", "", 1).isdigit()
             else spec for spec in options.methods]
    links = {}
    for spec in specs:
        if spec.startswith("prompts:/"):
            from .tracking.registry import resolve

            links[resolve(spec).hash] = spec
    stats = result.stats.to_dict()
    facts = card.CardFacts(
        title=f"{out.name}: evolved from {Path(options.data).name if not options.data.startswith('hf:') else options.data}",
        records=result.records, seeds_source=redact(options.data) or options.data, seeds=seeds,
        evol_model=evol.settings.label, answer_model=answerer.settings.label,
        methods=tuple(card.MethodFact(m.name, m.hash, round(w, 4), m.text, links.get(m.hash, "")) for m, w in methods),
        rounds=tuple(stats["rounds"]), license=card.license_of(options.data), bad_lines=stats["bad_lines"],
        sample=options.sample, seed=options.seed, judge=options.judge, cost=stats.get("cost", {}),
        contamination=stats.get("decontamination", {}), dedup=options.dedup, tracking_run=result.run_id)
    with atomic_write(out / "README.md") as fh:
        fh.write(card.render(facts))


def _seed_rows(options: EvolveOptions):
    """The input's rows as seeds, streamed: (where, seed, None) for a usable row, (where, None, problem)
    for a bad one. A seed is {seed_id, instruction, input, output}; ingest and --dry-run share this.
    A CSV or Parquet file whose structure breaks raises UserError from stream_rows, whatever
    --on-bad-line says: no row after such a break can be trusted, so none is skipped past it."""
    seen: set[str] = set()
    field_name = options.instruction_field
    output_name = options.output_field
    for n, (where, row) in enumerate(stream_rows(options.data), start=1):
        if field_name is None and not isinstance(row, BadRow):
            field_name = guess_field(row, where)
        if output_name is None and not isinstance(row, BadRow):
            output_name = guess_output_field(row, exclude=(field_name, options.input_field)) or ""
        problem = _row_problem(row, field_name, options, seen, n)
        if problem is not None:
            yield where, None, problem
            continue
        seed_id = row_id(row, n)   # _row_problem put it in seen
        yield where, {"seed_id": seed_id, "instruction": row[field_name].strip(),
                      "input": str(row.get(options.input_field) or ""),
                      "output": str(row.get(output_name) or "") if output_name else ""}, None


def _ingest(options: EvolveOptions, work: WorkFolder, benchmarks=None) -> tuple[Path, list[BadRow]]:
    """Read the input once into ``seeds.jsonl``, reporting bad rows (or stopping at the first); under
    --decontaminate a seed that overlaps a benchmark item goes to ``contaminated.jsonl`` instead."""
    seeds, done, bad_file = work.seeds, work.seeds_done, work.bad_lines
    if done.exists():
        return seeds, [BadRow(**row) for row in read(bad_file)]
    bad: list[BadRow] = []
    usable = 0
    with atomic_write(seeds) as fh, (atomic_write(work.contaminated) if benchmarks is not None
                                     else contextlib.nullcontext()) as dirty:
        for where, seed, problem in _seed_rows(options):
            if seed is None:
                if options.on_bad_line == "fail":
                    raise UserError(f"{where}: {problem}")
                bad.append(BadRow(where, problem))
                continue
            hit = benchmarks.check(with_input(seed["instruction"], seed["input"])) if benchmarks is not None else None
            if hit is not None:
                dirty.write(json.dumps({**seed, "reason": contamination.CONTAMINATED, "benchmark": hit.benchmark,
                                        "benchmark_id": hit.item_id, "overlap": hit.share},
                                       ensure_ascii=False) + "\n")
                continue
            usable += 1
            fh.write(json.dumps(seed, ensure_ascii=False) + "\n")
    if not usable:
        first = f"; the first, {bad[0].where}: {bad[0].reason}" if bad else ""
        count = f" ({len(bad)} bad {'one' if len(bad) == 1 else 'ones'}{first})" if bad else ""
        raise UserError(f"{options.data}: no usable rows{count}")
    with atomic_write(bad_file) as fh:
        for b in bad:
            fh.write(json.dumps(dataclasses.asdict(b)) + "\n")
    done.touch()
    return seeds, bad


def _row_problem(row, field_name, options: EvolveOptions, seen: set[str], n: int) -> str | None:
    """The row rules every verb shares (data.row_problem), with --max-instruction-chars as the limit;
    a usable row's id goes into ``seen``."""
    return row_problem(row, field_name, seen, n, options.max_instruction_chars, "--max-instruction-chars")


async def _answer_seeds(options, work: WorkFolder, seeds_path, answerer, budget, heard: Observers,
                        pilot: "_PilotLog | None" = None) -> bool:
    """Seeds that came without an answer get one, so round 0 of the output is complete."""
    journal_path = work.answers
    done = work.resume(0, retry=Failure.LLM_ERROR.value)
    unanswered = sum(1 for row in read(seeds_path) if not row["output"])
    if unanswered == len(done):
        return True
    heard.phase("answer seeds", unanswered, len(done))
    todo = (row for row in read(seeds_path) if not row["output"] and row["seed_id"] not in done
            and (pilot is None or row["seed_id"] in pilot.ids))

    async def work_on(row, journal):
        steps = arun_steps(seed_answer(row), answerer, answerer)
        journal.append(await (steps if pilot is None else pilot.measure(0, row["seed_id"], steps)))
        heard.advance("answer seeds")

    budget.phase()
    return await _drive(todo, work_on, journal_path, options.concurrency, budget, calls_per_item=1)


async def _drive(rows, work_on, journal_path: Path, concurrency: int | str, budget: _Budget, *,
                 calls_per_item: int) -> bool:
    """Run ``work_on`` over ``rows`` with at most ``concurrency`` in flight; False if the budget ran out.
    Under "auto" the roles' adaptive gates (concurrency.py) limit the calls, and the items in flight
    follow their limits (``_width``).

    Rows are pulled from the (streamed) iterator only as slots free up, so memory does not grow with
    the dataset."""
    width = _width(concurrency, budget.llms)
    semaphore = contextlib.nullcontext() if callable(width) else asyncio.Semaphore(width)
    ahead = width if callable(width) else (lambda: 2 * width)
    stopped = False
    pending: set[asyncio.Task] = set()   # the items' tasks that have not ended
    failed: list[BaseException] = []   # the first error of any item: it stops the phase
    # Each task leaves ``pending`` as it ends and wakes the feeder (``ended``): asyncio.wait over the
    # 2 x concurrency tasks in flight added and removed that many done-callbacks per item, profiled.
    # A task leaves in its own last step, so ``pending`` is exactly the tasks not done, as
    # asyncio.wait's pending set was (a done-callback would run a loop pass later).
    ended = asyncio.Event()

    async def next_end() -> None:
        ended.clear()
        await ended.wait()

    try:
        with Journal(journal_path) as journal:
            async def guarded(row):
                try:
                    async with semaphore:
                        if failed:
                            return
                        try:
                            await work_on(row, journal)
                        except asyncio.CancelledError:
                            raise
                        except BaseException as exc:   # kept for the phase to raise, never lost in a task
                            failed.append(exc)
                finally:
                    pending.discard(asyncio.current_task())
                    ended.set()

            try:
                for row in rows:
                    if failed:
                        raise failed[0]
                    while not budget.allows(calls_per_item * (len(pending) + 1)):
                        if not pending or budget.stopped_by != "--max-cost":
                            stopped = True
                            break
                        await next_end()   # --max-cost: what the calls in flight cost tells; then ask again
                    if stopped:
                        break
                    pending.add(asyncio.create_task(guarded(row)))
                    while len(pending) >= ahead():
                        await next_end()
                while pending and not failed:   # an outage at the end of a phase stops it as soon, too
                    await next_end()
                if failed:
                    raise failed[0]
            except BaseException:
                # An outage or Ctrl-C: the items in flight are dropped (redone by the next run) before
                # the journal closes, so none of them writes to it afterwards.
                for task in list(pending):
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
    finally:
        for llm in budget.llms:
            await llm.aclose()
    return not stopped


async def _round(round_: int, pool: Path, total: int, options: EvolveOptions, work: WorkFolder, methods,
                 evol: Llm, answerer: Llm, budget: _Budget, heard: Observers, *, benchmarks=None,
                 pilot: "_PilotLog | None" = None) -> bool:
    journal_path = work.journal(round_)
    done = work.resume(round_, retry=Failure.LLM_ERROR.value)
    heard.phase(f"round {round_}", total, len(done))
    plan = round_plan(round_, options, methods, evol, answerer, benchmarks)

    # Steps an earlier run finished for items it did not finish (the evolution, the judge's verdict):
    # a rerun starts those items after them, so without a reply cache it pays for no finished call.
    partial_path = work.journal(round_, partial=True)
    known = {row["seed_id"]: row for row in read(partial_path) if row["seed_id"] not in done}
    partial = Journal(partial_path, flush=False)   # a kill may cost its last lines: calls paid again, nothing lost

    async def work_on(row, journal):
        steps = round_item(row, plan, known=known.pop(row["seed_id"], {}),
                           keep=lambda step: partial.append({"seed_id": row["seed_id"], **step}))
        if pilot is None:
            journal.append(await arun_steps(steps, evol, answerer))
        else:
            journal.append(await pilot.measure(round_, row["seed_id"], arun_steps(steps, evol, answerer)))
        heard.advance(f"round {round_}")

    rows = (row for row in read(pool) if row["seed_id"] not in done
            and (pilot is None or row["seed_id"] in pilot.ids))
    budget.phase()
    with partial:
        complete = await _drive(rows, work_on, journal_path, options.concurrency, budget,
                                calls_per_item=plan.calls_per_item)
    if complete and pilot is None:   # every item of the round is in its journal: the steps kept on the way are spent
        partial_path.unlink(missing_ok=True)
    return complete


# --- the phases on a Ray cluster (--ray): pipeline.py runs the items, the journals stay here ---------

def _cluster_seeds(cluster_run, work: WorkFolder, seeds_path: Path, evol: Llm, answerer: Llm, budget: _Budget,
                   heard: Observers) -> bool:
    from .cluster.pipeline import Phase

    done = work.resume(0, retry=Failure.LLM_ERROR.value)
    unanswered = sum(1 for row in read(seeds_path) if not row["output"])
    if unanswered == len(done):
        return True
    return _cluster_phase(cluster_run, Phase(), "answer seeds", seeds_path, work.answers, unanswered, done,
                          evol, answerer, budget, heard)


def _cluster_round(cluster_run, round_: int, pool: Path, total: int, options: EvolveOptions, work: WorkFolder,
                   methods, evol: Llm, answerer: Llm, budget: _Budget, heard: Observers, benchmarks=None) -> bool:
    from .cluster.pipeline import Phase

    done = work.resume(round_, retry=Failure.LLM_ERROR.value)
    complete = _cluster_phase(cluster_run, Phase(round_plan(round_, options, methods, evol, answerer, benchmarks)),
                              f"round {round_}", pool, work.journal(round_), total, done, evol, answerer, budget,
                              heard)
    if complete:   # steps an earlier single-process run kept are spent (this path starts items afresh)
        work.journal(round_, partial=True).unlink(missing_ok=True)
    return complete


def _cluster_phase(cluster_run, phase, label: str, pool: Path, journal_path: Path, total: int, done: set,
                   evol: Llm, answerer: Llm, budget: _Budget, heard: Observers) -> bool:
    """One phase on the cluster: the records journaled as they come back, their calls counted in the
    roles' usage. --max-calls is kept per phase: only the items whose calls all fit are sent."""
    heard.phase(label, total, len(done))
    limit = None
    if budget.limit is not None:
        fit = max(0, budget.limit - (budget.used() - budget.start)) // phase.calls_per_item
        if fit < total - len(done):
            limit, budget.stopped_by = fit, "--max-calls"
            if not fit:
                return False
    def on_record(key: str, record: dict) -> None:
        journal.append(record)
        heard.advance(label)

    with Journal(journal_path) as journal:
        cluster_run.run(phase, pool, done, limit, on_record, roles={"evol": evol, "answer": answerer}, label=label,
                        items=total)
    return limit is None


def round_plan(round_: int, options: EvolveOptions, methods, evol: Llm, answerer: Llm, benchmarks=None) -> RoundPlan:
    """What decides round ``round_``'s records besides the replies (rounds.RoundPlan). An item failed
    last round is evolved again at --retry-temperature when --evol-temperature is 0 (greedy would
    repeat the failure)."""
    return RoundPlan(round_, tuple(methods), options.seed, options.judge,
                     options.retry_temperature if not options.evol_temperature else None,
                     evol.settings.label, answerer.settings.label, benchmarks)


def _round_stats(work: WorkFolder, rounds: int, duplicates: dict | None = None) -> list[RoundStats]:
    """Kept and eliminated per round; a kept evolution --dedup drops counts as eliminated (near_duplicate)."""
    duplicates = duplicates or {}
    stats = []
    for round_ in range(1, rounds + 1):
        s = RoundStats(round_)
        for row in read(work.journal(round_)):
            if row["status"] == "kept" and f"{row['seed_id']}#{round_}" in duplicates:
                s.eliminated[dedup_mod.NEAR_DUPLICATE] += 1
            elif row["status"] == "kept":
                s.kept += 1
                s.words_before += _words(row["parent_instruction"])
                s.words_after += _words(row["instruction"])
            else:
                s.eliminated[row["reason"]] += 1
        stats.append(s)
    return stats


def _records(options: EvolveOptions, work: WorkFolder, seeds_path: Path):
    """Every output record: the seeds (round 0; answered here when they came without) and each
    round's kept evolutions."""
    def seed_record(row: dict) -> dict:
        return {"id": f"{row['seed_id']}#0", "seed_id": row["seed_id"], "round": 0,
                "instruction": row["instruction"], "input": row["input"], "output": row["output"],
                "method": "", "method_hash": "", "parent_instruction": "", "evol_model": "", "answer_model": ""}

    for row in read(seeds_path):
        if row["output"]:
            yield seed_record(row)
    for row in read(work.answers):
        if row["output"]:
            yield seed_record(row)
    for round_ in range(1, options.rounds + 1):
        for row in read(work.journal(round_)):
            if row["status"] == "kept":
                yield {"id": f"{row['seed_id']}#{round_}", **{k: row.get(k) for k in (
                    "seed_id", "round", "instruction", "input", "output", "method", "method_hash",
                    "parent_instruction", "evol_model", "answer_model")}}


def _assemble(options: EvolveOptions, work: WorkFolder, seeds_path: Path, out: Path, fmt: str, bound: int,
              duplicates: dict | None = None) -> int:
    """Write the output; ``bound`` (at least the number of records) only sizes the shuffle's buckets,
    so the journals are read once here, not counted first. ``duplicates`` (--dedup) are left out."""
    records = _records(options, work, seeds_path)
    if duplicates:
        records = (r for r in records if r["id"] not in duplicates)
    ordered = output.shuffled(records, seed=options.seed, count=bound, workdir=work.path)
    if options.sample is not None:
        ordered = itertools.islice(ordered, options.sample)
    return output.write(ordered, out, fmt)


def _write_rejects(work: WorkFolder, rounds: int, path: Path, duplicates: dict | None = None) -> None:
    duplicates = duplicates or {}
    with atomic_write(path) as fh:
        for row in read(work.contaminated):   # --decontaminate: seeds left out at ingest
            fh.write(json.dumps({"id": f"{row['seed_id']}#0", "round": 0, "status": "rejected", **row},
                                ensure_ascii=False) + "\n")
        for row in read(work.answers):
            if not row["output"]:
                fh.write(json.dumps({"id": f"{row['seed_id']}#0", "round": 0, "status": "rejected", **row},
                                    ensure_ascii=False) + "\n")
        for round_ in range(1, rounds + 1):
            for row in read(work.journal(round_)):
                record_id = f"{row['seed_id']}#{round_}"
                if row["status"] == "rejected":
                    fh.write(json.dumps({"id": record_id, **row}, ensure_ascii=False) + "\n")
                elif record_id in duplicates:
                    fh.write(json.dumps({"id": record_id, **row, "status": "rejected",
                                         "reason": dedup_mod.NEAR_DUPLICATE, "duplicate_of": duplicates[record_id]},
                                        ensure_ascii=False) + "\n")


# What an evolver writes besides the instruction, per working step of the method's reply format (e0's
# Methods List and Plan): assumed about 120 tokens each when nothing is measured. e0's reply is four
# steps, two of them the instruction again (rewritten, then finally rewritten), so it writes several
# times the instruction's length; --pilot measures it instead.
WORKING_STEP_TOKENS = 120
# The evolved instruction is about this much longer than the one it came from (e0 adds 10 to 20 words).
GROWTH = 1.3
Z95 = 1.96


def _evolver_reply_tokens(method: Method, instruction_tokens: float) -> float:
    """The tokens an evolver's reply to ``method`` takes, from its reply format (llm/replies.py): each
    field that holds an instruction about as long as the evolved one, each other field a working step."""
    from .llm.replies import evolution_format

    fields = evolution_format(method.text).fields
    return sum(instruction_tokens * GROWTH if "instruction" in f.label.lower() or "prompt" in f.label.lower()
               else WORKING_STEP_TOKENS for f in fields) or instruction_tokens * GROWTH


def _estimate(options: EvolveOptions, methods, benchmarks=None, measured: list[dict] | None = None,
              spent: dict | None = None) -> dict:
    """Calls, tokens and cost a run would take, per role. Without ``measured``, on paper, calling nothing
    (tokens ~ characters / 4; the evolver's reply from its method's reply format; the information-gain
    judge's calls belong to the evol role; cost from cost.py's prices). With ``measured`` (--pilot: per
    pilot item and phase, the calls and the server's token counts per role) the pilot's means are
    extrapolated to every item, with a 95% range (``_extrapolate``). The JSON keeps the keys it always
    had (prompt_tokens_estimate, output_tokens_estimate, roles, cost_usd)."""
    from .algorithm.judge import gain_prompt

    items = chars = unanswered = bad = dirty = 0
    for _, seed, _ in _seed_rows(options):
        if seed is None:
            bad += 1
            continue
        if benchmarks is not None and benchmarks.check(with_input(seed["instruction"], seed["input"])):
            dirty += 1
            continue
        items += 1
        chars += len(seed["instruction"])
        unanswered += not seed["output"]
    per_item = 3 if options.judge else 2   # rounds.RoundPlan.calls_per_item
    weights = sum(w for _, w in methods)
    method_chars = sum(len(m.text) * w for m, w in methods) / weights
    mean, evolutions = chars / max(items, 1), items * options.rounds
    reply = sum(_evolver_reply_tokens(m, mean / 4) * w for m, w in methods) / weights
    judged = evolutions if options.judge else 0
    paper = {
        "evol": {"calls": evolutions + judged,
                 "input_tokens": (evolutions * (method_chars + mean)
                                  + judged * (len(gain_prompt("", "")) + mean * (1 + GROWTH))) / 4,
                 "output_tokens": evolutions * reply + judged * 3},
        "answer": {"calls": unanswered + evolutions,
                   "input_tokens": (unanswered * mean + evolutions * mean * GROWTH) / 4,
                   "output_tokens": (unanswered + evolutions) * options.answer_max_tokens / 4},
    }
    ranges = None
    if measured is not None:
        paper, ranges = _extrapolate(measured, {0: unanswered, **{r: items for r in range(1, options.rounds + 1)}})
    settings = {"evol": options.evol_settings(), "answer": options.answer_settings()}
    batched = {"evol": options.batch in ("all", "evol"), "answer": options.batch in ("all", "answer")}

    def priced(usages: dict) -> dict:
        out = {}
        for role, r in usages.items():
            usage = {k: int(round(v)) for k, v in r.items()}
            out[role] = cost_mod.role_cost(role, usage, cost_mod.price_of(settings[role]), settings[role].model,
                                           batched=usage if batched[role] else None)
        return out

    estimate, cost_usd = cost_mod.estimate(priced(paper))
    for role, row in estimate.items():
        row["price"] = "batch" if batched[role] else "online"
    found = {"items": items, "bad_rows": bad, "seeds_without_answer": unanswered, "rounds": options.rounds,
             "calls": (sum(r["calls"] for r in estimate.values()) if measured is not None
                       else unanswered + items * options.rounds * per_item),
             "prompt_tokens_estimate": sum(r["input_tokens"] for r in estimate.values()),
             "output_tokens_estimate": sum(r["output_tokens"] for r in estimate.values()),
             "roles": estimate,
             "cost_usd": cost_usd}
    if benchmarks is not None:
        found["contaminated_seeds"] = dirty
    prices = ("online (not batch) prices" if not options.batch else
              "batch prices for the roles --batch sends to batches, online for the others")
    if measured is None:
        found["assumes"] = ("every evolution kept (eliminated ones make no answer call, so this is an upper bound "
                            "on the answers); tokens ~ characters / 4; the evolver's reply: "
                            f"~{reply:.0f} tokens (each instruction field of the method's reply format about "
                            f"{GROWTH:g} x the seed's length, each working step such as a plan ~{WORKING_STEP_TOKENS} "
                            "tokens); answers average a quarter of --answer-max-tokens; " + prices
                            + "; --pilot N measures all of this on the first N items")
        return found
    lo, hi = priced(ranges[0]), priced(ranges[1])
    for role, row in estimate.items():
        row["range"] = {k: [int(round(ranges[0][role][k])), int(round(ranges[1][role][k]))]
                        for k in ("calls", "input_tokens", "output_tokens")}
        if lo[role].usd is not None:
            row["range"]["cost_usd"] = [round(lo[role].usd, 6), round(hi[role].usd, 6)]
    if all(lo[r].usd is not None for r in lo):
        found["cost_usd_range"] = [round(sum(c.usd for c in lo.values()), 6), round(sum(c.usd for c in hi.values()), 6)]
    found["pilot"] = _pilot_summary(measured, spent or {}, settings, batched)
    found["assumes"] = (f"the first {found['pilot']['items']} items (the pilot) stand for the rest: their calls and "
                        "tokens per item, as the server counted them, per round, times every item; the range is a 95% "
                        "interval of that mean (normal, finite-population corrected); " + prices)
    return found


def _extrapolate(measured: list[dict], totals: dict[int, int]) -> tuple[dict, tuple[dict, dict]]:
    """Per role, calls and tokens for every item from the pilot's per-item measures: per phase (0: the
    seeds' answers, r: round r) N_p items x the pilot's mean, summed. The 95% range is that of a sum of
    the pilot items' own totals, each item's phases weighted by N_p / n_p (so a long seed, long in every
    round, counts once, not as independent phases): the standard error sd / sqrt(n) of their mean, times
    the finite-population correction sqrt(1 - n / N). A phase the pilot did not reach (seeds with answers
    in the pilot, none without) takes the answer role's mean per call over the pilot's rounds."""
    keys = ("calls", "input_tokens", "output_tokens")
    roles = ("evol", "answer")
    by_phase: dict[int, list[dict]] = {}
    for line in measured:
        by_phase.setdefault(int(line["phase"]), []).append(line)
    point = {role: dict.fromkeys(keys, 0.0) for role in roles}
    answer_calls = [line["answer"] for p, lines in by_phase.items() if p for line in lines if line["answer"]["calls"]]
    weighted: dict[str, dict[str, dict[str, float]]] = {}   # item -> role -> key -> its weighted total
    for phase, total in totals.items():
        if not total:
            continue
        lines = by_phase.get(phase, [])
        if not lines:
            if phase == 0 and answer_calls:
                calls = sum(a["calls"] for a in answer_calls)
                for k in keys:
                    point["answer"][k] += total * sum(a[k] for a in answer_calls) / calls
            continue
        weight = total / len(lines)
        for line in lines:
            item = weighted.setdefault(line["seed_id"], {role: dict.fromkeys(keys, 0.0) for role in roles})
            for role in roles:
                for k in keys:
                    item[role][k] += weight * line[role][k]
                    point[role][k] += weight * line[role][k]
    n, population = len(weighted), max(totals.values(), default=0)
    spread = {role: dict.fromkeys(keys, 0.0) for role in roles}
    if n > 1:
        for role in roles:
            for k in keys:
                values = [item[role][k] for item in weighted.values()]
                m = sum(values) / n
                sd2 = sum((v - m) ** 2 for v in values) / (n - 1)
                spread[role][k] = Z95 * (n * sd2 * max(0.0, 1 - n / population)) ** 0.5
    low = {role: {k: max(0.0, point[role][k] - spread[role][k]) for k in keys} for role in roles}
    high = {role: {k: point[role][k] + spread[role][k] for k in keys} for role in roles}
    return point, (low, high)


def _pilot_summary(measured: list[dict], spent: dict, settings: dict, batched: dict) -> dict:
    """What the pilot did: its items, their calls and tokens (all kept in the work folder), tokens per
    call per role, the elimination rate per round, and what this process paid for it."""
    keys = ("calls", "input_tokens", "output_tokens")
    used = {role: {k: sum(line[role][k] for line in measured) for k in keys} for role in ("evol", "answer")}
    per_call = {role: {k: round(u[k] / u["calls"], 1) for k in ("input_tokens", "output_tokens")}
                for role, u in used.items() if u["calls"]}
    rounds: dict[int, Counter] = {}
    for line in measured:
        if int(line["phase"]):
            rounds.setdefault(int(line["phase"]), Counter())[line.get("reason") or "kept"] += 1
    elimination = {str(r): {"items": sum(c.values()), "eliminated": sum(v for k, v in c.items() if k != "kept"),
                            "rate": round(sum(v for k, v in c.items() if k != "kept") / sum(c.values()), 3),
                            "reasons": {k: v for k, v in c.items() if k != "kept"}}
                   for r, c in sorted(rounds.items())}
    paid = cost_mod.costs(spent, settings, batched={r: u for r, u in spent.items() if batched.get(r)}) if spent else {}
    return {"items": len({line["seed_id"] for line in measured}), "used": used, "per_call": per_call,
            "elimination": elimination,
            "spent_usd": cost_mod.total(paid) if paid else 0.0,
            "kept_in": "the work folder of --out: the real run pays for these items' calls no more"}


class _PilotLog:
    """--pilot: which seeds the pilot runs, and each one's calls per role and phase, measured by a Tally
    (client.TALLY: every call made in the item's task counts there) and appended to ``pilot.jsonl``."""

    def __init__(self, path: Path, ids: set[str], evol: Llm, answerer: Llm) -> None:
        self.path, self.ids, self.evol, self.answerer = path, ids, evol, answerer

    async def measure(self, phase: int, seed_id: str, steps) -> dict:
        tally = llm_mod.Tally()
        token = llm_mod.TALLY.set(tally)
        try:
            record = await steps
        finally:
            llm_mod.TALLY.reset(token)

        def used(llm) -> dict:
            u = tally.of(llm.usage)
            return {"calls": u.calls, "input_tokens": u.input_tokens, "output_tokens": u.output_tokens}

        evol = used(self.evol)
        answer = used(self.answerer) if self.answerer is not self.evol else {"calls": 0, "input_tokens": 0,
                                                                              "output_tokens": 0}
        line = {"phase": phase, "seed_id": seed_id, "reason": record.get("reason"), "evol": evol, "answer": answer}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        return record


def _pilot(n: int, options: EvolveOptions, methods, work: WorkFolder, evol: Llm, answerer: Llm, heard: Observers,
           benchmarks) -> dict:
    """--dry-run --pilot N: the first N seeds through every phase for real, measured; then the estimate
    extrapolated from them. Their records go to the journals, as a run's do, so the real run (the same
    command without --dry-run) continues after them; the work folder's manifest holds the same settings."""
    seeds_path, _ = _claim(options, methods, work, benchmarks)
    seeds = sum(1 for _ in read(seeds_path))
    ids = set(itertools.islice((row["seed_id"] for row in read(seeds_path)), n))
    log = _PilotLog(work.pilot, ids, evol, answerer)
    budget = _Budget(options.max_calls, [evol, answerer], options.max_cost)
    complete = llm_mod.run_async(_answer_seeds(options, work, seeds_path, answerer, budget, heard, pilot=log))
    for round_ in range(1, options.rounds + 1):
        if not complete:
            break
        pool = seeds_path if round_ == 1 else work.journal(round_ - 1)
        complete = llm_mod.run_async(_round(round_, pool, seeds, options, work, methods, evol, answerer, budget,
                                            heard, benchmarks=benchmarks, pilot=log))
    if not complete:
        raise UserError(f"--pilot {n}: stopped at {budget.stopped_by or 'a budget'} before its items were done; "
                        f"what it finished is kept in {work.path}")
    latest = {(line["phase"], line["seed_id"]): line for line in read(work.pilot) if line["seed_id"] in ids}
    spent = ({"evol": evol.usage.snapshot(), "answer": answerer.usage.snapshot()} if answerer is not evol
             else {"evol": evol.usage.snapshot()})
    return _estimate(options, methods, benchmarks, measured=list(latest.values()), spent=spent)
