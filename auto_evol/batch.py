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
in flight on one event loop (runner.Runner.amap): two batches a phase, evolutions then answers.

Providers, one row each of ``PROVIDERS``, chosen from the model string: ``openai/...`` (OpenAI, or any
OpenAI-compatible server offering the Files and Batches APIs at ``--api-base``: a JSONL file uploaded with
purpose "batch", then a batch on /v1/chat/completions with a 24 h window) and ``anthropic/...`` (Message
Batches). Anything else is refused before any call. Not carried to Anthropic: the JSON-schema reply format
(its batch requests ask for free text; evolve reads the method's fields from free text alike) and the
sampling seed (Anthropic has none).

The journal (``batches.jsonl``: evolve's in its work folder, an optimize run's ``mlruns/batches/RUN_ID.jsonl``
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
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import locks
from .checkpoint import Journal, read
from .errors import Outage, UserError, first_line
from .llm import LLMError, Llm, Reply, Usage, refuses_request

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


# --- results -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    cached: bool = False           # already delivered (and counted) once by this process


@dataclass(frozen=True)
class Failed:
    reason: str
    status: int | None = None      # the HTTP status the request got, where one was given
    resubmit: bool = True          # False: the batch may still hold its answer (a rerun attaches again)

    @property
    def retryable(self) -> bool:
        """Expired, cancelled, server errors, a batch that failed: worth another batch. A request refused
        as invalid (400) would be refused again."""
        return self.resubmit and self.status != 400


class _RequestFailed(Exception):
    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.reason)
        self.failed = failed


class NotCreated(Exception):
    """A submission that certainly made no batch (its upload failed: a batch needs its file); the
    provider's error is its ``__cause__``."""


def _refusal(status: int | None) -> bool:
    """An HTTP status that says the request was refused, so nothing was made: a 4xx other than a 408
    (a timeout, which says nothing of what the server did)."""
    return status is not None and 400 <= status < 500 and status != 408


@dataclass(frozen=True)
class Progress:
    batch: str
    status: str
    done: int
    failed: int
    total: int
    label: str = ""

    def line(self) -> str:
        return (f"batch {self.batch} ({self.label}): {self.done}/{self.total} done"
                + (f", {self.failed} failed" if self.failed else "") + f" ({self.status})")


def stderr_progress(progress: Progress) -> None:
    print(f"note: {progress.line()}", file=sys.stderr, flush=True)


# --- providers ---------------------------------------------------------------------------------------

class _Provider:
    """What every provider of the PROVIDERS table shares: an SDK client made on first use (``client``),
    closed with the batcher."""

    _client = None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class OpenAIBatches(_Provider):
    """OpenAI's Files + Batches API (or an OpenAI-compatible server's, at --api-base)."""

    name = "openai"
    limit = 50_000
    endpoint = "/v1/chat/completions"

    def __init__(self, settings) -> None:
        self.settings = settings
        self._client = None

    def client(self):
        if self._client is None:
            import openai

            from .http_engine import split_credentials

            base, basic = (split_credentials(self.settings.api_base) if self.settings.api_base else (None, None))
            key = os.environ.get("OPENAI_API_KEY") or ("unused" if base else None)
            headers = {"Authorization": f"Basic {basic}"} if basic else None
            self._client = openai.AsyncOpenAI(api_key=key, base_url=base, default_headers=headers)
        return self._client

    def body(self, request) -> tuple[dict, bool]:
        """The request's chat-completions body, and whether its reply format was carried."""
        from .http_engine import openai_body
        from .providers import is_reasoning_model

        body = openai_body(request)
        if is_reasoning_model(self.settings.model) and "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")   # as LiteLLM sends it online
        return body, True

    async def submit(self, intent: str, requests: list[tuple[str, dict]]) -> str:
        lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": self.endpoint, "body": body},
                                   ensure_ascii=False) + "\n" for cid, body in requests)
        client = self.client()
        try:   # the SDK's retries are harmless here: a file is no batch (a duplicate costs nothing)
            uploaded = await client.files.create(file=(f"auto_evol_{intent}.jsonl", lines.encode()), purpose="batch")
        except Exception as exc:
            raise NotCreated(first_line(exc)) from exc
        # Not retried by the SDK: a create that timed out may have made its batch, and a retry another one.
        # The Batcher looks for it (by the intent in its metadata) before submitting again.
        batch = await client.with_options(max_retries=0).batches.create(
            input_file_id=uploaded.id, endpoint=self.endpoint, completion_window="24h",
            metadata={"auto_evol_intent": intent})
        return batch.id

    async def status(self, batch_id: str) -> tuple[bool, Progress]:
        batch = await self.client().batches.retrieve(batch_id)
        counts = batch.request_counts
        progress = Progress(batch_id, batch.status, getattr(counts, "completed", 0) or 0,
                            getattr(counts, "failed", 0) or 0, getattr(counts, "total", 0) or 0)
        return batch.status in ("completed", "failed", "expired", "cancelled"), progress

    async def results(self, batch_id: str) -> dict[str, Done | Failed]:
        client = self.client()
        batch = await client.batches.retrieve(batch_id)
        found: dict[str, Done | Failed] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    found[row["custom_id"]] = self._result(row)
        if batch.status != "completed" and not found:
            errors = getattr(batch.errors, "data", None) or []
            why = first_line(Exception(errors[0].message)) if errors and errors[0].message else f"batch {batch.status}"
            return {"*": Failed(f"batch {batch.status}: {why}")}   # every request of the batch
        return found

    @staticmethod
    def _result(row: dict) -> Done | Failed:
        error, response = row.get("error"), row.get("response") or {}
        if error:
            return Failed(f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip())
        status, body = response.get("status_code"), response.get("body") or {}
        if status != 200:
            message = ((body.get("error") or {}).get("message") if isinstance(body, dict) else None) or str(body)[:200]
            return Failed(f"{status}: {first_line(Exception(message))}", status)
        try:
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Done(choice["message"].get("content") or "", usage.get("prompt_tokens", 0) or 0,
                        usage.get("completion_tokens", 0) or 0, choice.get("finish_reason") == "length")
        except (KeyError, IndexError, TypeError, AttributeError):
            return Failed(f"the batch's reply is not a chat completion: {str(body)[:120]!r}")

    async def find(self, intent: dict, known: set[str]) -> str | None:
        """The batch an intent made, by the intent's key in its metadata (newest first, back to an
        hour before the intent)."""
        async for batch in self.client().batches.list(limit=100):
            if (batch.metadata or {}).get("auto_evol_intent") == intent["intent"]:
                return batch.id
            if batch.created_at < intent["time"] - 3600:
                return None
        return None


class AnthropicBatches(_Provider):
    """Anthropic's Message Batches API."""

    name = "anthropic"
    limit = 100_000
    SLACK = 60.0   # seconds of clock skew allowed between this machine and the provider

    def __init__(self, settings) -> None:
        self.settings = settings
        self._client = None

    def client(self):
        if self._client is None:
            import anthropic

            base = self.settings.api_base
            if base:
                base = base.rstrip("/").removesuffix("/v1")
            key = os.environ.get("ANTHROPIC_API_KEY") or ("unused" if base else None)
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=base or None)
        return self._client

    def body(self, request) -> tuple[dict, bool]:
        """Messages API params; the reply format is not carried (free text), nor is a seed."""
        params: dict = {"model": request.model.split("/", 1)[-1], "max_tokens": request.config.max_tokens,
                        "messages": [{"role": m.role, "content": m.text or ""} for m in request.messages]}
        if request.system is not None:
            params["system"] = request.system if isinstance(request.system, str) else "".join(
                getattr(p, "text", "") for p in request.system)
        for name in ("temperature", "top_p"):
            value = getattr(request.config, name)
            if value is not None:
                params[name] = value
        return params, False

    async def submit(self, intent: str, requests: list[tuple[str, dict]]) -> str:
        # Not retried by the SDK (see OpenAIBatches.submit): the Batcher looks for the batch first.
        batch = await self.client().with_options(max_retries=0).messages.batches.create(
            requests=[{"custom_id": cid, "params": body} for cid, body in requests])
        return batch.id

    async def status(self, batch_id: str) -> tuple[bool, Progress]:
        batch = await self.client().messages.batches.retrieve(batch_id)
        c = batch.request_counts
        failed = c.errored + c.canceled + c.expired
        progress = Progress(batch_id, batch.processing_status, c.succeeded, failed,
                            c.processing + c.succeeded + failed)
        return batch.processing_status == "ended", progress

    async def results(self, batch_id: str) -> dict[str, Done | Failed]:
        found: dict[str, Done | Failed] = {}
        async for row in await self.client().messages.batches.results(batch_id):
            result = row.result
            if result.type == "succeeded":
                message = result.message
                text = "".join(getattr(block, "text", "") for block in message.content if block.type == "text")
                found[row.custom_id] = Done(text, message.usage.input_tokens, message.usage.output_tokens,
                                            message.stop_reason == "max_tokens")
            elif result.type == "errored":
                error = getattr(result.error, "error", None)
                kind = getattr(error, "type", "error")
                status = 400 if kind == "invalid_request_error" else None
                found[row.custom_id] = Failed(f"{kind}: {getattr(error, 'message', '')}", status)
            else:
                found[row.custom_id] = Failed(f"request {result.type}")
        return found

    async def find(self, intent: dict, known: set[str]) -> str | None:
        """No metadata on Anthropic batches: the earliest batch created since the intent (less SLACK)
        with the same number of requests that no journal line names (see the module's docstring)."""
        since, best = intent["time"] - self.SLACK, None
        async for batch in self.client().messages.batches.list(limit=100):
            created = batch.created_at.timestamp()
            if created < since:
                break
            c = batch.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if batch.id not in known and total == len(intent["custom_ids"]):
                if best is None or created <= best[0]:
                    best = (created, batch.id)
        return best[1] if best else None


PROVIDERS = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}


def provider_name(settings) -> str | None:
    """The batch provider of a role's model string, or None when it has no batch endpoint."""
    model = settings.model or ""
    for name in PROVIDERS:
        if model.startswith(f"{name}/"):
            return name
    return None


def check_batchable(settings) -> None:
    if provider_name(settings) is None:
        raise UserError(f"--batch: {settings.label} has no batch endpoint (OpenAI-compatible and Anthropic "
                        f"models do)")


# --- the journal ---------------------------------------------------------------------------------------

class BatchJournal:
    """``batches.jsonl``: intents, batch ids, done and void marks (see the module's docstring); one line
    per event, fsynced before the step it guards goes on. Read, under its lock, on first use (``open``);
    the lock is held until ``close``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.RLock()
        self._held: contextlib.ExitStack | None = None
        self._intents: dict[str, dict] = {}
        self._batch_intent: dict[str, str] = {}   # batch id -> intent key
        self._holding: dict[str, list[str]] = {}  # custom id -> the intents that carried it, in order
        self._loaded: set[str] = set()            # intent keys read from disk: the only ones recovery resolves
        self.pending: set[str] = set()            # intent keys this process is submitting now
        self.delivered: set[str] = set()          # custom ids whose result this process delivered (counted)

    def open(self) -> "BatchJournal":
        """Take the journal's lock and read it (once; again after ``close``). A journal another process
        holds is refused in one line naming it."""
        with self._lock:
            if self._held is None:
                held = contextlib.ExitStack()
                held.enter_context(locks.hold(self.lock_path, f"the batch journal {self.path}"))
                try:
                    self._intents, self._batch_intent, self._holding = {}, {}, {}
                    if self.path.exists():
                        Journal(self.path).close()   # cuts a line torn by a kill
                        for row in read(self.path):
                            self._apply(row)
                    self._loaded = set(self._intents)
                except BaseException:
                    held.close()
                    raise
                self._held = held
        return self

    def close(self) -> None:
        """Let go of the lock (the verb is done with the journal)."""
        with self._lock:
            held, self._held = self._held, None
            if held is not None:
                held.close()

    @property
    def intents(self) -> dict[str, dict]:
        self.open()
        return self._intents

    @property
    def batch_intent(self) -> dict[str, str]:
        self.open()
        return self._batch_intent

    def _apply(self, row: dict) -> None:
        if "custom_ids" in row:
            self._intents[row["intent"]] = {**row, "batch": None, "done": False, "void": False}
            for cid in row["custom_ids"]:
                self._holding.setdefault(cid, []).append(row["intent"])
        elif "batch" in row and row.get("intent") in self._intents:
            # A batch id wins over an earlier void: the batch exists, whatever a recovery concluded.
            self._intents[row["intent"]].update(batch=row["batch"], void=False)
            self._batch_intent[row["batch"]] = row["intent"]
        elif "done" in row and row["done"] in self._batch_intent:
            self._intents[self._batch_intent[row["done"]]]["done"] = True
        elif "void" in row and row["void"] in self._intents:
            intent = self._intents[row["void"]]
            if intent["batch"] is None:
                intent["void"] = True

    def _write(self, row: dict) -> None:
        with self._lock:
            self.open()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._apply(row)

    def intend(self, key: str, custom_ids: list[str], provider: str, model: str) -> None:
        self._write({"intent": key, "custom_ids": custom_ids, "provider": provider, "model": model,
                     "time": time.time()})

    def submitted(self, batch_id: str, key: str, **extra) -> None:
        self._write({"batch": batch_id, "intent": key, **extra})

    def done(self, batch_id: str) -> None:
        self._write({"done": batch_id})

    def void(self, key: str) -> None:
        self._write({"void": key})

    def _latest(self, custom_id: str) -> dict | None:
        """The last intent that carried ``custom_id`` and was not void."""
        self.open()
        for key in reversed(self._holding.get(custom_id, ())):
            intent = self._intents[key]
            if not intent["void"]:
                return intent
        return None

    def batch_of(self, custom_id: str) -> str | None:
        """The batch that last carried ``custom_id`` (void intents, which made none, left out); None when
        none did, or when the last intent's batch is not known (recovery resolves those first)."""
        intent = self._latest(custom_id)
        return intent["batch"] if intent is not None else None

    def in_doubt(self, custom_id: str) -> bool:
        """Whether the last intent that carried ``custom_id`` may have made a batch this process could
        not learn of (a submission interrupted or not looked up, and not under way): submitting it
        again could pay twice; a rerun's recovery looks for it."""
        intent = self._latest(custom_id)
        return intent is not None and intent["batch"] is None and intent["intent"] not in self.pending

    def unresolved(self, provider: str, model: str) -> list[dict]:
        """The intents read from disk whose batch is not known: those of an earlier process, never one
        written by this process (its submitter, maybe another role's Batcher, resolves it)."""
        self.open()
        return [i for k, i in self._intents.items() if k in self._loaded and i["batch"] is None
                and not i["void"] and i.get("provider") == provider and i.get("model") == model]


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
        """The result of one request; raises _RequestFailed when it failed for good."""
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
        from .llm import _is_fatal

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
            if isinstance(exc, NotCreated) or _refusal(status):   # refused: nothing was made
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
                                   _RequestFailed(Failed(f"batch {batch_id} could not be polled: {first_line(exc)}")))
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
                future.set_exception(_RequestFailed(result))
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
                 progress: Callable[[Progress], None] | None = stderr_progress, usage: Usage | None = None) -> None:
        """``usage``: where its calls are counted; by default a Usage of its own, which every verb keeps (a
        role's cost is its online calls' at the online price plus these at the batch price: cost.py)."""
        check_batchable(llm.settings)
        self.llm = llm
        self.usage = usage if usage is not None else Usage()
        self.config = config or BatchConfig.from_env()
        self.provider = PROVIDERS[provider_name(llm.settings)](llm.settings)
        self.batcher = Batcher(self.provider, journal, self.config, llm.settings.label, progress)
        self._loop: asyncio.AbstractEventLoop | None = None   # ask's loop, started on its first call
        self._loop_lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.llm, name)

    @property
    def settings(self):
        return self.llm.settings

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
        except _RequestFailed as exc:
            failed = exc.failed
            self.usage.add(None, time.perf_counter() - started)
            if fmt is not None and failed.status == 400 and refuses_request(_Refusal(failed.reason)):
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


class _Refusal(Exception):
    """A batch request's 400, shaped for llm.refuses_request."""
    status_code = 400


class Throttled:
    """An online role beside batched ones: at most ``limit`` of its calls in flight (evolve raises its
    concurrency to the batch size when batching, which must not reach an online endpoint)."""

    def __init__(self, llm: Llm, limit: int) -> None:
        self.llm = llm
        self.limit = limit
        self._semaphores: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}

    def __getattr__(self, name):
        return getattr(self.llm, name)

    @property
    def settings(self):
        return self.llm.settings

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
