"""The optimize loop end to end with a scripted LM behind DSPy, and a real MLflow store on disk."""
from __future__ import annotations

import collections

import json
import re
import threading

import pytest

from auto_evol.algorithm import method
from auto_evol import optimize
from auto_evol.core.errors import UserError
from auto_evol.algorithm.failure import Failure
from auto_evol.core.observer import Observer, Observers
from conftest import scripted_llm
from fake_openai import world

INIT = "Rewrite (level 0) this: {instruction}\n"


class World:
    """A scripted evol + optimizer pair whose methods have known failure rates.

    The evol LLM is fake_openai.world: a method's level L is written in its text, and question i fails
    to evolve well when i % 4 > L (even i: an unreadable reply; odd i: a rewrite answered with a
    question back). The k-th optimization call writes level+1 when k is odd, nothing readable when even.
    """

    def __init__(self, improve: bool = True) -> None:
        self.improve = improve
        self.optimizations = 0
        self.lock = threading.Lock()

    @staticmethod
    def level(text: str) -> int:
        return int(re.search(r"level (\d+)", text).group(1))

    def evol(self, prompt: str) -> str:
        return world(prompt)

    def optimizer(self, prompt: str) -> str:
        if prompt.startswith("You are reviewing"):
            return "Case 1 failed: no usable rewrite."
        assert prompt.startswith("You improve")
        with self.lock:
            self.optimizations += 1
            k = self.optimizations
        if not self.improve or k % 2 == 0:
            return "I am not sure how to improve it."
        level = self.level(prompt.split("=== End of current method ===")[0])
        return f"Some thoughts first.\n\nOptimized Method:\nRewrite (level {level + 1}) this: {{instruction}}\n"


@pytest.fixture
def dataset(workdir):
    path = workdir / "questions.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(40)))
    (workdir / "init.md").write_text(INIT)
    return path


def run(dataset, world, **options):
    evol, evol_engine = scripted_llm(world.evol, name="evol")
    opt, _ = scripted_llm(world.optimizer, temperature=0.6, name="optimizer")
    settings = dict(data=str(dataset), init_method="init.md", steps=3, candidates=2, batch_size=3, dev_size=8,
                    seed=1, concurrency=1, methods_dir="methods", cache_dir=None)
    settings.update(options)
    return optimize(evol=evol, optimizer=opt, **settings), evol_engine


def expected_rate(result, level):
    ids = [int(r.item.id) for r in result.initial.results]
    return sum(i % 4 > level for i in ids) / len(ids)


def test_each_step_accepts_the_better_candidate_and_e_star_is_saved_and_recorded(dataset):
    result, _ = run(dataset, World())
    assert [World.level(r.candidates[r.accepted].method.text) for r in result.history] == [1, 2, 3]
    assert result.rates == [expected_rate(result, level) for level in range(4)]
    assert result.rates[0] > result.rates[-1]
    for record in result.history:
        assert [c.readable for c in record.candidates] == [True, False]
        # The unreadable candidate kept the incumbent's text: not judged again, the incumbent's rate.
        assert record.candidates[1].evaluation is None and record.rates[1] == record.incumbent_rate
        # Calls per phase: batch x rounds, m, m, and at most m x |D| x 2.
        assert record.calls["trajectory"] == 3 and record.calls["analysis"] == 2
        assert record.calls["optimization"] == 2 and record.calls["dev evaluation"] <= 8 * 2
    # e0's failures are typed.
    counts = result.initial.counts()
    assert set(counts) <= {Failure.UNREADABLE_EVOLUTION.value, Failure.INSUFFICIENT_QUALIFICATION.value}
    assert sum(counts.values()) == result.initial.failures

    saved = method.load(result.method_path)
    assert saved.text == "Rewrite (level 3) this: {instruction}\n"
    assert saved.name.startswith("questions-") and saved.extra["lineage"].startswith("init -> step1-c1")

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dataset.parent / 'mlruns' / 'mlflow.db'}")
    run_info = client.get_run(result.run_id)
    assert run_info.data.params["candidates"] == "2" and run_info.info.status == "FINISHED"
    assert result.calls == sum(u["calls"] for u in result.usage.values()) > 0
    assert run_info.data.metrics["paper_budget_share"] == pytest.approx(result.calls / 6120)
    history = client.get_metric_history(result.run_id, "failure_rate")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == result.rates
    artifact = client.download_artifacts(result.run_id, f"e_star/{saved.name}.md", str(dataset.parent))
    assert "level 3" in open(artifact).read()


def test_no_improvement_stops_on_patience_and_e_star_is_the_initial_text(dataset):
    result, _ = run(dataset, World(improve=False), patience=1, track=False)
    assert len(result.history) == 1 and result.history[0].accepted is None
    assert all(not c.readable for c in result.history[0].candidates)
    assert result.best.text == INIT and result.rates == [result.rates[0]] * 2


def test_concurrent_run_reaches_the_same_e_star(dataset):
    serial, _ = run(dataset, World(), track=False, name="serial")
    parallel, _ = run(dataset, World(), track=False, concurrency=8, name="parallel")
    assert parallel.best.text == serial.best.text and parallel.rates == serial.rates


def test_rounds_make_longer_trajectories(dataset):
    result, _ = run(dataset, World(), track=False, rounds=2, steps=1)
    assert result.history[0].calls["trajectory"] >= 3


def test_a_failing_call_fails_its_item_not_the_run(dataset):
    from dspy import lm15

    world = World()
    plain = world.evol

    def flaky(prompt):  # every answer to a well evolved instruction fails at the server
        if "twist" in prompt and not prompt.startswith("Rewrite"):
            raise lm15.ServerError("boom")
        return plain(prompt)

    world.evol = flaky
    result, _ = run(dataset, world, track=False, steps=1)
    evolved = [r for r in result.initial.results if r.evolved is not None and "twist" in r.evolved]
    assert evolved and all(r.failure is Failure.LLM_ERROR for r in evolved)
    assert result.initial.rate == 1.0 and len(result.history) == 1


def test_a_bad_key_stops_the_run_with_a_clear_error(dataset):
    from dspy import lm15

    def denied(prompt):
        raise lm15.AuthError("invalid api key")

    evol, _ = scripted_llm(denied, name="denied")
    opt, _ = scripted_llm(World().optimizer, name="o")
    with pytest.raises(UserError, match="invalid api key"):
        optimize(evol=evol, optimizer=opt, data=str(dataset), init_method="init.md", dev_size=8, batch_size=3,
                 steps=1, candidates=1, track=False, cache_dir=None)
    assert not (dataset.parent / "methods").exists()


class RangeWorld(World):
    """The k-th optimization call writes level + (k - 1) % 5: five candidates, four of them new."""

    def optimizer(self, prompt: str) -> str:
        if prompt.startswith("You are reviewing"):
            return "Case 1 failed."
        with self.lock:
            self.optimizations += 1
            k = self.optimizations
        level = self.level(prompt.split("=== End of current method ===")[0])
        return f"Optimized Method:\nRewrite (level {level + (k - 1) % 5}) this: {{instruction}}\n"


def test_halving_and_racing_reach_the_full_evaluations_best_rate_with_fewer_dev_calls(workdir):
    path = workdir / "many.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(120)))
    (workdir / "init.md").write_text(INIT)
    results = {}
    for how in ("full", "halving", "race"):
        evol, _ = scripted_llm(world, name=f"evol-{how}")
        opt, _ = scripted_llm(RangeWorld().optimizer, temperature=0.6, name=f"opt-{how}")
        results[how] = optimize(evol=evol, optimizer=opt, data=str(path), init_method="init.md", steps=1,
                                candidates=5, batch_size=3, dev_size=48, seed=2, concurrency=1, track=False,
                                cache_dir=None, selection=how, name=how)
    full, halving = results["full"].history[0], results["halving"].history[0]
    assert halving.calls["dev evaluation"] < 0.75 * full.calls["dev evaluation"]
    assert halving.accepted is not None and halving.rates[halving.accepted] == min(full.rates)
    assert len(halving.candidates[halving.accepted].evaluation.results) == 48
    assert any(c.evaluation is not None and len(c.evaluation.results) < 48 for c in halving.candidates)
    raced = results["race"].history[0]
    assert raced.calls["dev evaluation"] < 0.75 * full.calls["dev evaluation"]
    assert raced.accepted is not None and raced.rates[raced.accepted] == min(full.rates)
    assert len(raced.candidates[raced.accepted].evaluation.results) == 48


def test_paired_acceptance_needs_enough_dev_items(dataset):
    with pytest.raises(UserError, match="--accept paired needs --dev-size of at least 10"):
        run(dataset, World(), accept="paired", dev_size=8, track=False)


class Recorder(Observer):
    """Keeps the events it hears, in order; ``fail_on``: the event at which it raises."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_on = fail_on

    def _hear(self, *event) -> None:
        self.events.append(event)
        if event[0] == self.fail_on:
            raise RuntimeError(f"the recorder fails at {self.fail_on}")

    def start(self, options, **context):
        self._hear("start", sorted(context))

    def phase(self, name, total, done=0):
        self._hear("phase", name, total)

    def advance(self, name):
        self._hear("advance", name)

    def baseline(self, evaluation):
        self._hear("baseline", evaluation.rate)

    def step(self, record):
        self._hear("step", record.step)

    def checkpoint(self, state):
        self._hear("checkpoint", len(state["rates"]))

    def finish(self, result):
        self._hear("finish", result.rates[-1])

    def close(self, error):
        self._hear("close", type(error).__name__ if error else None)


def test_every_event_reaches_each_observer_in_order_and_nothing_else_records(dataset):
    first, second = Recorder(), Recorder()
    result, _ = run(dataset, World(), track=False, steps=2, observers=[first, second])
    assert first.events == second.events
    kinds = [e[0] for e in first.events if e[0] not in ("phase", "advance")]
    assert kinds == ["start", "baseline", "checkpoint", "step", "checkpoint", "step", "checkpoint", "checkpoint",
                     "finish", "close"]
    assert first.events[0] == ("start", ["calls", "init", "next_step", "split"])
    assert first.events[-1] == ("close", None) and first.events[-2] == ("finish", result.rates[-1])
    # Progress bars per step, e0's beside step 1's; a bar announced again (more dev pairs asked) keeps its
    # name, and every task advances the bar it was counted in, as many times as its last total says.
    phases = list(dict.fromkeys(e[1] for e in first.events if e[0] == "phase"))
    assert phases[:4] == ["e0 on the dev set", "step 1: trajectory", "step 1: candidates", "step 1: dev evaluation"]
    totals = {e[1]: e[2] for e in first.events if e[0] == "phase"}
    assert collections.Counter(e[1] for e in first.events if e[0] == "advance") == totals
    # Tracking is an observer too: with none given and tracking off, no store is made.
    assert not (dataset.parent / "mlruns").exists() and result.run_id is None


def test_a_failing_observer_fails_the_run_and_every_observer_hears_close(dataset):
    import mlflow

    from auto_evol.tracking.loggers import OptimizeLogger

    recorder, logger, after = Recorder(fail_on="step"), OptimizeLogger(), Recorder()
    with pytest.raises(RuntimeError, match="fails at step"):
        run(dataset, World(), steps=2, observers=[recorder, logger, after])
    assert recorder.events[-1] == ("close", "RuntimeError") and after.events[-1] == ("close", "RuntimeError")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dataset.parent / 'mlruns' / 'mlflow.db'}")
    assert client.get_run(logger.run_id).info.status == "FAILED"


def test_observers_close_all_even_when_one_fails_to():
    class Broken(Observer):
        def close(self, error):
            raise OSError("cannot close")

    closed = Recorder()
    heard = Observers([Broken(), None, closed])
    with pytest.raises(OSError):
        heard.close(None)
    assert closed.events == [("close", None)]
    # After a failed run, the run's own error is the one that counts: a close failure is not raised over it.
    heard.close(KeyError("x"))
    assert closed.events[-1] == ("close", "KeyError")


def test_observers_given_without_a_logger_still_record_the_run(dataset):
    """The MLflow logger is what --resume reads back: a list without one gets it added."""
    heard = Recorder()
    result, _ = run(dataset, World(), steps=1, observers=[heard])
    assert result.run_id is not None and heard.events[-1] == ("close", None)
