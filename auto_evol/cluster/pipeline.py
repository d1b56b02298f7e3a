"""Evolve's phases as Ray Data pipelines (``evolve --ray``): the same items, records and journals as
the single-process path, with the LLM calls spread over a cluster's workers.

A phase (the seeds' answers, or one round) is one Ray Data dataset:

    read_text(pool)            Ray Data's reader, on the workers: the pool is a JSONL file in OUT.work
    -> start                   the pool rows not journaled yet, as item states {"row", "replies": []}
    -> LLM stages              each call an item needs, answered and added to its replies
    -> finish                  each item's journal record (rounds.py), with what its calls cost
    -> the driver              appends the records to the phase's journal as they stream in

An item is rounds.py's generator; its state is its row plus the replies its calls got so far, plain
data, and trajectory.replay continues it from there wherever the next call is made. So the rows can
cross workers and stages, and both paths run the same steps (equal record sets for the same seed).

LLM stages: roles auto-evol's own clients serve (an OpenAI-compatible server, a provider, a GGUF
file) are answered by ``Asker`` actors, each running its batch of items to the end on one event loop
(with the adaptive concurrency, retries and structured replies of the single-process path). A
``vllm:MODEL`` role runs on Ray Data's vLLM engine processor (``vLLMEngineProcessorConfig``), one
stage per call an item can make (the evolution, the judge's verdict, the answer), with the
tensor-parallel size and replica count given.

Faults: Ray Data restarts a killed worker and runs its batch again (actor pools retry without
bound), so a lost worker costs the calls of its batch in flight and nothing else; the journal is the
driver's, written only as records come back, so a killed driver loses the items in flight and a
rerun skips every journaled one, as in the single-process path. Cluster needs: every node must read
the work folder (``--out`` on storage all nodes mount at one path); the driver writes it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..algorithm.rounds import RoundPlan, round_item, seed_answer
from ..algorithm.trajectory import Ask, replay
from ..core.errors import Outage, UserError
from ..llm import dspy_tuning
from ..llm.client import LLMError, Llm, Reply, RoleSettings

VLLM = "vllm:"   # --evol-model vllm:MODEL: a vLLM engine per replica on the cluster's GPUs
MAX_BLOCKS = 4096   # a phase's pool is cut into at most this many blocks (each a task)


def is_vllm(settings: RoleSettings) -> bool:
    return (settings.model or "").startswith(VLLM)


def absolute(settings: RoleSettings) -> RoleSettings:
    """A role whose model is a GGUF file named by a relative path, with the path made absolute: workers
    run in other folders (and on other nodes)."""
    model = settings.model or ""
    if model.startswith("gguf:") and not Path(model[5:]).expanduser().is_absolute():
        return dataclasses.replace(settings, model="gguf:" + str(Path(model[5:]).expanduser().resolve()))
    return settings


def absolute_dir(folder: str | None) -> str | None:
    """A cache folder as workers must name it (None stays None)."""
    return str(Path(folder).expanduser().resolve()) if folder else None


@dataclass(frozen=True)
class RayOptions:
    """How a phase spreads over the cluster."""
    workers: int | None = None      # Asker actors (items' calls) per phase; None: 2 per alive node
    batch_size: int = 64            # items a worker takes at once (its calls in flight, at most)
    tensor_parallel: int = 1        # GPUs per vLLM engine
    replicas: int = 1               # vLLM engines per vLLM role


@dataclass(frozen=True)
class Phase:
    """The items of one evolve phase: a round's (``plan``) or, with no plan, the seeds' answers."""
    plan: RoundPlan | None = None

    def steps(self, row: dict):
        return round_item(row, self.plan) if self.plan is not None else seed_answer(row)

    def wants(self, row: dict) -> bool:
        """Whether a pool row is an item of this phase (the seeds' answers: seeds that came without)."""
        return self.plan is not None or not row["output"]

    @property
    def calls_per_item(self) -> int:
        return self.plan.calls_per_item if self.plan is not None else 1


@dataclass(frozen=True)
class DevPhase:
    """Optimize's dev evaluation: (method, dev item) pairs, each evolved once, answered and judged
    (evaluation.dev_steps); a row names its pair by index."""
    pairs: tuple

    def steps(self, row: dict):
        from ..algorithm.evaluation import dev_steps

        return dev_steps(*self.pairs[int(row["seed_id"])])

    def wants(self, row: dict) -> bool:
        return True

    @property
    def calls_per_item(self) -> int:
        return 2


# --- an item's state: its row and its replies so far, as JSON ------------------------------------

def _entry(role: str, got: Reply | LLMError, seconds: float) -> dict:
    """One call's reply as the state keeps it (its text and fields, or the error), with its usage."""
    if isinstance(got, LLMError):
        return {"role": role, "error": str(got) or type(got).__name__, "seconds": seconds}
    return {"role": role, "text": got.text, "fields": got.fields, "input_tokens": got.input_tokens,
            "output_tokens": got.output_tokens, "cached": got.cached, "truncated": got.truncated,
            "seconds": seconds}


def _reply(entry: dict) -> Reply | LLMError:
    if "error" in entry:
        return LLMError(entry["error"])
    return Reply(entry["text"], entry.get("input_tokens", 0), entry.get("output_tokens", 0),
                 entry.get("truncated", False), entry.get("cached", False), entry.get("fields"))


def _resume(steps, got):
    """Send (or throw) one reply into suspended ``steps``: its next Ask, or what it returned."""
    try:
        return steps.throw(got) if isinstance(got, LLMError) else steps.send(got)
    except StopIteration as done:
        return done.value


def _next(phase: Phase | DevPhase, state: dict):
    """A fresh copy of the item's steps brought up to its replies, and what it wants next."""
    steps = phase.steps(state["row"])
    return steps, replay(steps, [_reply(e) for e in state["replies"]])


def start(batch: dict, *, phase: Phase | DevPhase, done: frozenset) -> dict:
    """Pool lines -> the states of the phase's items not journaled yet (the seeds' answers: the seeds
    that came without one)."""
    states = []
    for line in batch["text"]:
        row = json.loads(line)
        if row["seed_id"] not in done and phase.wants(row):
            states.append(json.dumps({"row": row, "replies": []}, ensure_ascii=False))
    return {"state": states}


def finish(batch: dict, *, phase: Phase | DevPhase) -> dict:
    """States whose calls are all answered -> their keys (the rows' seed_id), journal records, and their
    calls' usage."""
    keys, records, usages = [], [], []
    for text in batch["state"]:
        state = json.loads(text)
        _, got = _next(phase, state)
        if isinstance(got, Ask):   # no stage served this role: a bug, never a silent loss
            raise RuntimeError(f"item {state['row'].get('seed_id')} still needs a {got.role} call")
        keys.append(state["row"]["seed_id"])
        records.append(json.dumps(got, ensure_ascii=False))
        usages.append(json.dumps([{k: v for k, v in e.items() if k not in ("text", "fields")}
                                  for e in state["replies"]]))
    return {"key": keys, "record": records, "usage": usages}


# --- the roles auto-evol's own clients serve -------------------------------------------------------

class Asker:
    """A Ray Data actor: answers the calls its roles get from a batch of items, all on one event loop.
    ``one_call``: each item makes at most one call here (a stage among vLLM stages); otherwise items
    go on until they finish or need a role served elsewhere."""

    def __init__(self, phase: Phase, roles: dict[str, tuple[RoleSettings, str]], *, cache_dir: str | None,
                 concurrency, max_error_rate: float, one_call: bool = False) -> None:
        from ..llm import backends
        from ..llm.roles import build_roles

        self.phase, self.one_call = phase, one_call
        self.llms: dict[str, Llm] = {}
        self.loop = None
        # A role this worker cannot build (no key in its environment, no GGUF file on its node) is raised
        # from the first batch, where Ray passes the error on as itself (from a constructor it comes
        # back as a dead actor, its message only).
        self.failed: Exception | None = None
        try:
            built = build_roles(*roles.values(), cache_dir=cache_dir, concurrency=concurrency,
                                memory=False, max_error_rate=max_error_rate,
                                checks_dir=cache_dir or backends.DEFAULT_CACHE_DIR)
            self.llms = dict(zip(roles, built))
        except (UserError, Outage) as exc:
            self.failed = exc

    async def __call__(self, batch: dict) -> dict:
        # Async: Ray Data runs a few batches of a worker at once on the worker's one event loop, which
        # keeps its connections from batch to batch. A batch per fresh loop (asyncio.run) ran 0.19 of a
        # bare client's calls/s in benchmarks/ray_bench.py: every batch waited for its slowest item and
        # reconnected.
        if self.failed is not None:
            raise self.failed
        loop = asyncio.get_running_loop()
        if self.loop is not loop:   # the tuning llm.run_async gives its own loops (DSPy's calls inline)
            self.loop = loop
            dspy_tuning.run_dspy_inline(loop)
        states = [json.loads(text) for text in batch["state"]]
        await asyncio.gather(*(self._advance(state) for state in states))
        return {"state": [json.dumps(s, ensure_ascii=False) for s in states]}

    async def _advance(self, state: dict) -> None:
        steps, got = _next(self.phase, state)
        calls = 0
        while isinstance(got, Ask) and got.role in self.llms and not (self.one_call and calls):
            began = time.perf_counter()
            try:
                reply = await self.llms[got.role].aask(got.prompt, **got.options())
            except LLMError as exc:
                reply = exc
            state["replies"].append(_entry(got.role, reply, round(time.perf_counter() - began, 4)))
            calls += 1
            got = _resume(steps, reply)


# --- vLLM engines through Ray Data's LLM processor -----------------------------------------------

def engine_config(settings: RoleSettings, options: RayOptions, batch_size: int):
    """Ray Data's vLLM processor config for a ``vllm:MODEL`` role."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=settings.model.removeprefix(VLLM),
        # The model's own context length; prefix caching shares the method's text across an item's prompts.
        engine_kwargs={"tensor_parallel_size": options.tensor_parallel, "enable_prefix_caching": True},
        concurrency=options.replicas, batch_size=batch_size,
        should_continue_on_error=True)   # a failed request is that item's failed call, not the phase's


def needs(row: dict, *, phase: Phase, roles: tuple[str, ...]) -> bool:
    """Whether this item's next call goes to one of ``roles`` (those one engine serves)."""
    _, got = _next(phase, json.loads(row["state"]))
    return isinstance(got, Ask) and got.role in roles


def to_engine(row: dict, *, phase: Phase, settings: dict[str, RoleSettings]) -> dict:
    """An item's next call as the vLLM processor takes it: chat messages and sampling parameters (its
    role's, with the call's own temperature and its rollout id as the seed)."""
    _, ask = _next(phase, json.loads(row["state"]))
    role = settings[ask.role]
    temperature = ask.temperature if ask.temperature is not None else role.temperature
    # Every key on every row: one engine serves both roles, and a block of rows with and without a key
    # would hand the engine None for it (top_p=None is no valid setting; seed=None is "unseeded").
    params = {"temperature": temperature if temperature is not None else 0.0, "max_tokens": role.max_tokens,
              "top_p": role.top_p if role.top_p is not None else 1.0, "seed": ask.rollout}
    return {"state": row["state"], "messages": [{"role": "user", "content": ask.prompt}], "sampling_params": params}


def from_engine(row: dict, *, phase: Phase) -> dict:
    """The processor's output row -> the item's state with the reply added. (Rows whose request failed
    skip this in Ray's processor: ``settle`` adds their failed call.)"""
    state = json.loads(row["state"])
    _, ask = _next(phase, state)
    got = Reply(str(row.get("generated_text") or ""), int(row.get("num_input_tokens") or 0),
                int(row.get("num_generated_tokens") or 0))
    state["replies"].append(_entry(ask.role, got, max(float(row.get("time_taken_llm") or 0.0), 0.0)))
    return {"state": json.dumps(state, ensure_ascii=False)}


def settle(row: dict, *, phase: Phase) -> dict:
    """After an engine stage: a row whose request failed in the engine (``__inference_error__``; Ray's
    processor passes it by the postprocess) gets that call as failed, the item's own ``llm_error``; every
    row comes out as its state alone."""
    error = row.get("__inference_error__")
    if not error:
        return {"state": row["state"]}
    state = json.loads(row["state"])
    _, ask = _next(phase, state)
    state["replies"].append(_entry(ask.role, LLMError(str(error).splitlines()[0]), 0.0))
    return {"state": json.dumps(state, ensure_ascii=False)}


def build_engine_stage(settings: RoleSettings, options: RayOptions, batch_size: int,
                       preprocess: Callable, postprocess: Callable):
    """The vLLM processor for one role (a function of datasets). Tests stand in for it (they have no GPU)."""
    from ray.data.llm import build_processor

    return build_processor(engine_config(settings, options, batch_size), preprocess=preprocess,
                           postprocess=postprocess)


# --- a phase -------------------------------------------------------------------------------------

@dataclass
class Cluster:
    """A phase runner on the Ray cluster ``evolve`` is connected to (cluster.connected)."""
    roles: dict[str, tuple[RoleSettings, str]]   # "evol", "answer" -> (settings, flag)
    options: RayOptions
    cache_dir: str | None
    concurrency: object
    max_error_rate: float

    def workers(self) -> int:
        if self.options.workers is not None:
            return self.options.workers
        from .connect import alive_nodes

        return 2 * max(1, len(alive_nodes()))

    def judge(self, pairs: list, evol: Llm, done: Callable[[int, object], None]) -> None:
        """Optimize's dev evaluation of (method, dev item) pairs on the cluster: ``done(index, DevResult)``
        as each comes back, its calls counted in ``evol``'s usage."""
        from ..algorithm.evaluation import dev_result

        self.run(DevPhase(tuple(pairs)), [{"seed_id": str(i)} for i in range(len(pairs))], set(), None,
                 lambda key, record: done(int(key), dev_result(pairs[int(key)][1], record)),
                 roles={"evol": evol, "answer": evol}, label="dev evaluation")

    def run(self, phase: Phase | DevPhase, pool: Path | list[dict], done: set[str], limit: int | None,
            on_record: Callable[[str, dict], None], *, roles: dict[str, Llm], label: str,
            items: int | None = None) -> None:
        """Run ``phase`` over its items in ``pool`` (a JSONL file holding ``items`` of them, or rows) not in
        ``done`` (the first ``limit`` of them, if given). Each finished item's calls are counted in
        ``roles`` (the driver's) and its record handed to ``on_record(key, record)`` once, as it comes
        back, whatever the cluster hands back twice; a phase with items missing at the end is an Outage
        (the caller's journal holds what came, a rerun goes on), never a phase called complete."""
        import ray.data

        # Records come back a block at a time: blocks of ~16 batches keep the journal (and what a killed
        # driver loses) close behind the calls. Ray Data alone cut 3,000 lines into 8 blocks of 375.
        items = items if items is not None else len(pool)
        blocks = max(1, min(MAX_BLOCKS, -(-items // (16 * self.options.batch_size))))
        if isinstance(pool, Path):   # Ray Data's reader, on the workers (the path: storage they all see)
            ds = ray.data.read_text(str(pool.resolve()), num_cpus=0.1, override_num_blocks=blocks)
        else:
            ds = ray.data.from_items([{"text": json.dumps(row)} for row in pool], override_num_blocks=blocks)
        ds = ds.map_batches(start, fn_kwargs={"phase": phase, "done": frozenset(done)}, batch_format="numpy",
                            num_cpus=0.1)
        if limit is not None:
            ds = ds.limit(limit)
        came: set[str] = set()
        try:   # (the vLLM stages run part of the pipeline as they are built: materialize)
            ds = self._llm_stages(ds, phase)
            ds = ds.map_batches(finish, fn_kwargs={"phase": phase}, batch_format="numpy", num_cpus=0.1)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for key, record, usage in zip(batch["key"], batch["record"], batch["usage"]):
                    add_usage(roles, json.loads(usage))   # a record twice: its calls were paid twice
                    if key not in came and key not in done:
                        came.add(key)
                        on_record(str(key), json.loads(record))
        except Exception as exc:   # an outage or a bad setting a worker met: its own one line
            raise _cause(exc) from None
        expected = items - len(done) if limit is None else limit
        if len(came) < expected:
            raise Outage(f"{label}: {len(came)} of {expected} items came back from the Ray cluster; the rest "
                         f"are not journaled, rerun the same command to go on")

    def _llm_stages(self, ds, phase: Phase):
        own = {role: spec for role, spec in self.roles.items() if not is_vllm(spec[0])}
        if len(own) == len(self.roles):   # every call answered by Asker actors, items run to the end in one stage
            return self._ask(ds, phase, own, one_call=False)
        models: dict[str, dict[str, RoleSettings]] = {}   # one engine per model, serving every role that names it
        for role, (settings, _) in self.roles.items():
            if is_vllm(settings):
                models.setdefault(settings.model, {})[role] = settings
        for _ in range(phase.calls_per_item):   # one stage per call an item can make
            for settings in models.values():
                # The rows go two ways (to the engine, or by it) and meet again: computed once before the
                # split, or Ray Data would run everything upstream once per way (and pay its calls twice).
                ds = ds.materialize()
                wanted = functools.partial(needs, phase=phase, roles=tuple(settings))
                stage = build_engine_stage(next(iter(settings.values())), self.options, self.options.batch_size,
                                           functools.partial(to_engine, phase=phase, settings=settings),
                                           functools.partial(from_engine, phase=phase))
                served = stage(ds.filter(wanted)).map(settle, fn_kwargs={"phase": phase}, num_cpus=0.1)
                ds = served.union(ds.filter(functools.partial(_not, wanted)))
            if own:
                ds = self._ask(ds, phase, own, one_call=True)
        return ds

    def _ask(self, ds, phase: Phase, roles: dict, *, one_call: bool):
        import ray.data

        return ds.map_batches(
            Asker, batch_size=self.options.batch_size, batch_format="numpy", num_cpus=0.1,
            compute=ray.data.ActorPoolStrategy(size=self.workers()),
            fn_constructor_kwargs={"phase": phase, "roles": roles, "cache_dir": self.cache_dir,
                                   "concurrency": self.concurrency, "max_error_rate": self.max_error_rate,
                                   "one_call": one_call})


def add_usage(roles: dict[str, Llm], usage: list[dict]) -> None:
    """Count the calls a worker made (their entries, as ``finish`` gives them) in the driver's roles."""
    for call in usage:
        roles[call["role"]].usage.add(None if "error" in call else Reply(
            "", call.get("input_tokens", 0), call.get("output_tokens", 0), cached=call.get("cached", False)),
            call.get("seconds", 0.0))


def _not(test: Callable[[dict], bool], row: dict) -> bool:
    return not test(row)


def engines_gpus(roles, options: RayOptions) -> int:
    """GPUs the vLLM engines of one stage take: an engine pool per model, one model's at a time."""
    return options.replicas * options.tensor_parallel if any(is_vllm(s) for s, _ in roles) else 0


def _cause(exc: BaseException) -> BaseException:
    """The Outage or UserError behind a Ray error (raised by a worker), if any, else ``exc``."""
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        cause = getattr(err, "cause", None)   # ray.exceptions.RayTaskError: the worker's own exception
        if isinstance(cause, (Outage, UserError)):
            return cause
        if isinstance(err, (Outage, UserError)) and cause is None:
            return err
        todo += [err.__cause__, err.__context__, cause]
    return exc
