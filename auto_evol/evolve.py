"""Evolve a whole dataset: rounds of evolution, answers and elimination, checkpointed as they finish.

Each round evolves every instruction of the pool once with a method drawn (seeded) from the chosen
ones, has the evolved instruction judged for information gain and answered, and eliminates failures
(Evol-Instruct's four rules and F(r)). A failed instruction goes back to the pool unchanged and is
tried again next round. The output merges the seeds and every round's kept records in a seeded
random order, optionally sampled to ``sample`` records.

All state lives in ``<out>.work/``: the seeds as read, one journal per round. A rerun of the same
command skips whatever a journal already holds, so a crash, kill -9, rate limit or --max-calls stop
never costs finished work and never duplicates a record.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import llm as llm_mod
from . import locks, output
from .checkpoint import Journal, atomic_write, check_writable, read, remove_leftovers
from .data import BadRow, guess_field, guess_output_field, row_id, row_problem, stream_rows, with_input
from .errors import UserError
from .failure import Failure, elimination_failure, instruction_failure
from .judge import Verdict, read_verdict
from .llm import LLMError, Llm, RoleSettings
from .method import Method
from .replies import evolution_format
from .trajectory import judge_evolution

CLASSIC = "evol-instruct"
CLASSIC_OPERATORS = ("evol-instruct-constraints", "evol-instruct-deepening", "evol-instruct-concretizing",
                     "evol-instruct-reasoning", "evol-instruct-complicate-input", "evol-instruct-breadth")

JUDGE_PROMPT = """\
Compare two instructions.

First instruction:
{first}

Second instruction:
{second}

Do they set the same constraints and requirements, and ask with the same depth and breadth? Reply
with exactly one of two phrases: 'equal' if they do, 'not equal' if the second asks for more or
for something different.
"""


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
    concurrency: int = 64
    timeout: float = 120.0                    # seconds for one call to a provider
    max_calls: int | None = None
    max_instruction_chars: int = 20000
    max_error_rate: float = llm_mod.MAX_ERROR_RATE    # stop when this share of a role's recent calls failed
    on_bad_line: str = "skip"
    restart: bool = False                     # drop the work folder of an earlier run first
    cache_dir: str | None = None              # DSPy's reply cache: off by default, see below
    track: bool = True
    structured: str = "auto"                  # JSON-schema replies from the evolver: auto | on | off
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
        from .http_engine import redact

        # A password in --api-base is never written down; a rerun may give it again, or another one.
        return {**{k: getattr(self, k) for k in keep}, "api_base": redact(self.api_base) or None,
                "methods": [[m.hash, w] for m, w in methods]}


@dataclass
class RoundStats:
    round: int
    kept: int = 0
    eliminated: Counter = field(default_factory=Counter)
    words_before: int = 0
    words_after: int = 0

    def to_dict(self) -> dict:
        return {"round": self.round, "kept": self.kept, "eliminated": dict(self.eliminated),
                "mean_words_before": round(self.words_before / self.kept, 2) if self.kept else None,
                "mean_words_after": round(self.words_after / self.kept, 2) if self.kept else None}


@dataclass
class EvolveResult:
    out: Path
    records: int
    rejects: Path
    rounds: list[RoundStats]
    bad_lines: list[BadRow]
    calls: dict
    seconds: float
    complete: bool                  # False when --max-calls stopped it: rerun to go on
    run_id: str | None = None


class EvolveReporter:
    def start(self, options: EvolveOptions, seeds: int, methods: list[tuple[Method, float]]) -> None: ...
    def phase(self, name: str, total: int, done: int) -> None: ...
    def advance(self) -> None: ...
    def finish(self, result: EvolveResult) -> None: ...


def resolve_methods(specs: list[str]) -> list[tuple[Method, float]]:
    """``NAME[=WEIGHT]`` specs as (method, weight); 'evol-instruct' is its six operators sharing a weight."""
    from .registry import resolve

    chosen: list[tuple[Method, float]] = []
    for spec in specs:
        name, weight = spec, 1.0
        head, sep, tail = spec.rpartition("=")
        if sep:
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass
        if weight <= 0:
            raise UserError(f"--method {spec}: the weight must be above 0")
        if name == CLASSIC:
            chosen += [(resolve(op), weight / len(CLASSIC_OPERATORS)) for op in CLASSIC_OPERATORS]
        else:
            chosen.append((resolve(name), weight))
    if not chosen:
        raise UserError("no --method given")
    return chosen


def pick(methods: list[tuple[Method, float]], seed: int, seed_id: str, round_: int) -> Method:
    """The method for one instruction in one round: uniform by weight, the same on every rerun."""
    rng = random.Random(f"{seed}:{seed_id}:{round_}")
    return rng.choices([m for m, _ in methods], weights=[w for _, w in methods])[0]


def _words(text: str) -> int:
    return len(text.split())


# --- the run ---------------------------------------------------------------------------------------

class _Budget:
    """--max-calls: how many more calls this process may start."""

    def __init__(self, limit: int | None, llms: list[Llm]) -> None:
        self.limit = limit
        self.llms = list({id(x): x for x in llms}.values())  # evol and answer may be one Llm
        self.start = self.used()

    def used(self) -> int:
        return sum(llm.usage.calls for llm in self.llms)

    def allows(self, more: int) -> bool:
        return self.limit is None or self.used() - self.start + more <= self.limit


def evolve(options: EvolveOptions, *, reporter: EvolveReporter | None = None, evol: Llm | None = None,
           answerer: Llm | None = None, dry_run: bool = False) -> EvolveResult | dict:
    """Evolve ``options.data``; with ``dry_run`` only count the calls and tokens it would take.

    The steps: check every setting and the output's place; build (and check) the roles; take the work
    folder's lock; read the input into the work folder; answer the seeds that have no answer; run the
    rounds; assemble the output and the rejects; record the run. Everything up to the first LLM call
    that can be wrong with the input is found before it, and an error there leaves nothing behind.
    """
    reporter = reporter or EvolveReporter()
    _validate(options)
    out = Path(options.out)
    fmt = output.format_for(out, options.format)
    methods = resolve_methods(options.methods)
    work = Path(str(out) + ".work")
    _check_out(out, work)
    if dry_run:
        return _estimate(options, methods)
    if evol is None or answerer is None:
        built_evol, built_answerer = llm_mod.build_roles(
            (options.evol_settings(), "--evol-model"), (options.answer_settings(), "--answer-model"),
            cache_dir=options.cache_dir, concurrency=options.concurrency, memory=False,
            max_error_rate=options.max_error_rate, checks_dir=options.cache_dir or llm_mod.DEFAULT_CACHE_DIR)
        evol, answerer = evol or built_evol, answerer or built_answerer
    with locks.hold(work / LOCK, f"{work} (the work folder of --out {out})", note=evol.notice):
        return _run(options, out, fmt, methods, work, evol, answerer, reporter)


LOCK = "lock"   # in the work folder: held by the one process working there


def _validate(options: EvolveOptions) -> None:
    if options.on_bad_line not in ("skip", "fail"):
        raise UserError("--on-bad-line must be skip or fail")
    for name in ("rounds", "concurrency", "evol_max_tokens", "answer_max_tokens", "max_instruction_chars"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if options.sample is not None and options.sample < 1:
        raise UserError(f"--sample must be at least 1, got {options.sample}")
    if options.max_calls is not None and options.max_calls < 1:
        raise UserError(f"--max-calls must be at least 1, got {options.max_calls}")
    if options.timeout <= 0:
        raise UserError(f"--timeout must be above 0, got {options.timeout}")
    for name in ("evol_temperature", "retry_temperature", "answer_temperature"):
        if not 0 <= getattr(options, name) <= 2:
            raise UserError(f"--{name.replace('_', '-')} must be between 0 and 2")
    if not 0 < options.answer_top_p <= 1:
        raise UserError(f"--answer-top-p must be above 0 and at most 1, got {options.answer_top_p}")
    llm_mod.check_error_rate(options.max_error_rate)
    llm_mod.check_structured(options.structured)


def _check_out(out: Path, work: Path) -> None:
    """The output and its work folder can be written where --out says, before any work is done."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name a file such as {out / 'evolved.jsonl'}")
    check_writable(out.parent, f"--out {out}")
    if work.exists() and (not work.is_dir() or not os.access(work, os.W_OK | os.X_OK)):
        raise UserError(f"--out {out}: its work folder {work} cannot be written")


def _run(options: EvolveOptions, out: Path, fmt: str, methods, work: Path, evol: Llm, answerer: Llm,
         reporter: EvolveReporter) -> EvolveResult:
    """The run itself, under the work folder's lock."""
    fresh = not (work / "seeds.done").exists() or options.restart
    try:
        _prepare(work, options, methods)
        seeds_path, bad = _ingest(options, work)
    except BaseException:
        if fresh:   # nothing was done yet: leave no folder (or manifest) behind; the lock goes with it,
            shutil.rmtree(work, ignore_errors=True)   # as this process, its holder, is about to let go
        raise
    for stale in work.glob(".*.tmp"):   # a journal rewrite or stats write cut short by a kill
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    seeds = sum(1 for _ in read(seeds_path))
    reporter.start(options, seeds, methods)
    budget = _Budget(options.max_calls, [evol, answerer])
    complete = llm_mod.run_async(_answer_seeds(options, work, seeds_path, answerer, budget, reporter))
    for round_ in range(1, options.rounds + 1):
        if not complete:
            break
        pool = seeds_path if round_ == 1 else _journal(work, round_ - 1)
        complete = llm_mod.run_async(_round(round_, pool, options, work, methods, evol, answerer, budget, reporter))
    usage = {"evol": evol.usage.snapshot(), "answer": answerer.usage.snapshot()} if answerer is not evol else {
        "evol_and_answer": evol.usage.snapshot()}
    result = EvolveResult(out=out, records=0, rejects=out.with_name(out.stem + ".rejects.jsonl"),
                          rounds=_round_stats(work, options.rounds),
                          bad_lines=bad, calls=usage, seconds=0.0, complete=complete)
    if complete:
        # Temporary files of an assembly that was killed: this process holds the lock, so they are no
        # one else's.
        remove_leftovers(out, result.rejects, out.with_name(out.stem + ".provenance.jsonl"))
        # At most every seed plus every kept evolution (seeds that got no answer drop out).
        bound = seeds + sum(s.kept for s in result.rounds)
        result.records = _assemble(options, work, seeds_path, out, fmt, bound)
        _write_rejects(work, options.rounds, result.rejects)
    result.seconds = round(time.perf_counter() - started, 2)
    stats = _stats_dict(result)
    stats["notices"] = list(dict.fromkeys(evol.notices + answerer.notices))  # adaptations and fallbacks
    with atomic_write(work / "stats.json") as fh:
        json.dump(stats, fh, indent=2)
    if options.track and complete:
        from .tracking import log_evolve

        result.run_id = log_evolve(options, result, stats)
    reporter.finish(result)
    return result


def _prepare(work: Path, options: EvolveOptions, methods) -> None:
    manifest = work / "manifest.json"
    wanted = options.fingerprint(methods)
    if options.restart and work.exists():
        for entry in work.iterdir():   # all but the lock this process holds
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if manifest.exists() and not (work / "seeds.done").exists():
        manifest.unlink()  # an earlier run stopped before reading its input: no work to keep
    if manifest.exists():
        if json.loads(manifest.read_text()) != wanted:
            raise UserError(f"{work} holds a run with other settings; rerun that command to finish it, "
                            f"or add --restart to drop it, or choose another --out")
        return
    work.mkdir(parents=True, exist_ok=True)
    with atomic_write(manifest) as fh:
        json.dump(wanted, fh, indent=2)


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


def _ingest(options: EvolveOptions, work: Path) -> tuple[Path, list[BadRow]]:
    """Read the input once into ``seeds.jsonl``, reporting bad rows (or stopping at the first)."""
    seeds, done, bad_file = work / "seeds.jsonl", work / "seeds.done", work / "bad_lines.jsonl"
    if done.exists():
        return seeds, [BadRow(**row) for row in read(bad_file)]
    bad: list[BadRow] = []
    usable = 0
    with atomic_write(seeds) as fh:
        for where, seed, problem in _seed_rows(options):
            if seed is None:
                if options.on_bad_line == "fail":
                    raise UserError(f"{where}: {problem}")
                bad.append(BadRow(where, problem))
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


def _journal(work: Path, round_: int, kind: str = "") -> Path:
    """Round ``round_``'s journal in the work folder (0: the seeds' answers); ``kind`` "partial": the
    finished steps of its unfinished items."""
    return work / f"round{round_}{'.' + kind if kind else ''}.jsonl"


def _done_ids(journal: Path) -> set[str]:
    return {row["seed_id"] for row in read(journal)}


def _resume(journal: Path, next_journal: Path | None = None) -> set[str]:
    """The items ``journal`` holds as done, after dropping its ``llm_error`` rows so this run tries
    those items again (a provider that was down says nothing about the items); rows already carried
    into ``next_journal`` (the next round's) stay. One pass over the journal; it is rewritten,
    atomically, only when there is something to drop."""
    done, failed = set(), set()
    for row in read(journal):
        done.add(row["seed_id"])
        if row.get("reason") == Failure.LLM_ERROR.value:
            failed.add(row["seed_id"])
    if failed and next_journal is not None:
        failed -= _done_ids(next_journal)
    if failed:
        with atomic_write(journal) as fh:
            for row in read(journal):
                if not (row["seed_id"] in failed and row.get("reason") == Failure.LLM_ERROR.value):
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return done - failed


async def _answer_seeds(options, work, seeds_path, answerer, budget, reporter) -> bool:
    """Seeds that came without an answer get one, so round 0 of the output is complete."""
    journal_path = _journal(work, 0)
    done = _resume(journal_path)
    unanswered = sum(1 for row in read(seeds_path) if not row["output"])
    if unanswered == len(done):
        return True
    reporter.phase("answer seeds", unanswered, len(done))
    todo = (row for row in read(seeds_path) if not row["output"] and row["seed_id"] not in done)

    async def work_on(row, journal):
        entry = {"seed_id": row["seed_id"], "instruction": row["instruction"], "input": row["input"]}
        try:
            text = (await answerer.aask(with_input(row["instruction"], row["input"]))).text
            reason = None if text.strip() else Failure.EMPTY_ANSWER
        except LLMError:
            reason = Failure.LLM_ERROR
        # A failed call or an empty reply fails this seed only: it goes to the rejects.
        journal.append({**entry, "output": text} if reason is None else {**entry, "output": "", "reason": reason.value})
        reporter.advance()

    return await _drive(todo, work_on, journal_path, options.concurrency, budget, calls_per_item=1)


async def _drive(rows, work_on, journal_path: Path, concurrency: int, budget: _Budget, *, calls_per_item: int) -> bool:
    """Run ``work_on`` over ``rows`` with at most ``concurrency`` in flight; False if the budget ran out.

    Rows are pulled from the (streamed) iterator only as slots free up, so memory does not grow with
    the dataset."""
    semaphore = asyncio.Semaphore(concurrency)
    stopped = False
    pending: set[asyncio.Task] = set()
    failed: list[BaseException] = []   # the first error of any item: it stops the phase
    try:
        with Journal(journal_path) as journal:
            async def guarded(row):
                async with semaphore:
                    if failed:
                        return
                    try:
                        await work_on(row, journal)
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:   # kept for the phase to raise, never lost in a task
                        failed.append(exc)

            try:
                for row in rows:
                    if failed:
                        raise failed[0]
                    if not budget.allows(calls_per_item * (len(pending) + 1)):
                        stopped = True
                        break
                    pending.add(asyncio.create_task(guarded(row)))
                    if len(pending) >= 2 * concurrency:
                        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                while pending and not failed:   # an outage at the end of a phase stops it as soon, too
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if failed:
                    raise failed[0]
            except BaseException:
                # An outage or Ctrl-C: the items in flight are dropped (redone by the next run) before
                # the journal closes, so none of them writes to it afterwards.
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
    finally:
        for llm in budget.llms:
            await llm.aclose()
    return not stopped


async def _round(round_: int, pool: Path, options: EvolveOptions, work: Path, methods, evol: Llm,
                 answerer: Llm, budget: _Budget, reporter) -> bool:
    journal_path = _journal(work, round_)
    done = _resume(journal_path, _journal(work, round_ + 1))
    total = sum(1 for _ in read(pool))
    reporter.phase(f"round {round_}", total, len(done))
    evol_label, answer_label = evol.settings.label, answerer.settings.label

    # Steps an earlier run finished for items it did not finish (the evolution, the judge's verdict):
    # a rerun starts those items after them, so without a reply cache it pays for no finished call.
    partial_path = _journal(work, round_, "partial")
    known = {row["seed_id"]: row for row in read(partial_path) if row["seed_id"] not in done}
    partial = Journal(partial_path, flush=False)   # a kill may cost its last lines: calls paid again, nothing lost

    async def work_on(row, journal):
        # The evolver sees the instruction with its input (Evol-Instruct evolves the two together);
        # an evolved instruction carries whatever input it kept, so its own input is empty.
        instruction, input_text = row["instruction"], row.get("input", "")
        parent = with_input(instruction, input_text)
        method = pick(methods, options.seed, row["seed_id"], round_)
        record = {"seed_id": row["seed_id"], "round": round_, "parent_instruction": parent, "input": input_text,
                  "method": method.name, "method_hash": method.hash,
                  "evol_model": evol_label, "answer_model": answer_label}
        retry = row.get("status") == "rejected"
        failure, evolved, answer = await _evolve_one(
            parent, method, evol, answerer, options.judge,
            rollout=_rollout(options.seed, row["seed_id"], round_),
            temperature=options.retry_temperature if retry and not options.evol_temperature else None,
            known=known.pop(row["seed_id"], {}),
            keep=lambda step: partial.append({"seed_id": row["seed_id"], **step}))
        if failure is None:
            record.update(status="kept", instruction=evolved, input="", output=answer)
        else:
            record.update(status="rejected", instruction=instruction, rejected_instruction=evolved or "",
                          rejected_output=answer or "", reason=failure.value)
        journal.append(record)
        reporter.advance()

    rows = (row for row in read(pool) if row["seed_id"] not in done)
    calls = 3 if options.judge else 2
    with partial:
        complete = await _drive(rows, work_on, journal_path, options.concurrency, budget, calls_per_item=calls)
    if complete:   # every item of the round is in its journal: the steps kept on the way are spent
        partial_path.unlink(missing_ok=True)
    return complete


def _rollout(seed: int, seed_id: str, round_: int) -> int:
    """A stable id per (seed, item, round): each round's attempt at an item is its own sample and its
    own cache entry, so a failed item tried again next round is drawn anew, while a rerun of the
    same command with --cache-dir still finds every finished call in the cache."""
    digest = hashlib.sha256(f"{seed}:{seed_id}:{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


async def _evolve_one(text: str, method: Method, evol: Llm, answerer: Llm, judge: bool, *, rollout: int,
                      temperature: float | None, known: dict | None = None,
                      keep=None) -> tuple[Failure | None, str | None, str | None]:
    """(failure or None, evolved instruction, answer) for one instruction (with its input below it)
    in one round; ``temperature`` overrides the evol role's for a retry. ``known`` holds the steps an
    earlier run finished ({"evolved", "judged"}), which are not asked again; ``keep`` is told of each
    step finished here."""
    known = known or {}
    evolved = known.get("evolved")
    if evolved is None:
        try:
            reply = await evol.aask(method.render(text), reply_format=evolution_format(method.text),
                                    rollout=rollout, temperature=temperature)
        except LLMError:
            return Failure.LLM_ERROR, None, None
        evolved, _, failure = judge_evolution(reply.text, reply.fields, method, text)
        if failure is not None:
            return failure, evolved, None
        failure = instruction_failure(evolved)
        if failure is not None:
            return failure, evolved, None
        if keep:
            keep({"evolved": evolved})
    try:
        if judge and not known.get("judged"):
            verdict = read_verdict((await evol.aask(JUDGE_PROMPT.format(first=text, second=evolved))).text)
            if verdict is Verdict.EQUAL:   # an unreadable verdict is no evidence of no gain: not eliminated
                return Failure.NO_INFORMATION_GAIN, evolved, None
            if keep:
                keep({"evolved": evolved, "judged": True})
        answer = (await answerer.aask(evolved, rollout=rollout)).text
    except LLMError:
        return Failure.LLM_ERROR, evolved, None
    return elimination_failure(answer), evolved, answer


def _round_stats(work: Path, rounds: int) -> list[RoundStats]:
    stats = []
    for round_ in range(1, rounds + 1):
        s = RoundStats(round_)
        for row in read(_journal(work, round_)):
            if row["status"] == "kept":
                s.kept += 1
                s.words_before += _words(row["parent_instruction"])
                s.words_after += _words(row["instruction"])
            else:
                s.eliminated[row["reason"]] += 1
        stats.append(s)
    return stats


def _records(options: EvolveOptions, work: Path, seeds_path: Path):
    """Every output record: the seeds (round 0; answered here when they came without) and each
    round's kept evolutions."""
    def seed_record(row: dict) -> dict:
        return {"id": f"{row['seed_id']}#0", "seed_id": row["seed_id"], "round": 0,
                "instruction": row["instruction"], "input": row["input"], "output": row["output"],
                "method": "", "method_hash": "", "parent_instruction": "", "evol_model": "", "answer_model": ""}

    for row in read(seeds_path):
        if row["output"]:
            yield seed_record(row)
    for row in read(_journal(work, 0)):
        if row["output"]:
            yield seed_record(row)
    for round_ in range(1, options.rounds + 1):
        for row in read(_journal(work, round_)):
            if row["status"] == "kept":
                yield {"id": f"{row['seed_id']}#{round_}", **{k: row.get(k) for k in (
                    "seed_id", "round", "instruction", "input", "output", "method", "method_hash",
                    "parent_instruction", "evol_model", "answer_model")}}


def _assemble(options: EvolveOptions, work: Path, seeds_path: Path, out: Path, fmt: str, bound: int) -> int:
    """Write the output; ``bound`` (at least the number of records) only sizes the shuffle's buckets,
    so the journals are read once here, not counted first."""
    ordered = output.shuffled(_records(options, work, seeds_path), seed=options.seed, count=bound, workdir=work)
    if options.sample is not None:
        ordered = itertools.islice(ordered, options.sample)
    return output.write(ordered, out, fmt)


def _write_rejects(work: Path, rounds: int, path: Path) -> None:
    with atomic_write(path) as fh:
        for row in read(_journal(work, 0)):
            if not row["output"]:
                fh.write(json.dumps({"id": f"{row['seed_id']}#0", "round": 0, "status": "rejected", **row},
                                    ensure_ascii=False) + "\n")
        for round_ in range(1, rounds + 1):
            for row in read(_journal(work, round_)):
                if row["status"] == "rejected":
                    fh.write(json.dumps({"id": f"{row['seed_id']}#{round_}", **row}, ensure_ascii=False) + "\n")


def _stats_dict(result: EvolveResult) -> dict:
    return {"records": result.records, "complete": result.complete, "rounds": [s.to_dict() for s in result.rounds],
            "bad_lines": len(result.bad_lines), "calls": result.calls, "seconds": result.seconds}


def _estimate(options: EvolveOptions, methods) -> dict:
    """Calls and tokens a run would take, without calling anything (tokens ~ characters / 4)."""
    items = chars = unanswered = bad = 0
    for _, seed, _ in _seed_rows(options):
        if seed is None:
            bad += 1
            continue
        items += 1
        chars += len(seed["instruction"])
        unanswered += not seed["output"]
    per_item = 3 if options.judge else 2
    method_chars = sum(len(m.text) * w for m, w in methods) / sum(w for _, w in methods)
    calls = unanswered + items * options.rounds * per_item
    prompt_tokens = (items * options.rounds * (method_chars + chars / max(items, 1) * (per_item + 1))) / 4
    output_tokens = items * options.rounds * (chars / max(items, 1) / 4 * 1.3 + options.answer_max_tokens / 4)
    return {"items": items, "bad_rows": bad, "seeds_without_answer": unanswered, "rounds": options.rounds,
            "calls": int(calls), "prompt_tokens_estimate": int(prompt_tokens),
            "output_tokens_estimate": int(output_tokens),
            "assumes": "every evolution kept; answers average a quarter of --answer-max-tokens"}
