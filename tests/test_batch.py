"""`evolve --batch`: calls through the OpenAI and Anthropic batch APIs (tests/fake_batch.py, driven by the
real SDKs): the same records as online, no second submission after a kill, resubmission of expired and
failed requests up to a bound, a refused model in one line, and one role batched beside an online one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import asyncio

import pytest

from conftest import cli

from auto_evol.llm.batch import batcher as batch_mod
from auto_evol.evolve import EvolveOptions, evolve
from fake_batch import FakeAnthropicBatch, FakeOpenAIBatch, _last_user, interrupt

ROUNDS = 2
IDENTITY = ("id", "seed_id", "round", "instruction", "input", "output", "method", "method_hash",
            "parent_instruction")


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setenv(batch_mod.POLL_ENV, "0.01")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def seeds(path: Path, n: int = 24, with_output: bool = False) -> Path:
    rows = [{"id": f"s{i}", "instruction": f"Question number {i}?", **({"output": "4"} if with_output else {})}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def records(path: Path) -> list[tuple]:
    """The output without the model labels (an Anthropic run is compared with an online OpenAI one)."""
    return sorted(tuple(r.get(k) for k in IDENTITY) for r in read_jsonl(path))


def options(tmp_path: Path, out: str, base: str, **extra) -> EvolveOptions:
    return EvolveOptions(**{"data": str(tmp_path / "seeds.jsonl"), "out": str(tmp_path / out), "rounds": ROUNDS,
                            "evol_model": "openai/fake", "api_base": base, "track": False, **extra})


def batch_evolve(tmp_path: Path, fake, provider: str, out: str, **overrides):
    """``evolve --batch`` into ``out`` against ``fake`` (anthropic: with roles built for the fake)."""
    evol, answerer = anthropic_roles(fake.base) if provider == "anthropic" else (None, None)
    return evolve(options(tmp_path, out, fake.base, batch="all", **overrides), evol=evol, answerer=answerer,
                  observers=[])


def anthropic_roles(base: str):
    """Evol and answer roles on an Anthropic model whose batches go to the fake (built without the provider
    probe, which would call the Messages API online)."""
    import dspy

    from auto_evol.llm.client import Llm, RoleSettings

    def role(temperature, top_p, max_tokens):
        settings = RoleSettings("anthropic/claude-test", base, temperature, top_p, max_tokens)
        return Llm(settings, dspy.LM("anthropic/claude-test", api_base=base, api_key="test", cache=False),
                   structured=True)

    return role(0.0, None, 1024), role(1.0, 0.9, 2048)


def submitted_ids(fake) -> Counter:
    return Counter(cid for ids in fake.submitted for cid in ids)


def online_run(tmp_path: Path) -> Path:
    with FakeOpenAIBatch() as fake:
        result = evolve(options(tmp_path, "online.jsonl", fake.base), observers=[])
        assert fake.chat_calls and not fake.batches_created
    return result.out


# --- end to end -----------------------------------------------------------------------------------------

def test_openai_batches_give_the_records_of_an_online_run(tmp_path, capfd):
    seeds(tmp_path / "seeds.jsonl")
    online = online_run(tmp_path)
    capfd.readouterr()
    with FakeOpenAIBatch(polls_to_finish=2) as fake:
        result = evolve(options(tmp_path, "batch.jsonl", fake.base, batch="all"), observers=[])
        assert result.complete and fake.chat_calls == 0
        # One batch per wave: the seeds' answers, then per round the evolutions, the verdicts, the answers
        # (a wave can split where some of its requests were answered by an earlier identical request).
        assert 1 + 3 * ROUNDS <= fake.batches_created <= 1 + 4 * ROUNDS
        assert max(submitted_ids(fake).values()) == 1     # no request is ever submitted twice
        answers = [b for b in fake.bodies if b.get("top_p") == 0.9]
        assert answers and all(b["temperature"] == 1.0 and b["max_tokens"] == 2048 and b["model"] == "fake"
                               for b in answers)
        evolutions = [b for b in fake.bodies if _last_user(b["messages"]).startswith("You are")]
        # Greedy, and a retry of last round's failure at --retry-temperature: as online.
        assert {b["temperature"] for b in evolutions} == {0.0, 1.0}
        assert all(b["max_tokens"] == 1024 for b in evolutions)
        # Each batch's upload is deleted once its results are read (it only takes up file storage).
        uploads = {b.meta["input_file_id"] for b in fake.batches.values()}
        assert uploads and uploads <= set(fake.deleted_files)
    assert records(result.out) == records(online)
    assert result.calls["evol"]["calls"] > 0 and result.calls["evol"]["input_tokens"] > 0
    journal = read_jsonl(tmp_path / "batch.jsonl.work" / "batches.jsonl")
    intents = [row for row in journal if "custom_ids" in row]
    assert len(intents) == fake.batches_created
    assert {row["batch"] for row in journal if "batch" in row} == {row["done"] for row in journal if "done" in row}
    # Progress from the provider's counts, a line per change, each batch's last one whole.
    last = {}
    for line in capfd.readouterr().err.splitlines():
        if line.startswith("note: batch "):
            last[line.split()[2]] = line
    assert len(last) == fake.batches_created
    assert all(line.endswith("(completed)") and "done" in line for line in last.values())
    assert all(f" {n}/{n} done" in line for line, n in ((line, line.split("): ")[1].split("/")[0])
                                                        for line in last.values()))


def test_anthropic_batches_give_the_records_of_an_online_run(tmp_path):
    seeds(tmp_path / "seeds.jsonl")
    online = online_run(tmp_path)
    with FakeAnthropicBatch(polls_to_finish=2) as fake:
        evol, answerer = anthropic_roles(fake.base)
        result = evolve(options(tmp_path, "batch.jsonl", fake.base, batch="all"), evol=evol, answerer=answerer,
                        observers=[])
        assert result.complete and fake.batches_created >= 1 + 3 * ROUNDS
        assert max(submitted_ids(fake).values()) == 1
        assert all(b["model"] == "claude-test" and "seed" not in b for b in fake.bodies)
        assert fake.versions   # the real SDK spoke to it
    assert records(result.out) == records(online)
    assert {r["evol_model"] for r in read_jsonl(result.out) if r["round"]} == {"anthropic/claude-test"}


def test_batch_on_one_role_only_sends_the_other_online(tmp_path):
    seeds(tmp_path / "seeds.jsonl")
    online = online_run(tmp_path)
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        result = evolve(options(tmp_path, "mixed.jsonl", fake.base, batch="answer"), observers=[])
        assert result.complete and fake.chat_calls and fake.batches_created
        # Only answers went to batches (sampled at the answer role's settings); evolutions and verdicts online.
        assert all(b.get("top_p") == 0.9 and b["temperature"] == 1.0 for b in fake.bodies)
        chat = fake.chat_calls
    assert records(result.out) == records(online)
    assert result.calls["answer"]["calls"] == len(fake.bodies) and result.calls["evol"]["calls"] == chat


# --- kills ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("moment", ["after_id", "before_id"])
def test_a_run_killed_around_submitting_attaches_on_rerun_and_never_submits_twice(tmp_path, monkeypatch, provider,
                                                                                  moment):
    seeds(tmp_path / "seeds.jsonl", with_output=True)
    fake_cls = FakeOpenAIBatch if provider == "openai" else FakeAnthropicBatch
    with fake_cls(polls_to_finish=3) as fake:
        def go(out):
            return batch_evolve(tmp_path, fake, provider, out)

        # The second batch of round 1 (the verdicts): the evolutions' batch is done by then.
        restore = interrupt(monkeypatch, calls=2, journaled=moment == "after_id")
        with pytest.raises(KeyboardInterrupt):
            go("killed.jsonl")
        restore()
        assert fake.batches_created == 2
        journal = read_jsonl(tmp_path / "killed.jsonl.work" / "batches.jsonl")
        assert sum("batch" in row for row in journal) == (2 if moment == "after_id" else 1)
        result = go("killed.jsonl")
        assert result.complete
        assert max(submitted_ids(fake).values()) == 1     # the verdicts' batch was attached to, not sent again
        if moment == "before_id":
            recovered = [row for row in read_jsonl(tmp_path / "killed.jsonl.work" / "batches.jsonl")
                         if row.get("recovered")]
            assert len(recovered) == 1
        killed = records(result.out)
        whole = go("whole.jsonl")
    assert killed == records(whole.out)


def test_kill_9_mid_poll_then_a_rerun_attaches_and_finishes(tmp_path):
    seeds(tmp_path / "seeds.jsonl", with_output=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", OPENAI_API_KEY="unused-by-fake", **{batch_mod.POLL_ENV: "0.01"})
    with FakeOpenAIBatch(polls_to_finish=10**9) as fake:   # the first batch never ends while the run lives
        args = [sys.executable, "-m", "auto_evol", "evolve", "--data", "seeds.jsonl", "--rounds", str(ROUNDS),
                "--evol-model", "openai/fake", "--api-base", fake.base, "--no-track", "--quiet", "--batch",
                "--out", "killed.jsonl"]
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = tmp_path / "killed.jsonl.work" / "batches.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (fake.polls >= 5 and any("batch" in r for r in read_jsonl(journal))):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert fake.batches_created == 1
        fake.polls_to_finish = 2
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("killed.jsonl")
        assert max(submitted_ids(fake).values()) == 1
        whole = evolve(options(tmp_path, "whole.jsonl", fake.base), observers=[])
    assert records(tmp_path / "killed.jsonl") == records(whole.out)


# --- resubmission ------------------------------------------------------------------------------------------

class Where:
    """Custom ids (for a fake's ``expire`` or ``fail_ids``) whose request's prompt passes ``test``; each
    such id ``times`` times (None: every time). Looked up in the fake's own batches as it decides."""

    def __init__(self, fake, test, times: int | None = None) -> None:
        self.fake, self.test, self.times = fake, test, times
        self.hits: Counter = Counter()

    def __bool__(self) -> bool:
        return True

    def __contains__(self, custom_id: str) -> bool:
        for batch in reversed(list(self.fake.batches.values())):
            if custom_id in batch.custom_ids:
                body = batch.bodies[batch.custom_ids.index(custom_id)]
                if not self.test(_last_user(body.get("messages", []))):
                    return False
                self.hits[custom_id] += 1
                return self.times is None or self.hits[custom_id] <= self.times
        return False


def answer_of(number: int):
    """The seed's own answer request (round 0)."""
    return lambda prompt: prompt == f"Question number {number}?"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_and_failed_requests_are_resubmitted_then_rejected_and_a_rerun_retries(tmp_path, provider):
    seeds(tmp_path / "seeds.jsonl")
    fake_cls = FakeOpenAIBatch if provider == "openai" else FakeAnthropicBatch
    with fake_cls(polls_to_finish=1) as fake:
        def go(out):
            return batch_evolve(tmp_path, fake, provider, out, rounds=1)

        # Seed 1's answer expires once and seed 2's fails once: both answered on their second submission.
        # Seed 0's answer fails every time: after 3 submissions it is an llm_error reject.
        fake.expire = Where(fake, answer_of(1), times=1)
        fake.fail_ids = _Either(Where(fake, answer_of(2), times=1), Where(fake, answer_of(0)))
        result = go("out.jsonl")
        assert result.complete
        sent = submitted_ids(fake)
        assert sorted(sent.values(), reverse=True)[:3] == [3, 2, 2]
        rejects = {r["id"]: r["reason"] for r in read_jsonl(result.rejects)}
        assert rejects.get("s0#0") == "llm_error"
        out = {r["id"]: r for r in read_jsonl(result.out)}
        assert "s1#0" in out and "s2#0" in out and "s0#0" not in out
        # A rerun tries the llm_error item again (the provider is well now): nothing lost.
        fake.fail_ids, fake.expire = (), False
        again = go("out.jsonl")
        assert "s0#0" in {r["id"] for r in read_jsonl(again.out)}
        assert not any(r["reason"] == "llm_error" for r in read_jsonl(again.rejects))


class _Either:
    def __init__(self, *sets) -> None:
        self.sets = sets

    def __bool__(self) -> bool:
        return True

    def __contains__(self, custom_id: str) -> bool:
        return any(custom_id in s for s in self.sets)


def test_a_failed_openai_batch_is_resubmitted_and_its_items_rejected_after_the_bound(tmp_path):
    seeds(tmp_path / "seeds.jsonl", n=6, with_output=True)
    with FakeOpenAIBatch(polls_to_finish=1, fail_batch=True) as fake:
        result = evolve(options(tmp_path, "out.jsonl", fake.base, batch="all", rounds=1, max_error_rate=1.0),
                        observers=[])
        assert result.complete
        assert fake.batches_created == 3 and set(map(tuple, fake.submitted)) == {tuple(fake.submitted[0])}
        assert Counter(r["reason"] for r in read_jsonl(result.rejects)) == Counter({"llm_error": 6})
        fake.fail_batch = False
        again = evolve(options(tmp_path, "out.jsonl", fake.base, batch="all", rounds=1, max_error_rate=1.0),
                       observers=[])
    assert again.complete and not any(r["reason"] == "llm_error" for r in read_jsonl(again.rejects))


# --- refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--batch"], "--batch: embedded has no batch endpoint (OpenAI-compatible and Anthropic models do)"),
    (["--evol-model", "openai/x", "--api-base", "http://127.0.0.1:9/v1", "--answer-model", "gguf:/no/m.gguf",
      "--batch", "answer"], "--batch: gguf:/no/m.gguf has no batch endpoint"),
    (["--evol-model", "ollama_chat/llama3", "--batch", "evol"], "--batch: ollama_chat/llama3 has no batch endpoint"),
    (["--evol-model", "openai/x", "--batch", "judge"], "--batch takes no value (all roles) or one of all, evol, answer"),
    (["--evol-model", "openai/x", "--batch-size", "5"], "--batch-size is for --batch"),
])
def test_batch_where_no_batch_endpoint_is_one_line_and_exit_2(tmp_path, args, message):
    seeds(tmp_path / "seeds.jsonl", n=3)
    out = cli(["evolve", "--data", "seeds.jsonl", "--no-track", *args], tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "evolved.jsonl.work").exists()


def test_threads_asking_at_once_share_one_batch(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from auto_evol.llm.client import LLMError

    with FakeAnthropicBatch(polls_to_finish=1) as fake:
        fake.fail_ids = Where(fake, lambda p: p == "Question number 3?")    # fails every time: 3 batches
        answerer = anthropic_roles(fake.base)[1]
        # A quiet window of 1 s: eight threads started at once all ask within it, however busy the machine.
        role = batch_mod.BatchRole(answerer, batch_mod.BatchJournal(tmp_path / "b.jsonl"),
                                   batch_mod.BatchConfig.from_env(quiet=1.0), progress=None)

        def ask(i):
            try:
                return role.ask(f"Question number {i}?", rollout=i).text
            except LLMError as exc:
                return f"failed: {exc}"

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
    assert answers[3].startswith("failed: api_error") and answers[0] == "The answer is 4, found step by step."
    assert fake.batches_created == 3 and len(fake.submitted[0]) == 8 and fake.submitted[1:] == [fake.submitted[1]] * 2
    assert role.usage.calls == 8 and role.usage.errors == 1


# --- the journal --------------------------------------------------------------------------------------------

def test_the_journal_survives_a_torn_line_and_names_the_latest_batch_of_each_request(tmp_path):
    path = tmp_path / "batches.jsonl"
    journal = batch_mod.BatchJournal(path)
    journal.intend("k1", ["a", "b"], "openai", "openai/x")
    journal.submitted("B1", "k1")
    journal.intend("k2", ["b"], "openai", "openai/x")
    journal.submitted("B2", "k2")
    journal.intend("k3", ["c"], "openai", "openai/x")
    journal.close()
    with open(path, "a") as fh:
        fh.write('{"batch": "B3", "inte')        # a kill mid-write
    again = batch_mod.BatchJournal(path)
    assert (again.batch_of("a"), again.batch_of("b"), again.batch_of("c")) == ("B1", "B2", None)
    assert [i["intent"] for i in again.unresolved("openai", "openai/x")] == ["k3"]
    again.void("k3")
    again.close()
    assert batch_mod.BatchJournal(path).unresolved("openai", "openai/x") == []
    assert batch_mod.custom_id("openai", {"m": 1}, 5) == batch_mod.custom_id("openai", {"m": 1}, 5) != \
        batch_mod.custom_id("openai", {"m": 1}, 6)


# --- the batcher, request by request (regressions) ------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, status: int | None, message: str = "") -> None:
        super().__init__(message or f"HTTP {status}")
        self.status_code = status


class Double:
    """A provider whose batches are made in memory and end at their first poll, each request answered
    ``answer <custom id>``. Hooks: ``refuse(n)`` may raise before the n-th batch is made (nothing made),
    ``lose(n)`` after it was made (the reply lost); ``status(batch_id)``: whether it ended (or raise);
    ``find``: replaces the lookup by the intent's key (as OpenAI's metadata)."""

    name = "openai"
    limit = 100

    def __init__(self, *, refuse=None, lose=None, status=None, find=None) -> None:
        self.made: dict[str, list[str]] = {}
        self.by_intent: dict[str, str] = {}
        self.submits = self.finds = 0
        self.refuse, self.lose, self.status_hook, self.find_hook = refuse, lose, status, find

    async def submit(self, intent: str, requests) -> str:
        self.submits += 1
        if self.refuse:
            await self.refuse(self.submits)
        batch_id = f"b{self.submits}"
        self.made[batch_id] = [cid for cid, _ in requests]
        self.by_intent[intent] = batch_id
        if self.lose:
            await self.lose(self.submits)
        return batch_id

    async def status(self, batch_id: str):
        if batch_id not in self.made:
            raise HttpError(404, f"No batch found with id '{batch_id}'.")
        ended = await self.status_hook(batch_id) if self.status_hook else True
        return ended, batch_mod.Progress(batch_id, "completed" if ended else "in_progress", 0, 0, 1)

    async def results(self, batch_id: str):
        return {cid: batch_mod.Done(f"answer {cid}", 3, 4) for cid in self.made[batch_id]}

    async def find(self, intent: dict, known: set[str]):
        self.finds += 1
        if self.find_hook:
            return await self.find_hook(intent, known)
        return self.by_intent.get(intent["intent"])

    async def aclose(self) -> None:
        pass


FAST = batch_mod.BatchConfig(poll=0.01, poll_max=0.01, quiet=0.01, poll_errors=2)


def batcher(journal, provider, progress=None) -> batch_mod.Batcher:
    if not isinstance(journal, batch_mod.BatchJournal):
        journal = batch_mod.BatchJournal(journal)
    return batch_mod.Batcher(provider, journal, FAST, "openai/m", progress)


def ask(b: batch_mod.Batcher, custom_id: str):
    """One request, given 5 seconds: a hang fails the test instead of stalling it."""
    return asyncio.wait_for(b.request(custom_id, {"id": custom_id}), 5)


def earlier_run(path: Path, batch_id: str, custom_ids: list[str]) -> None:
    """The journal a killed earlier process left: ``batch_id`` submitted for ``custom_ids``."""
    journal = batch_mod.BatchJournal(path)
    journal.intend("k0", custom_ids, "openai", "openai/m")
    journal.submitted(batch_id, "k0")
    journal.close()


def test_a_role_sharing_the_journal_never_voids_the_intent_another_is_submitting(tmp_path):
    """evolve's evol and answer roles on one model share a journal: the answer role's first request must not
    take the evol role's intent (its batch being created) for an interrupted one and void it."""
    async def slowly(n):
        await asyncio.sleep(0.3)   # a slow upload: the intent is journaled, the batch id not yet

    journal = batch_mod.BatchJournal(tmp_path / "batches.jsonl")
    evol, answer = batcher(journal, Double(lose=slowly)), batcher(journal, Double())

    async def main():
        x = asyncio.ensure_future(ask(evol, "X"))
        await asyncio.sleep(0.1)
        y = await ask(answer, "Y")   # its first request: a recovery, while X's batch is being created
        return await x, y

    x, y = asyncio.run(main())
    assert (x.text, y.text) == ("answer X", "answer Y")
    assert not [row for row in read_jsonl(tmp_path / "batches.jsonl") if "void" in row]
    journal.close()


def test_a_batch_line_wins_over_a_void(tmp_path):
    path = tmp_path / "batches.jsonl"
    journal = batch_mod.BatchJournal(path)
    journal.intend("k1", ["a"], "openai", "openai/m")
    journal.void("k1")
    journal.submitted("B1", "k1")            # voided by a mistaken recovery, then its batch id came
    journal.intend("k2", ["b"], "openai", "openai/m")
    journal.submitted("B2", "k2")
    journal.void("k2")                       # a void after the batch is known changes nothing
    assert (journal.batch_of("a"), journal.batch_of("b")) == ("B1", "B2")
    journal.close()
    again = batch_mod.BatchJournal(path)
    assert (again.batch_of("a"), again.batch_of("b")) == ("B1", "B2")
    assert again.unresolved("openai", "openai/m") == []
    again.close()


def test_a_failed_poll_lets_a_later_request_poll_again(tmp_path):
    async def down(batch_id):
        raise RuntimeError("boom")

    b = batcher(tmp_path / "batches.jsonl", Double(status=down))

    async def main():
        for _ in range(3):   # submitted, then twice attached to: each fails, none hangs
            with pytest.raises(batch_mod.RequestFailed, match="could not be polled: boom"):
                await ask(b, "X")
        return dict(b._state.polling)

    assert asyncio.run(main()) == {}


@pytest.mark.parametrize("where", ["journal", "progress"])
def test_an_error_of_the_batcher_fails_its_calls_instead_of_leaving_them_waiting(tmp_path, where):
    journal = batch_mod.BatchJournal(tmp_path / "batches.jsonl")
    progress = None
    if where == "journal":
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        journal.intend = full
        error = OSError
    else:
        def progress(shown):
            raise ValueError("the progress display broke")

        error = ValueError
    b = batcher(journal, Double(), progress)

    async def main():
        return await asyncio.gather(ask(b, "X"), ask(b, "Y"), return_exceptions=True)

    assert [type(r) for r in asyncio.run(main())] == [error, error]
    journal.close()


def test_a_request_after_a_cancelled_one_gets_the_result_its_batch_brought(tmp_path):
    polls = Counter()

    async def three_polls(batch_id):
        polls[batch_id] += 1
        return polls[batch_id] > 3

    b = batcher(tmp_path / "batches.jsonl", Double(status=three_polls))

    async def main():
        first = asyncio.ensure_future(ask(b, "X"))
        await asyncio.sleep(0.03)   # submitted, being polled
        first.cancel()
        await asyncio.sleep(0.2)    # the batch ends meanwhile: its result is kept for a later request
        assert "X" in b._state.taken
        return await ask(b, "X")

    assert asyncio.run(main()).text == "answer X"


def test_one_process_per_batch_journal(tmp_path):
    path = tmp_path / "batches.jsonl"
    first = batch_mod.BatchJournal(path)
    assert not path.exists() and not first.lock_path.exists()   # nothing read or locked before its first use
    first.intend("k1", ["a"], "openai", "openai/m")
    second = batch_mod.BatchJournal(path)
    from auto_evol.core.errors import UserError

    with pytest.raises(UserError, match=rf"the batch journal {path} is in use by pid {os.getpid()} on "):
        second.batch_of("a")
    first.close()
    assert second.batch_of("a") is None and second.intents["k1"]["custom_ids"] == ["a"]   # read once it is free
    second.close()


def test_compare_refuses_a_batch_journal_another_run_holds(compare_project):
    from auto_evol.compare import CompareOptions, compare
    from auto_evol.core.errors import UserError

    holder = batch_mod.BatchJournal(compare_project / "batched" / "batches.jsonl").open()
    try:
        with FakeOpenAIBatch() as fake:
            with pytest.raises(UserError, match="batches.jsonl is in use by pid"):
                compare(CompareOptions(methods=["level0.md"], data="q.jsonl", rounds=1, dev_size=20,
                                       embeddings="tfidf", cache_dir=None, track=False, evol_model="openai/fake",
                                       api_base=fake.base, out="batched", batch="all"))
            assert fake.batches_created == 0 and fake.chat_calls == 0
    finally:
        holder.close()


def openai_role(base: str):
    import dspy

    from auto_evol.llm.client import Llm, RoleSettings

    settings = RoleSettings("openai/fake", base, 1.0, 0.9, 2048)
    return Llm(settings, dspy.LM("openai/fake", api_base=base, api_key="test", cache=False), structured=True)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_whose_reply_was_lost_is_looked_for_and_never_made_twice(tmp_path, provider):
    """The provider made the batch but its reply was lost (a 500, a timeout): neither the SDK (no retries on
    create) nor the Batcher (it looks for the batch first) submits it again."""
    fake_cls = FakeOpenAIBatch if provider == "openai" else FakeAnthropicBatch
    with fake_cls(polls_to_finish=1) as fake:
        fake.lost_creates = 1
        llm = openai_role(fake.base) if provider == "openai" else anthropic_roles(fake.base)[1]
        role = batch_mod.BatchRole(llm, batch_mod.BatchJournal(tmp_path / "b.jsonl"), progress=None)

        async def main():
            try:
                return await asyncio.wait_for(asyncio.gather(
                    *(role.aask(f"Question number {i}?", rollout=i) for i in range(3))), 30)
            finally:
                await role.aclose()

        answers = asyncio.run(main())
        role.close()
        assert fake.create_posts == 1 and fake.batches_created == 1
    assert all(a.text == "The answer is 4, found step by step." for a in answers)
    journal = read_jsonl(tmp_path / "b.jsonl")
    assert [row.get("recovered") for row in journal if "batch" in row] == [True]
    assert not [row for row in journal if "void" in row]


def test_a_clear_refusal_is_submitted_again_an_unclear_failure_looked_for_first(tmp_path):
    async def refused(n):
        if n == 1:
            raise HttpError(429, "Rate limit reached")

    async def lost(n):
        if n == 1:
            raise HttpError(None, "Request timed out.")

    refusing, losing = Double(refuse=refused), Double(lose=lost)

    async def main():
        return (await ask(batcher(tmp_path / "refused.jsonl", refusing), "X"),
                await ask(batcher(tmp_path / "lost.jsonl", losing), "X"))

    assert [r.text for r in asyncio.run(main())] == ["answer X", "answer X"]
    assert (refusing.submits, refusing.finds) == (2, 0)     # refused: nothing made, submitted again at once
    assert (losing.submits, losing.finds) == (1, 1)         # unclear: its batch found, not made again
    assert [row["void"] for row in read_jsonl(tmp_path / "refused.jsonl") if "void" in row] == \
        [read_jsonl(tmp_path / "refused.jsonl")[0]["intent"]]
    assert not [row for row in read_jsonl(tmp_path / "lost.jsonl") if "void" in row]


def test_an_unclear_failure_that_cannot_be_looked_up_is_left_to_a_rerun(tmp_path):
    async def lost(n):
        raise HttpError(502, "Bad gateway")

    async def unreachable(intent, known):
        raise HttpError(None, "Connection error.")

    provider = Double(lose=lost, find=unreachable)
    b = batcher(tmp_path / "batches.jsonl", provider)

    async def main():
        for _ in range(2):   # the second fails at once: submitting again could pay twice
            with pytest.raises(batch_mod.RequestFailed, match="a rerun looks for it"):
                await ask(b, "X")

    asyncio.run(main())
    assert provider.submits == 1
    b.journal.close()
    rerun = batcher(tmp_path / "batches.jsonl", Double())
    rerun.provider.by_intent, rerun.provider.made = provider.by_intent, provider.made   # the same provider
    assert asyncio.run(ask(rerun, "X")).text == "answer X" and rerun.provider.submits == 0
    rerun.journal.close()


def test_an_attached_batch_the_provider_no_longer_knows_is_submitted_again(tmp_path):
    earlier_run(tmp_path / "batches.jsonl", "gone", ["X"])   # another key, a restarted local server
    provider = Double()
    b = batcher(tmp_path / "batches.jsonl", provider)
    assert asyncio.run(ask(b, "X")).text == "answer X"
    assert provider.submits == 1
    b.journal.close()


def test_a_batch_an_earlier_process_paid_for_is_counted_once_by_the_process_that_reads_it(tmp_path):
    """Killed, the earlier process never reported it: its results are this process's paid calls (not cached);
    identical requests of this process share one result, counted once."""
    earlier_run(tmp_path / "batches.jsonl", "b0", ["X", "Y"])
    provider = Double()
    provider.made["b0"] = ["X", "Y"]
    b = batcher(tmp_path / "batches.jsonl", provider)

    async def main():
        x, y = await asyncio.gather(ask(b, "X"), ask(b, "Y"))
        again = await ask(b, "X")
        z1, z2 = await asyncio.gather(ask(b, "Z"), ask(b, "Z"))
        return x, y, again, z1, z2

    x, y, again, z1, z2 = asyncio.run(main())
    assert (x.cached, y.cached, again.cached) == (False, False, True)
    assert sorted([z1.cached, z2.cached]) == [False, True]
    assert provider.submits == 1   # Z only
    b.journal.close()


def test_restart_drops_the_batch_journal_before_it_is_read(tmp_path):
    seeds(tmp_path / "seeds.jsonl", n=6)
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        first = evolve(options(tmp_path, "out.jsonl", fake.base, batch="all", rounds=1), observers=[])
        created = fake.batches_created
        again = evolve(options(tmp_path, "out.jsonl", fake.base, batch="all", rounds=1, restart=True), observers=[])
        assert first.complete and again.complete
        assert fake.batches_created == 2 * created        # redone, not read from the dropped journal's batches
    journal = read_jsonl(tmp_path / "out.jsonl.work" / "batches.jsonl")
    assert sum("custom_ids" in row for row in journal) == created
    assert {row["batch"] for row in journal if "batch" in row} == {row["done"] for row in journal if "done" in row}
