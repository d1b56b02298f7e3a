"""Roles whose calls go to a provider's batch endpoint (``--batch``): half the price, hours of latency.

A ``BatchRole`` wraps a built ``Llm`` and answers ``aask`` like it, but each call is a request in a batch:
the request body is the one the online call would send (model, messages, temperature, top_p, max_tokens,
seed and response format, from the role's own settings: ``Llm._prepare``), keyed by a custom id derived
from it (sha256 of provider, body and rollout), so a rerun asks under the same ids. A ``Batcher`` collects
the queued requests and submits them as one batch when none came for a quiet window (``BatchConfig.quiet``:
every item in flight is then waiting) or when the size caps are reached; it polls the batch (a few
seconds, growing to a minute), reads the results and settles each call with a ``Reply`` (token counts from
the result's usage). Evolve keeps a whole wave in flight, so a round is three batches: the evolutions, the
information-gain verdicts, the answers. Optimize batches its dev evaluation (the evol role; trajectories and
the optimizer stay online) and compare its rounds and difficulty judge, each such phase with all its items
in flight on one event loop (optimize's and compare's): a batch a wave, evolutions then answers.

Providers (batch_providers.py), one row each of ``PROVIDERS``, chosen from the model string: ``openai/...`` (OpenAI, or any
OpenAI-compatible server offering the Files and Batches APIs at ``--api-base``: a JSONL file uploaded with
purpose "batch", then a batch on /v1/chat/completions with a 24 h window) and ``anthropic/...`` (Message
Batches). Anything else is refused before any call. Not carried to Anthropic: the JSON-schema reply format
(its batch requests ask for free text; evolve reads the method's fields from free text alike) and the
sampling seed (Anthropic has none).

The journal (journal.py; ``batches.jsonl``: evolve's in its work folder, an optimize run's ``mlruns/batches/RUN_ID.jsonl``
which --resume reads, compare's in its report folder), one fsynced line per event, is what keeps a
kill -9 or Ctrl-C from paying twice:
- ``{"intent": KEY, "custom_ids": [...], "provider", "model", "time"}`` before a batch is submitted;
- ``{"batch": ID, "intent": KEY}`` as soon as the provider has returned the batch's id;
- ``{"done": ID}`` once its results were taken; ``{"void": KEY}`` for an intent that made no batch.
A rerun asks the same requests; one whose custom id is in a journaled batch attaches to that batch (polls
it, or reads its results again when it has ended) instead of being submitted again. An intent with no batch
id (killed between submitting and journaling) is looked for first: OpenAI batches carry the intent in their
metadata (``auto_evol_intent``), found through the batch list; Anthropic batches carry no metadata, so the
rule is: the earliest batch created no earlier than a minute before the intent's time, with the same
number of requests, that no journal line names. Its results are read by custom id, so a wrong pick
costs at worst a resubmission of the requests it lacks, never a wrong answer. Not found: the intent is
void and its requests are submitted again. Only intents read from disk are recovered so: one written by
this process (by any role sharing the journal) is its submitter's to resolve. A later ``batch`` line for
an intent wins over a ``void`` one.

One process at a time per journal: a ``BatchJournal`` holds an exclusive lock (``batches.jsonl.lock``
beside it, locks.hold) from its first use until the verb closes it (``BatchRole.close``, ``release``);
a second process refuses in one line naming the holder. It reads the journal on first use, under the
lock (evolve builds its roles before its work folder is claimed, which may drop the journal).

Submitting: the create call is not retried by the SDK (a retried create that timed out may make two
batches). A clear refusal (a 4xx other than 408, or a failed upload, which makes no batch) voids the
intent; any other failure (timeout, lost connection, 5xx) may have made the batch, so it is looked for
(as on a rerun) before the requests are submitted again; when it cannot be looked for, the intent stays
for a rerun to resolve and the calls fail.

A request that expired, was cancelled, or failed in its batch (a server error, or the whole batch failing)
is resubmitted in a later batch, at most ``BatchConfig.attempts`` times in all; so is a request of an
attached batch the provider no longer knows (404: another key or project, a local server restarted); then
(and at once for a request the provider refused as invalid, HTTP 400) the call fails with LLMError, which
evolve records as an ``llm_error`` reject that a rerun tries again. Progress (the provider's request counts)
goes to a callback; by default one line on stderr per poll that changed something. A submit or poll that
ends on an error of its own (the journal cannot be written, the progress callback raises) fails every call
it was responsible for with that error, so the run stops instead of waiting forever.

Counting: a result is a paid call of this process the first time this process delivers it, even when read
from a batch an earlier (killed) process submitted: no other process will ever report it. Identical
requests sharing one result in this process count it once (the others are ``cached``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...core.errors import Outage, UserError, first_line
from ..client import LLMError, Llm, Reply, Usage
from .endpoints import (PROVIDERS, Done, Failed, NotCreated, Progress, RequestFailed, check_batchable,
                        provider_name, refusal, stderr_progress)
from .journal import BatchJournal

MODES = ("all", "evol", "answer")


# What --batch's value may be per verb: evolve's roles; optimize batches only the evol role (its dev
# evaluation); compare the evol role (the rounds) and the difficulty judge.
VERB_MODES = {"evolve": MODES, "optimize": ("all", "evol"), "compare": ("all", "evol", "judge")}


def check_mode(mode: str | None, verb: str = "evolve") -> None:
    modes = VERB_MODES[verb]
    if mode is not None and mode not in modes:
        raise UserError(f"--batch takes no value (all roles) or one of {', '.join(modes)}, got {mode!r}")


# --- settings ----------------------------------------------------------------------------------------

POLL_ENV = "AUTO_EVOL_BATCH_POLL"   # seconds between polls, fixed (tests, local batch servers)


@dataclass(frozen=True)
class BatchConfig:
    max_requests: int | None = None       # per batch; None: the provider's limit
    max_bytes: int = 100_000_000          # per batch, of request JSON (OpenAI takes 200 MB files, Anthropic 256 MB)
    quiet: float = 0.2                    # seconds with no new request before the queue is submitted
    poll: float = 5.0                     # first interval between polls ...
    poll_max: float = 60.0                # ... growing by poll_growth up to this
    poll_growth: float = 1.5
    attempts: int = 3                     # submissions of one request before its call fails
    poll_errors: int = 8                  # failed polls in a row before the batch's calls fail (a rerun reattaches)

    @classmethod
    def from_env(cls, **overrides) -> "BatchConfig":
        value = os.environ.get(POLL_ENV)
        if value:
            seconds = float(value)
            overrides = {"poll": seconds, "poll_max": seconds, "quiet": min(0.2, seconds), **overrides}
        return cls(**overrides)


# --- the batcher ---------------------------------------------------------------------------------------

@dataclass
class _LoopState:
    """What lives on one event loop (evolve runs each phase on a fresh one)."""
    loop: asyncio.AbstractEventLoop
    waiters: dict[str, list[asyncio.Future]] = field(default_factory=dict)
    bodies: dict[str, dict] = field(default_factory=dict)
    queue: dict[str, dict] = field(default_factory=dict)
    queue_bytes: int = 0
    timer: asyncio.TimerHandle | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    polling: dict[str, asyncio.Task] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    taken: dict[str, Done] = field(default_factory=dict)      # results read that no call awaited yet
    stale: set[str] = field(default_factory=set)               # custom ids not to attach again
    submitting: set[str] = field(default_factory=set)          # custom ids in a submission under way
    ready: asyncio.Task | None = None


class Batcher:
    """Queues one role's requests, submits them in batches, polls, and settles each with its result."""

    def __init__(self, provider, journal: BatchJournal, config: BatchConfig, label: str,
                 progress: Callable[[Progress], None] | None = stderr_progress) -> None:
        self.provider = provider
        self.journal = journal
        self.config = config
        self.label = label
        self.progress = progress
        self.max_requests = min(config.max_requests or provider.limit, provider.limit)
        self._state: _LoopState | None = None
        self._recovered = False
        self.submitted = 0        # batches this process submitted

    def _here(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop)
        return self._state

    async def request(self, custom_id: str, body: dict) -> Done:
        """The result of one request; raises RequestFailed when it failed for good."""
        st = self._here()
        if st.ready is None:
            st.ready = asyncio.ensure_future(self._recover())
        await asyncio.shield(st.ready)
        future = st.loop.create_future()
        first = not st.waiters.get(custom_id)
        st.waiters.setdefault(custom_id, []).append(future)
        if custom_id in st.taken:   # read from its batch while no call awaited it
            self._settle_one(st, custom_id, st.taken.pop(custom_id))
        elif first:
            st.bodies[custom_id] = body
            if custom_id in st.queue or custom_id in st.submitting:
                pass   # on its way (asked before by a call since cancelled): its outcome settles this one
            else:
                batch_id = None if custom_id in st.stale else self.journal.batch_of(custom_id)
                st.attempts[custom_id] = 1
                if batch_id is not None:
                    self._attach(st, batch_id)
                elif custom_id not in st.stale and self.journal.in_doubt(custom_id):
                    self._settle_one(st, custom_id, Failed(
                        "an earlier submission of this request may have made a batch that could not be looked "
                        "up; a rerun looks for it again", resubmit=False))
                else:
                    st.stale.discard(custom_id)   # its new batch is the one to attach to from now on
                    self._enqueue(st, custom_id)
        try:
            return await future
        finally:
            if future.cancelled():   # the caller gave up: nothing else waits on this future
                waiting = st.waiters.get(custom_id)
                if waiting is not None and future in waiting:
                    waiting.remove(future)
                    if not waiting:   # a later request is the first again (and finds a result in taken)
                        del st.waiters[custom_id]

    async def _recover(self) -> None:
        """Intents an earlier process wrote that never got their batch id into the journal: find their
        batch, or void them. Another Batcher sharing the journal may resolve one meanwhile: it keeps its
        answer (its batch may be live: voiding it would lose its results and pay again)."""
        if self._recovered:
            return
        for intent in self.journal.unresolved(self.provider.name, self.label):
            key = intent["intent"]
            try:
                found = await self.provider.find(intent, set(self.journal.batch_intent))
            except Exception as exc:   # without knowing, a submission could be paid twice: stop instead
                raise UserError(f"--batch: {self.label}: could not look for the batch of an interrupted "
                                f"submission ({first_line(exc)}); rerun when the provider answers") from None
            now = self.journal.intents[key]
            if now["batch"] is not None or now["void"]:
                continue
            if found is not None:
                self.journal.submitted(found, key, recovered=True)
            else:
                self.journal.void(key)
        self._recovered = True

    # -- queueing and submitting --

    def _enqueue(self, st: _LoopState, custom_id: str) -> None:
        st.queue[custom_id] = st.bodies[custom_id]
        st.queue_bytes += len(json.dumps(st.bodies[custom_id]))
        if len(st.queue) >= self.max_requests or st.queue_bytes >= self.config.max_bytes:
            self._flush(st)
        else:
            if st.timer is not None:
                st.timer.cancel()
            st.timer = st.loop.call_later(self.config.quiet, self._flush, st)

    def _flush(self, st: _LoopState) -> None:
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if not st.queue:
            return
        requests = list(st.queue.items())
        st.queue, st.queue_bytes = {}, 0
        ids = [cid for cid, _ in requests]
        self._spawn(st, self._submit(st, requests), lambda: [cid for cid in ids if cid not in st.queue])

    def _spawn(self, st: _LoopState, coro, responsible: Callable[[], list[str]]) -> asyncio.Task:
        """A submit or poll task; ``responsible``: the custom ids whose calls it settles."""
        task = st.loop.create_task(coro)
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
        task.add_done_callback(lambda done: self._crashed(st, done, responsible))
        return task

    def _crashed(self, st: _LoopState, task: asyncio.Task, responsible: Callable[[], list[str]]) -> None:
        """A task that ended on an error of its own (the journal could not be written, the progress
        callback raised): the calls it was to settle fail with that error, which stops the run (it is no
        LLMError: an item is not to blame) instead of leaving them to wait forever."""
        if task.cancelled() or task.exception() is None:
            return
        self._fail_all(st, responsible(), task.exception())

    async def _submit(self, st: _LoopState, requests: list[tuple[str, dict]]) -> None:
        key = uuid.uuid4().hex[:24]
        ids = [cid for cid, _ in requests]
        st.submitting.update(ids)
        self.journal.pending.add(key)
        try:
            self.journal.intend(key, ids, self.provider.name, self.label)
            batch_id, failed = await self._create(key, requests)
        finally:
            st.submitting.difference_update(ids)
            self.journal.pending.discard(key)
        if isinstance(failed, BaseException):
            self._fail_all(st, ids, failed)
            return
        if failed is not None:
            self._outcomes(st, {cid: failed for cid in ids})
            return
        self.submitted += 1
        st.polling[batch_id] = asyncio.current_task()   # a request for one of its ids waits on this poll
        await self._poll(st, batch_id)

    async def _create(self, key: str, requests: list[tuple[str, dict]]) -> tuple[str | None, object]:
        """Submit the batch of intent ``key``: (its id, None), journaled; or (None, the Failed every request
        gets), or (None, the error every call fails with)."""
        from ..client import _is_fatal

        try:
            batch_id = await self.provider.submit(key, requests)
        except asyncio.CancelledError:
            raise   # the intent stays: a rerun looks for its batch
        except Exception as exc:
            error = exc.__cause__ if isinstance(exc, NotCreated) and exc.__cause__ is not None else exc
            status = getattr(error, "status_code", None)
            why = f"batch not created: {first_line(error)}"
            if _is_fatal(exc):
                self.journal.void(key)
                return None, UserError(f"--batch: {self.label}: the batch was refused ({first_line(error)})")
            if isinstance(exc, NotCreated) or refusal(status):   # refused: nothing was made
                self.journal.void(key)
                if status != 400:
                    await asyncio.sleep(self.config.poll)
                return None, Failed(why, status)
            # A timeout, a lost connection, a 5xx: the provider may have made the batch all the same. Look
            # for it (after a moment, for it to be listed) before its requests go to another batch.
            await asyncio.sleep(self.config.poll)
            try:
                found = await self.provider.find(self.journal.intents[key], set(self.journal.batch_intent))
            except asyncio.CancelledError:
                raise
            except Exception as lookup:   # not knowing, a resubmission could pay twice: a rerun looks again
                return None, Failed(f"{why}; whether a batch was made could not be learned "
                                    f"({first_line(lookup)}); a rerun looks for it", status, resubmit=False)
            if found is None:
                self.journal.void(key)
                return None, Failed(why, status)
            batch_id = found
            self.journal.submitted(batch_id, key, recovered=True)
            return batch_id, None
        self.journal.submitted(batch_id, key)
        return batch_id, None

    def _attach(self, st: _LoopState, batch_id: str) -> None:
        if batch_id not in st.polling:
            st.polling[batch_id] = self._spawn(st, self._poll(st, batch_id, attached=True),
                                               lambda: self._members(st, batch_id))

    async def _results(self, batch_id: str) -> dict[str, Done | Failed]:
        """The batch's results, read again after a failed download; results the provider no longer has
        (404) send the requests to a new batch, other failures leave them to a rerun's attach."""
        for tries in range(1, self.config.poll_errors + 1):
            try:
                return await self.provider.results(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = f"results of batch {batch_id} could not be read: {first_line(exc)}"
                if getattr(exc, "status_code", None) == 404:
                    return {"*": Failed(why)}
                if tries == self.config.poll_errors:
                    return {"*": Failed(why, resubmit=False)}
                await asyncio.sleep(self.config.poll)
        raise AssertionError("unreachable")

    async def _poll(self, st: _LoopState, batch_id: str, *, attached: bool = False) -> None:
        try:
            await self._follow(st, batch_id, attached)
        finally:   # however it ended: a later request for one of its ids polls it again
            if st.polling.get(batch_id) is asyncio.current_task():
                del st.polling[batch_id]

    async def _follow(self, st: _LoopState, batch_id: str, attached: bool) -> None:
        wait, errors, last = self.config.poll, 0, None
        ended = False
        while True:
            try:
                ended, progress = await self.provider.status(batch_id)
                errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attached and getattr(exc, "status_code", None) == 404:
                    # Gone (another key or project, a local server restarted): its requests go to a new
                    # batch, counted against their attempts. (A batch just created is polled on: a 404
                    # then may be the provider's lag, and a resubmission would pay twice.)
                    self._outcomes(st, {cid: Failed(f"batch {batch_id} is gone: {first_line(exc)}")
                                        for cid in self._members(st, batch_id)})
                    return
                errors += 1
                if errors >= self.config.poll_errors:   # the batch runs on: a rerun attaches to it again
                    self._fail_all(st, self._members(st, batch_id),
                                   RequestFailed(Failed(f"batch {batch_id} could not be polled: {first_line(exc)}")))
                    return
                await asyncio.sleep(wait)
                continue
            shown = (progress.status, progress.done, progress.failed, progress.total)
            if self.progress is not None and shown != last:
                self.progress(Progress(batch_id, *shown, label=self.label))
                last = shown
            if ended:
                break
            await asyncio.sleep(wait)
            wait = min(wait * self.config.poll_growth, self.config.poll_max)
        # Results of a batch attached to are not marked cached, even when an earlier process paid for it:
        # killed, that process never reported them, and no other will (see _settle_one for the calls of
        # this process that share one result).
        results = await self._results(batch_id)
        self.journal.done(batch_id)
        st.polling.pop(batch_id, None)
        members = self._members(st, batch_id)
        everyone = results.pop("*", None)
        outcomes: dict[str, Done | Failed] = {}
        for cid in members:
            outcomes[cid] = results.pop(cid, None) or everyone or Failed(f"missing from batch {batch_id}'s results")
        for cid, result in results.items():   # not awaited yet (a rerun's later arrivals): kept for them
            if isinstance(result, Done):
                st.taken[cid] = result
            else:
                st.stale.add(cid)
        self._outcomes(st, outcomes)

    def _members(self, st: _LoopState, batch_id: str) -> list[str]:
        """The custom ids awaited here whose latest batch is ``batch_id`` (not queued again since)."""
        key = self.journal.batch_intent.get(batch_id)
        ids = self.journal.intents[key]["custom_ids"] if key else []
        return [cid for cid in ids if st.waiters.get(cid) and cid not in st.queue
                and self.journal.batch_of(cid) == batch_id]

    def _outcomes(self, st: _LoopState, outcomes: dict[str, Done | Failed]) -> None:
        for cid, result in outcomes.items():
            if isinstance(result, Failed) and result.retryable and st.attempts.get(cid, 1) < self.config.attempts \
                    and st.waiters.get(cid):
                st.attempts[cid] = st.attempts.get(cid, 1) + 1
                self._enqueue(st, cid)
            else:
                self._settle_one(st, cid, result)

    def _settle_one(self, st: _LoopState, custom_id: str, result: Done | Failed) -> None:
        for future in st.waiters.pop(custom_id, []):
            if future.done():
                continue
            if isinstance(result, Done):
                # One request, one payment: the first call this process gives the result to counts it,
                # every other (an identical request, here or in a later phase) gets it as cached.
                if custom_id in self.journal.delivered:
                    future.set_result(dataclasses.replace(result, cached=True))
                else:
                    self.journal.delivered.add(custom_id)
                    future.set_result(result)
            else:
                future.set_exception(RequestFailed(result))
        st.bodies.pop(custom_id, None)

    def _fail_all(self, st: _LoopState, ids: list[str], error: BaseException) -> None:
        for cid in ids:
            for future in st.waiters.pop(cid, []):
                if not future.done():
                    future.set_exception(error)
            st.bodies.pop(cid, None)

    async def aclose(self) -> None:
        """Stop this loop's timers and polls (their batches run on at the provider, journaled) and close
        the provider's client."""
        st = self._state
        if st is not None and st.loop is asyncio.get_running_loop():
            if st.timer is not None:
                st.timer.cancel()
            for task in list(st.tasks) + ([st.ready] if st.ready else []):
                task.cancel()
            await asyncio.gather(*st.tasks, return_exceptions=True)
            self._state = None
        await self.provider.aclose()


# --- the role ------------------------------------------------------------------------------------------

def custom_id(provider: str, body: dict, rollout: int | None) -> str:
    """A request's id in its batch, the same on every run (Anthropic: 1-64 of [A-Za-z0-9_-])."""
    text = json.dumps({"provider": provider, "body": body, "rollout": rollout}, sort_keys=True, ensure_ascii=False)
    return "ae-" + hashlib.sha256(text.encode()).hexdigest()[:40]


class BatchRole:
    """A role whose calls go to its provider's batch endpoint; otherwise like the ``Llm`` it wraps
    (settings, label, notices, the error window are that Llm's). Its own ``usage`` counts the batched
    calls, so a role that is batched for one use and online for another (``--batch answer`` with one
    model for both) is counted once per call."""

    batched = True   # its calls are billed at the provider's batch price (cost.py)

    def __init__(self, llm: Llm, journal: BatchJournal, config: BatchConfig | None = None, *,
                 progress: Callable[[Progress], None] | None = stderr_progress) -> None:
        """Its calls are counted in a Usage of its own, which every verb keeps (a role's cost is its online
        calls' at the online price plus these at the batch price: cost.py)."""
        check_batchable(llm.settings)
        self.llm = llm
        self.usage = Usage()
        self.config = config or BatchConfig.from_env()
        self.provider = PROVIDERS[provider_name(llm.settings)](llm.settings)
        self.batcher = Batcher(self.provider, journal, self.config, llm.settings.label, progress)
        self._loop: asyncio.AbstractEventLoop | None = None   # ask's loop, started on its first call
        self._loop_lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.llm, name)

    @property
    def structured(self) -> bool:
        return self.llm.structured

    @structured.setter
    def structured(self, value: bool) -> None:
        self.llm.structured = value

    @property
    def batch_size(self) -> int:
        return self.batcher.max_requests

    async def aask(self, prompt: str, *, rollout: int | None = None, reply_format=None,
                   history: tuple[str, ...] = (), temperature: float | None = None) -> Reply:
        llm = self.llm
        fmt, _, request, _ = llm._prepare(prompt, rollout, reply_format, history, temperature)
        body, carries_format = self.provider.body(request)
        if not carries_format:
            fmt = None
        started = time.perf_counter()
        try:
            result = await self.batcher.request(custom_id(self.provider.name, body, rollout), body)
        except RequestFailed as exc:
            failed = exc.failed
            self.usage.add(None, time.perf_counter() - started)
            if fmt is not None and failed.status == 400:   # refused as invalid: drop the schema, as online
                if llm.settings.structured == "on":
                    raise UserError(f"{llm.settings.label}: structured output refused ({failed.reason}); "
                                    f"use --structured auto or off") from None
                if llm.structured:
                    llm.structured = False
                    llm.notice(f"structured output refused ({failed.reason}); this role goes on in free text")
                return await self.aask(prompt, rollout=rollout, reply_format=reply_format, history=history,
                                       temperature=temperature)
            llm.errors.add(True, failed.reason)
            if llm.errors.tripped:
                raise Outage(f"{llm.settings.label}: {llm.errors.tripped}") from None
            raise LLMError(failed.reason) from None
        text, fields = result.text, None
        if fmt is not None:
            fields = fmt.read(text)
            if fields is not None:
                text = fmt.as_text(fields)
        reply = Reply(text=text, input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                      truncated=result.truncated, cached=result.cached, fields=fields)
        self.usage.add(reply, time.perf_counter() - started)
        llm.errors.add(False)
        return reply

    def ask(self, prompt: str, **options) -> Reply:
        """``aask`` for threaded callers: the calls of every thread meet on one event loop of this role's
        (a thread of its own), so they go out in the same batches."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="auto-evol-batch", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(self.aask(prompt, **options), self._loop).result()

    async def aclose(self) -> None:
        """The end of a phase: its polls stop, its clients close (the journal stays open and locked)."""
        await self.batcher.aclose()
        await self.llm.aclose()

    def close(self) -> None:
        """The end of the verb: let go of the journal and its lock (a later use takes them again)."""
        self.batcher.journal.close()


class Throttled:
    """An online role beside batched ones: at most ``limit`` of its calls in flight (evolve raises its
    concurrency to the batch size when batching, which must not reach an online endpoint)."""

    def __init__(self, llm: Llm, limit: int) -> None:
        self.llm = llm
        self.limit = limit
        self._semaphores: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}

    def __getattr__(self, name):
        return getattr(self.llm, name)

    async def aask(self, prompt: str, **options) -> Reply:
        loop = asyncio.get_running_loop()
        held = self._semaphores.get(id(loop))
        if held is None or held[0] is not loop:
            held = self._semaphores[id(loop)] = (loop, asyncio.Semaphore(self.limit))
        async with held[1]:
            return await self.llm.aask(prompt, **options)

    def ask(self, prompt: str, **options) -> Reply:
        return self.llm.ask(prompt, **options)

    async def aclose(self) -> None:
        self._semaphores.pop(id(asyncio.get_running_loop()), None)
        await self.llm.aclose()


def check_roles(mode: str | None, evol, answer) -> None:
    """Before any call: --batch's value, and a batch endpoint for every role it batches (settings)."""
    check_mode(mode)
    if mode in ("all", "evol"):
        check_batchable(evol)
    if mode in ("all", "answer"):
        check_batchable(answer)


def release(*roles) -> None:
    """Close the journal of each BatchRole among ``roles`` (others are skipped): at the end of a verb."""
    for role in roles:
        if isinstance(role, BatchRole):
            role.close()


def batched_roles(mode: str, evol: Llm, answerer: Llm, journal_path: Path, *, concurrency: int,
                  config: BatchConfig | None = None, progress=stderr_progress):
    """(evol, answerer, concurrency): the roles --batch MODE sends to batches wrapped in BatchRole (one
    per Llm, sharing the journal), the others limited to ``concurrency`` calls in flight, and the
    concurrency that keeps a whole batch's worth of items in flight. The journal is read (and locked)
    on the first call, not here; ``release`` lets go of it."""
    journal = BatchJournal(journal_path)
    wrapped: dict[int, BatchRole] = {}

    def batch(llm):
        if id(llm) not in wrapped:
            wrapped[id(llm)] = BatchRole(llm, journal, config, progress=progress)
        return wrapped[id(llm)]

    new_evol = batch(evol) if mode in ("all", "evol") else Throttled(evol, concurrency)
    new_answerer = batch(answerer) if mode in ("all", "answer") else Throttled(answerer, concurrency)
    size = max(role.batch_size for role in wrapped.values())
    return new_evol, new_answerer, max(concurrency, size)
