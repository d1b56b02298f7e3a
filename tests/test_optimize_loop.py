"""optimize and compare on one event loop: the same results as one call at a time, no phase barriers,
per-phase counts while phases overlap, one limit per server and model, each role's usage counted once."""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import zlib

import pytest

from auto_evol import optimize
from auto_evol.algorithm.devset import load_split
from auto_evol.algorithm.phases import Phases
from auto_evol.core.observer import Observer, Observers, Queued
from auto_evol.llm import client as llm
from auto_evol.llm.concurrency import CallSlots
from auto_evol.llm.roles import build_roles
from conftest import AsyncScripted, ScriptedEngine, scripted_llm
from fake_openai import FakeOpenAI, world

BASE = dict(data="questions.jsonl", init_method="init.md", steps=2, candidates=3, batch_size=4, dev_size=12, seed=3,
            patience=5, evol_model="openai/fake", optimizer_model="openai/fake", cache_dir=None)


def variants(body: dict) -> str:
    """fake_openai's world, except that each optimization writes a method of its own: its level grows by
    one for one sampled rollout in three (the rollout's seed decides), so candidates differ in text and
    failure rate, and which one wins depends on which is which, not on when its reply came."""
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("You improve"):
        level = int(re.search(r"level (\d+)", prompt.split("=== End of current method ===")[0]).group(1))
        seed = int(body.get("seed") or 0)
        return f"Optimized Method:\nRewrite (level {level + (seed % 3 == 0)}) this, variant {seed % 997}: {{instruction}}\n"
    return world(prompt)


def shuffled(body: dict) -> float:
    """5 to 35 ms, by the request's content: replies come back in another order than they were sent."""
    return 0.005 + zlib.crc32(json.dumps(body, sort_keys=True).encode()) % 30 / 1000


def _records(run_id: str) -> list:
    """The MLflow records of an optimize run's steps and candidates, without what timing decides."""
    from auto_evol.tracking import store

    client = store.client()
    runs = client.search_runs([r.info.experiment_id for r in [client.get_run(run_id)]],
                              filter_string=f"tags.`auto_evol.optimize_run` = '{run_id}'")
    out = []
    for r in runs:
        metrics = {k: v for k, v in r.data.metrics.items() if not k.startswith("seconds")}
        # Left out: run ids (the run's own, its winners'), and the registry's version and champion (the
        # second run of a test registers the second version of the same prompt, which ties the first).
        tags = {k: v for k, v in r.data.tags.items() if k.startswith("auto_evol.") and not k.startswith(
            ("auto_evol.optimize_run", "auto_evol.winner.step", "auto_evol.prompt", "auto_evol.champion"))}
        params = {k: v for k, v in r.data.params.items() if k not in ("concurrency", "experiment")}
        out.append((r.data.tags.get("auto_evol.kind", ""), r.data.tags.get("auto_evol.step", ""), r.info.run_name,
                    sorted(metrics.items()), sorted(tags.items()), sorted(params.items())))
    return sorted(out)


@pytest.mark.parametrize("selection", ["full", "halving", "race"])
def test_the_loop_finds_what_one_call_at_a_time_finds(project, selection):
    """Replies in a shuffled order, every call in flight that may be: the same candidates, rates, e*, calls
    per phase and MLflow records as a run that makes one call at a time."""
    with FakeOpenAI(reply=variants, latency=shuffled) as fake:
        alone = optimize(**BASE, api_base=fake.base, selection=selection, concurrency=1, experiment="one-at-a-time",
                         methods_dir="m1")
        alone_calls = fake.calls
        together = optimize(**BASE, api_base=fake.base, selection=selection, experiment="together", methods_dir="m2")
        assert fake.calls == 2 * alone_calls   # no call more (early dev pairs are pairs the strategy asks for)
    assert together.best.text == alone.best.text and together.rates == alone.rates
    assert together.accepted_steps == alone.accepted_steps

    def steps(result):
        return [(r.step, r.accepted, r.calls, r.cached,
                 [(c.index, c.method.text, c.readable, c.evaluation.rate if c.evaluation else None,
                   [d.failure for d in c.evaluation.results] if c.evaluation else None) for c in r.candidates])
                for r in result.history]

    assert steps(together) == steps(alone)
    assert len({c.method.text for r in together.history for c in r.candidates}) > 2   # candidates that differ
    assert {k: v["calls"] for k, v in together.usage.items()} == {k: v["calls"] for k, v in alone.usage.items()}
    assert _records(together.run_id) == _records(alone.run_id)


class _Gated(AsyncScripted):
    """Holds e0's dev answers until step 1's first analysis has been asked: a loop that waited for e0's dev
    evaluation before starting step 1 would wait here until the timeout."""

    def __init__(self, engine, dev_numbers: set[int], analysed: threading.Event, waited: list) -> None:
        super().__init__(engine)
        self.dev_numbers, self.analysed, self.waited = dev_numbers, analysed, waited

    async def complete(self, request):
        prompt = request.messages[-1].text or ""
        number = re.search(r"number (\d+)", prompt)
        if "twist" in prompt and number and int(number.group(1)) in self.dev_numbers and "level 0" not in prompt:
            started = time.monotonic()
            while not self.analysed.is_set() and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            self.waited.append(self.analysed.is_set())
        return await super().complete(request)


def test_e0_on_the_dev_set_runs_beside_the_first_step(project):
    import dspy

    split = load_split(str(project / "questions.jsonl"), dev_size=8, batch_size=3, seed=1)
    dev_numbers = {int(item.id) for item in split.dev}
    analysed, waited = threading.Event(), []

    def optimizer_script(prompt: str) -> str:
        if prompt.startswith("You are reviewing"):
            analysed.set()
        return world(prompt)

    engine = ScriptedEngine(world)
    lm = dspy.LM("test/gated", engine=engine, async_engine=_Gated(engine, dev_numbers, analysed, waited), cache=False,
                 num_retries=0)
    evol = llm.Llm(llm.RoleSettings(model="test/gated"), lm)
    optimizer, _ = scripted_llm(optimizer_script, temperature=0.6, name="optimizer")
    result = optimize(evol=evol, optimizer=optimizer, data="questions.jsonl", init_method="init.md", steps=1,
                      candidates=2, batch_size=3, dev_size=8, seed=1, track=False, cache_dir=None)
    assert waited and all(waited)   # every held answer was let go by step 1's analysis, none by the timeout
    assert result.initial is not None and len(result.history) == 1


def test_one_llm_for_both_roles_is_counted_once(project):
    """The same Llm as evol and optimizer (equal settings once shared one): its calls count once."""
    shared, engine = scripted_llm(world, name="both")
    result = optimize(evol=shared, optimizer=shared, data="questions.jsonl", init_method="init.md", steps=2,
                      candidates=2, batch_size=3, dev_size=8, seed=1, track=False, cache_dir=None, patience=5)
    assert result.calls == len(engine.prompts)
    assert result.usage["optimizer"]["calls"] == 0 and result.usage["evol"]["calls"] == len(engine.prompts)


def test_roles_with_equal_settings_share_a_backend_and_count_their_own_calls(project):
    with FakeOpenAI() as fake:
        settings = llm.RoleSettings("openai/fake", fake.base, 0.6, 0.95, 256)
        evol, optimizer = build_roles((settings, "--evol-model"), (settings, "--optimizer-model"), cache_dir=None,
                                      concurrency="auto")
        assert evol is not optimizer and evol._lm is optimizer._lm and evol.gate is optimizer.gate
        evol.ask("Question number 1?")
        assert (evol.usage.calls, optimizer.usage.calls) == (1, 0)
        # A whole run with equal settings for both roles: the server's calls, counted once in all.
        result = optimize(data="questions.jsonl", init_method="init.md", steps=1, candidates=2, batch_size=3,
                          dev_size=8, seed=1, evol_model="openai/fake", optimizer_model="openai/fake",
                          api_base=fake.base, evol_temperature=0.6, evol_top_p=0.95, optimizer_temperature=0.6,
                          optimizer_top_p=0.95, evol_max_tokens=256, optimizer_max_tokens=256, track=False,
                          cache_dir=None)
        served = result.calls - sum(u["cached"] for u in result.usage.values())   # the rest came from the cache
        assert served == fake.calls - 1 and result.usage["optimizer"]["calls"] > 0


def test_overlapping_phases_count_their_own_calls():
    role, _ = scripted_llm(lambda prompt: "fine", name="phases")
    other, _ = scripted_llm(lambda prompt: "also fine", name="other")
    events = []

    class Seen(Observer):
        def phase(self, name, total, done=0):
            events.append(("phase", name, total, done))

        def advance(self, name):
            events.append(("advance", name))

    async def main():
        phases = Phases(Observers([Seen()]), ("first", "second", "empty"))
        phases.begin("bar", 3)
        tasks = [phases.task("first", role.aask("a"), shown="bar"), phases.task("second", other.aask("b"), shown="bar"),
                 phases.task("first", other.aask("c"), shown="bar")]
        await asyncio.gather(*tasks)
        return phases

    phases = asyncio.run(main())
    calls, cached, seconds = phases.counts()
    assert calls == {"first": 2, "second": 1, "empty": 0} and list(seconds) == ["first", "second", "empty"]
    assert phases.usage(role.usage, "first")["calls"] == 1 and phases.usage(other.usage)["calls"] == 2
    assert phases.usage(role.usage, "second")["calls"] == 0
    assert events[0] == ("phase", "bar", 3, 0) and events.count(("advance", "bar")) == 3


def test_call_slots_bound_the_calls_in_flight_on_every_loop():
    slots = CallSlots(3)
    seen = []

    async def call():
        async with slots:
            seen.append(slots.in_flight)
            await asyncio.sleep(0.01)

    async def many():
        await asyncio.gather(*(call() for _ in range(20)))

    asyncio.run(many())
    asyncio.run(many())   # a second loop (evolve runs one per phase): the same bound, no foreign-loop error
    assert max(seen) == 3 and len(seen) == 40 and slots.in_flight == 0


def test_queued_observers_hear_in_order_and_a_failure_stops_the_run():
    heard = []

    class Slow(Observer):
        def phase(self, name, total, done=0):
            time.sleep(0.01)
            heard.append(name)

        def step(self, record):
            raise RuntimeError("the logger broke")

    queued = Queued(Observers([Slow()]))
    started = time.perf_counter()
    for name in "abcde":
        queued.phase(name, 1)
    assert time.perf_counter() - started < 0.04   # the caller does not wait for what observers do
    queued.drain()
    assert heard == list("abcde")
    queued.step(None)
    with pytest.raises(RuntimeError, match="the logger broke"):
        queued.drain()
    with pytest.raises(RuntimeError, match="the logger broke"):
        queued.phase("f", 1)
    queued.shut()
