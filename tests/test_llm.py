import pytest

from auto_evol.llm import backends, client as llm
from auto_evol.core.errors import UserError
from conftest import scripted_llm


@pytest.fixture(autouse=True)
def memory_cache():
    backends.configure_cache(None)


def test_cache_hits_are_counted_apart_from_paid_calls():
    model, engine = scripted_llm(lambda p: f"echo {p}", cache=True, name="cache-count")
    assert model.ask("one").text == "echo one"
    assert model.ask("one").text == "echo one"
    model.ask("two")
    usage = model.usage.snapshot()
    assert len(engine.prompts) == 2 and usage["calls"] == 3 and usage["cached"] == 1


def test_rollouts_separate_sampled_calls_in_the_cache():
    model, engine = scripted_llm(lambda p: "x", temperature=0.6, cache=True, name="rollouts")
    for rollout in (1, 2, 1):
        model.ask("same prompt", rollout=rollout)
    assert len(engine.prompts) == 2 and model.usage.cached == 1


def test_fatal_and_transient_errors():
    from dspy import lm15

    def fail(prompt):
        raise (lm15.AuthError if "auth" in prompt else lm15.ServerError)("nope")

    model, _ = scripted_llm(fail, name="errors")
    with pytest.raises(UserError, match="nope"):
        model.ask("auth please")
    with pytest.raises(llm.LLMError):
        model.ask("server please")
    assert model.usage.errors == 2


def test_checks_before_any_work(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="no API key"):
        backends.check(llm.RoleSettings(model="openai/gpt-4o-mini"), "--evol-model")
    backends.check(llm.RoleSettings(model="openai/local", api_base="http://127.0.0.1:9/v1"), "--evol-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    backends.check(llm.RoleSettings(model="openai/gpt-4o-mini"), "--evol-model")
    with pytest.raises(UserError, match="unknown provider"):
        backends.check(llm.RoleSettings(model="nosuch/model"), "--optimizer-model")
    backends.check(llm.RoleSettings(model=None), "--evol-model")  # the embedded model needs nothing


def test_async_calls_count_cache_hits_per_call():
    import asyncio

    model, engine = scripted_llm(lambda p: f"echo {p}", cache=True, name="async-count")

    async def main():
        first = await asyncio.gather(*(model.aask(f"p{i}") for i in range(20)))
        again = await asyncio.gather(*(model.aask(f"p{i}") for i in range(20)))
        return first, again

    first, again = asyncio.run(main())
    assert [r.text for r in first] == [f"echo p{i}" for i in range(20)]
    assert not any(r.cached for r in first) and all(r.cached for r in again)
    assert len(engine.prompts) == 20 and model.usage.cached == 20


def test_run_async_keeps_dspy_bookkeeping_on_the_loop_thread():
    """DSPy hops to a worker thread several times per async call; auto-evol's loops run those hops in
    place (they cost more than a fast server's reply), while other blocking work still gets a worker."""
    import asyncio
    import threading

    model, engine = scripted_llm(lambda p: f"echo {p}", cache=True, name="loop-thread")

    async def main():
        loop_thread = threading.get_ident()
        replies = await asyncio.gather(*(model.aask(f"p{i}") for i in range(30)))
        workers = len(asyncio.get_running_loop()._default_executor._threads)
        other = await asyncio.to_thread(threading.get_ident)
        return replies, workers, loop_thread, other

    replies, workers_after_calls, loop_thread, other = llm.run_async(main())
    assert [r.text for r in replies] == [f"echo p{i}" for i in range(30)]
    assert workers_after_calls == 0            # 30 calls, cache lookups and stores included: no hop
    assert other != loop_thread                # a foreign blocking function still runs on a worker


def test_the_disk_cache_keeps_little_of_its_sqlite_files_in_memory(tmp_path):
    """diskcache's defaults (32 MB of pages and a 64 MB map per shard connection, 16 shards) made a
    long evolve run's memory grow with the cache; auto-evol bounds both, on every shard."""
    import dspy

    backends.configure_cache(tmp_path)
    try:
        shards = dspy.cache.disk_cache._shards
        assert shards and all(s.sqlite_cache_size == 256 and s.sqlite_mmap_size == 0 for s in shards)
        con = shards[0]._con
        assert con.execute("PRAGMA cache_size").fetchone()[0] == 256
        assert con.execute("PRAGMA mmap_size").fetchone()[0] == 0
    finally:
        backends.configure_cache(None)
