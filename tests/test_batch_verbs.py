"""`optimize --batch` (the dev evaluation) and `compare --batch` against tests/fake_batch.py's OpenAI Files +
Batches fake, driven by the real SDK: the same results as online, the dev evaluation's calls in batches and
none online, a batch per wave, and a resumed run that attaches to its journaled batches."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from conftest import cli

from auto_evol.llm.batch import batcher as batch_mod
from auto_evol.tracking import store
from auto_evol.compare import CompareOptions, compare
from auto_evol.optimize import optimize
from fake_batch import FakeOpenAIBatch, _last_user, interrupt
from fake_openai import compare_world as scripted_world

# Three steps, two candidates (the fake optimizer writes level + 1 for both: one distinct text a step).
BASE = dict(data="questions.jsonl", init_method="init.md", steps=3, candidates=2, batch_size=3, dev_size=8, seed=1,
            evol_model="openai/fake", optimizer_model="openai/fake", cache_dir=None, concurrency=2, patience=5)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv(batch_mod.POLL_ENV, "0.02")


class Recording(FakeOpenAIBatch):
    """Also keeps the last user message of every online chat call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chat_prompts: list[str] = []

    def _dispatch(self, method, path, query, headers, raw):
        if path.endswith("/chat/completions"):
            self.chat_prompts.append(_last_user(json.loads(raw)["messages"]))
        return super()._dispatch(method, path, query, headers, raw)


def submitted_ids(fake) -> Counter:
    return Counter(cid for ids in fake.submitted for cid in ids)


def numbers(texts) -> set[int]:
    return {int(n) for text in texts for n in re.findall(r"number (\d+)", text)}


def expected_batches(dev: list[int], levels: range) -> int:
    """Per dev evaluation (e0 at level 0, then one new candidate a step): a batch of evolutions, then one of the
    answers no earlier batch asked for. fake_openai.world: question i evolves well at level L when i % 4 <= L
    (answered 'with a twist'); otherwise an odd one comes back '[vague]' (answered too), an even one unreadable."""
    asked: set[str] = set()
    batches = 0
    for level in levels:
        answers = {f"{i} twist" if i % 4 <= level else f"{i} vague" for i in dev if i % 4 <= level or i % 2}
        batches += 1 + bool(answers - asked)
        asked |= answers
    return batches


def test_optimize_batch_reaches_the_online_e_star_with_the_dev_evaluation_in_batches(project, monkeypatch):
    from auto_evol.llm import backends

    monkeypatch.setattr(backends, "DEFAULT_CACHE_DIR", str(project / "cache"))   # an untracked run's journal
    with Recording() as fake:
        online = optimize(**BASE, api_base=fake.base, track=False, methods_dir="online-methods")
        assert not fake.batches_created
    with Recording(polls_to_finish=2) as fake:
        batched = optimize(**BASE, api_base=fake.base, track=False, batch="all", methods_dir="batch-methods")
        assert batched.best.text == online.best.text == "Rewrite (level 3) this: {instruction}\n"
        assert batched.rates == online.rates and batched.accepted_steps == online.accepted_steps == [1, 2, 3]
        assert [e.failure for e in batched.initial.results] == [e.failure for e in online.initial.results]
        dev = sorted(int(r.item.id) for r in batched.initial.results)
        # At most a batch of evolutions and one of new answers per dev evaluation: fewer when e0's dev
        # evaluation, which runs beside step 1, shares its waves with step 1's.
        assert 2 <= fake.batches_created <= expected_batches(dev, range(4))
        assert max(submitted_ids(fake).values()) == 1            # no request twice
        # Only dev items went to batches, and none of them online: the trajectories and the optimizer did.
        assert numbers(_last_user(b["messages"]) for b in fake.bodies) == set(dev)
        assert fake.chat_prompts and not numbers(fake.chat_prompts) & set(dev)
        assert not [p for p in fake.chat_prompts if not p.startswith(("Rewrite", "You are reviewing", "You improve"))]
    # An untracked run journals under the cache dir, in a file named for its settings (a rerun attaches).
    assert [p.name.startswith("optimize-") for p in (project / "cache" / "batches").glob("*.jsonl")] == [True]
    # The same calls, counted in the evol role, phase by phase.
    assert batched.usage["evol"]["calls"] == online.usage["evol"]["calls"]
    assert [r.calls for r in batched.history] == [r.calls for r in online.history]
    assert batched.usage["optimizer"]["calls"] == online.usage["optimizer"]["calls"]


@pytest.mark.parametrize("moment", ["after_id", "before_id"])
def test_a_resumed_optimize_attaches_to_its_journaled_batch(project, monkeypatch, moment):
    with Recording(polls_to_finish=3) as fake:
        # Step 1's evolutions: e0's two batches are done and checkpointed; this one is in flight.
        restore = interrupt(monkeypatch, calls=3, journaled=moment == "after_id")
        with pytest.raises(KeyboardInterrupt):
            optimize(**BASE, api_base=fake.base, batch="all")
        restore()
        assert fake.batches_created == 3
        [killed] = [r for r in store.optimize_runs() if r["status"] == "KILLED"]
        journal = store.batch_journal(killed["run_id"])
        assert journal.is_file() and str(journal).startswith(str(project / "mlruns"))
        resumed = optimize(resume=killed["run_id"], api_base=fake.base)   # the run's own --batch
        assert max(submitted_ids(fake).values()) == 1       # the third batch was attached to, not sent again
        dev = sorted(int(r.item.id) for r in resumed.history[0].candidates[0].evaluation.results)
        assert 3 < fake.batches_created <= expected_batches(dev, range(4))
        if moment == "before_id":
            assert [row for row in map(json.loads, journal.read_text().splitlines()) if row.get("recovered")]
    assert resumed.best.text == "Rewrite (level 3) this: {instruction}\n" and resumed.accepted_steps == [1, 2, 3]


def test_compare_batch_gives_the_online_summary(compare_project):
    options = dict(methods=["level0.md", "level2.md"], data="q.jsonl", rounds=2, dev_size=20, embeddings="tfidf",
                   cache_dir=None, track=False, evol_model="openai/fake")

    def rates(summary):
        return {name: (m.failure_rate.estimate, m.difference_to_baseline.estimate, m.failures,
                       [(r.failure_rate, r.difficulty, r.unscored) for r in m.per_round])
                for name, m in summary.methods.items()}

    with Recording(scripted_world) as fake:
        online = compare(CompareOptions(**options, api_base=fake.base, out="online"))
        assert not fake.batches_created
    with Recording(scripted_world, polls_to_finish=2) as fake:
        batched = compare(CompareOptions(**options, api_base=fake.base, out="batched", batch="all"))
        assert not fake.chat_prompts                   # every round and the judge: batches only
        assert max(submitted_ids(fake).values()) == 1
        # Round 1: a batch of evolutions, then one of answers; round 2: the evolutions not asked before (the
        # fake rewrites a rewrite to itself: unchanged, nothing to answer); then one of difficulty scores.
        assert fake.batches_created == 4
        created = fake.batches_created
        journal = compare_project / "batched" / "batches.jsonl"
        assert sum("custom_ids" in json.loads(line) for line in journal.read_text().splitlines()) == created
        # A rerun into the same report folder attaches to the journaled batches: nothing is sent again.
        again = compare(CompareOptions(**options, api_base=fake.base, out="batched", batch="all"))
        assert fake.batches_created == created and not fake.chat_prompts
    assert rates(batched) == rates(online) == rates(again)
    assert batched.seed_difficulty == online.seed_difficulty
    assert batched.calls["evol"]["calls"] == online.calls["evol"]["calls"]


@pytest.mark.parametrize("args, message", [
    (["optimize", "--data", "questions.jsonl", "--batch"], "--batch: embedded has no batch endpoint"),
    (["optimize", "--data", "questions.jsonl", "--evol-model", "ollama_chat/llama3", "--batch", "evol"],
     "--batch: ollama_chat/llama3 has no batch endpoint"),
    (["optimize", "--data", "questions.jsonl", "--evol-model", "openai/x", "--batch", "answer"],
     "--batch takes no value (all roles) or one of all, evol, got 'answer'"),
    (["compare", "--methods", "e0", "--data", "questions.jsonl", "--batch"], "--batch: embedded has no batch endpoint"),
    (["compare", "--methods", "e0", "--data", "questions.jsonl", "--evol-model", "openai/x", "--api-base",
      "http://127.0.0.1:9/v1", "--judge-model", "gguf:/no/m.gguf", "--batch", "judge"],
     "--batch: gguf:/no/m.gguf has no batch endpoint"),
    (["compare", "--methods", "e0", "--data", "questions.jsonl", "--evol-model", "openai/x", "--batch", "answer"],
     "--batch takes no value (all roles) or one of all, evol, judge, got 'answer'"),
])
def test_batch_where_no_batch_endpoint_is_one_line_and_exit_2(project, args, message):
    out = cli([*args, "--dev-size", "10", "--no-track"], project)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: ") and message in lines[0], out.stderr
    assert not (project / "mlruns").exists() and not (project / "reports").exists()
