"""The Ray path's pure parts (pipeline.py, trajectory.replay), without a cluster: an item's state
crosses stages as plain data and comes out with the record the single-process path writes."""
from __future__ import annotations

import asyncio
import json

import pytest

from auto_evol.cluster import pipeline
from auto_evol.core.errors import Outage, UserError
from auto_evol.llm.client import LLMError, Reply, RoleSettings
from auto_evol.algorithm.method import load
from auto_evol.algorithm.rounds import RoundPlan, round_item
from auto_evol.algorithm.trajectory import ANSWER, EVOL, Ask, arun_steps, replay
from conftest import scripted_llm
from fake_openai import evolve_world

METHODS = ((load("evol-instruct-reasoning"), 1.0),)


def _plan(round_: int = 1) -> RoundPlan:
    return RoundPlan(round_, METHODS, seed=3, judge=True, retry_temperature=1.0, evol_label="e", answer_label="a")


def _row(i: int, **extra) -> dict:
    return {"seed_id": f"s{i}", "instruction": f"Question number {i}?", "input": "", "output": "4", **extra}


def test_replaying_the_replies_gives_the_record_the_async_path_writes():
    evol, _ = scripted_llm(evolve_world)
    phase = pipeline.Phase(_plan())
    for i in range(14):   # evolve_world fails items by their number: kept and every rejection reason
        row = _row(i)
        expected = asyncio.run(arun_steps(round_item(row, _plan()), evol, evol))
        state, seen = {"row": row, "replies": []}, []
        while isinstance(got := pipeline._next(phase, state)[1], Ask):
            seen.append(got.role)
            state = json.loads(json.dumps(state))   # as a row crossing workers
            state["replies"].append(pipeline._entry(got.role, Reply(evolve_world(got.prompt)), 0.0))
        assert got == expected, i
        assert seen[0] == EVOL and len(seen) <= 3


def test_a_failed_call_replays_as_the_same_llm_error():
    steps = round_item(_row(1), _plan())
    got = replay(steps, [LLMError("timed out")])
    assert got["status"] == "rejected" and got["reason"] == "llm_error"


def test_start_keeps_the_phase_items_not_journaled_yet():
    lines = [json.dumps(_row(i, output="" if i % 2 else "4")) for i in range(6)]
    round_states = pipeline.start({"text": lines}, phase=pipeline.Phase(_plan()), done=frozenset({"s0"}))["state"]
    assert [json.loads(s)["row"]["seed_id"] for s in round_states] == ["s1", "s2", "s3", "s4", "s5"]
    seeds = pipeline.start({"text": lines}, phase=pipeline.Phase(), done=frozenset({"s1"}))["state"]
    assert [json.loads(s)["row"]["seed_id"] for s in seeds] == ["s3", "s5"]   # no answer yet, not done
    assert all(json.loads(s)["replies"] == [] for s in seeds)


def test_finish_refuses_an_item_whose_call_no_stage_made():
    state = json.dumps({"row": _row(1), "replies": []})
    with pytest.raises(RuntimeError, match="still needs a evol call"):
        pipeline.finish({"state": [state]}, phase=pipeline.Phase(_plan()))


def test_finish_gives_the_record_and_the_calls_usage_without_their_text():
    phase = pipeline.Phase()
    state = {"row": _row(2, output=""), "replies": [
        pipeline._entry(ANSWER, Reply("It is 4.", input_tokens=7, output_tokens=3), 0.25)]}
    out = pipeline.finish({"state": [json.dumps(state)]}, phase=phase)
    assert json.loads(out["record"][0]) == {"seed_id": "s2", "instruction": "Question number 2?", "input": "",
                                            "output": "It is 4."}
    assert json.loads(out["usage"][0]) == [{"role": "answer", "input_tokens": 7, "output_tokens": 3,
                                            "cached": False, "truncated": False, "seconds": 0.25}]


def test_the_vllm_stage_gets_the_call_as_chat_messages_and_sampling_params():
    settings = RoleSettings("vllm:Qwen/Qwen2.5-0.5B-Instruct", temperature=0.0, top_p=0.9, max_tokens=512)
    answers = RoleSettings("vllm:Qwen/Qwen2.5-0.5B-Instruct", temperature=1.0, max_tokens=2048)
    roles = {EVOL: settings, ANSWER: answers}   # one engine serves both roles of one model
    phase = pipeline.Phase(_plan())
    row = {"state": json.dumps({"row": _row(5, status="rejected"), "replies": []})}   # failed last round
    assert pipeline.needs(row, phase=phase, roles=(EVOL, ANSWER))
    assert not pipeline.needs(row, phase=phase, roles=(ANSWER,))
    sent = pipeline.to_engine(row, phase=phase, settings=roles)
    ask = pipeline._next(phase, json.loads(row["state"]))[1]
    assert sent["messages"] == [{"role": "user", "content": ask.prompt}]
    assert "Question number 5?" in ask.prompt
    assert sent["sampling_params"] == {"temperature": 1.0, "max_tokens": 512, "top_p": 0.9, "seed": ask.rollout}
    assert ask.rollout is not None
    back = pipeline.from_engine({**sent, "generated_text": "#Finally Rewritten Instruction#: Question number 5, "
                                 "with a twist?", "num_input_tokens": 40, "num_generated_tokens": 9}, phase=phase)
    back = pipeline.settle({**back, "__inference_error__": ""}, phase=phase)   # as a processor's success row
    state = json.loads(back["state"])
    assert state["replies"][0]["input_tokens"] == 40 and state["replies"][0]["role"] == EVOL
    nxt = pipeline._next(phase, state)[1]
    assert isinstance(nxt, Ask) and nxt.prompt.startswith("Compare two instructions")   # the judge, next
    # A request that failed in the engine skips the postprocess (Ray's processor): settle marks it failed.
    failed = pipeline.settle({**sent, "__inference_error__": "ValueError: prompt too long\ntraceback"}, phase=phase)
    assert set(failed) == {"state"}
    record = pipeline._next(phase, json.loads(failed["state"]))[1]
    assert record["status"] == "rejected" and record["reason"] == "llm_error"
    assert json.loads(failed["state"])["replies"][0]["error"] == "ValueError: prompt too long"
    # the answer call goes to the same engine, with the answer role's sampling
    answered = {"state": json.dumps({**state, "replies": state["replies"] + [
        pipeline._entry(EVOL, Reply("Not Equal"), 0.0)]})}
    judged = pipeline.to_engine(answered, phase=phase, settings=roles)["sampling_params"]
    # the answer call goes to the same engine with the answer role's sampling, every key present
    assert judged == {"temperature": 1.0, "max_tokens": 2048, "top_p": 1.0, "seed": judged["seed"]}


def test_a_gpu_count_covers_every_engine_of_a_stage():
    vllm, http = RoleSettings("vllm:m"), RoleSettings("openai/m", "http://h/v1")
    opts = pipeline.RayOptions(tensor_parallel=2, replicas=3)
    assert pipeline.engines_gpus([(vllm, "--evol-model"), (http, "--answer-model")], opts) == 6
    assert pipeline.engines_gpus([(http, "--evol-model")], opts) == 0


def test_the_vllm_engine_config_carries_the_model_and_the_cluster_flags():
    pytest.importorskip("ray.data.llm")
    config = pipeline.engine_config(RoleSettings("vllm:Qwen/Qwen2.5-7B-Instruct"),
                                    pipeline.RayOptions(tensor_parallel=2, replicas=3), batch_size=32)
    assert config.model_source == "Qwen/Qwen2.5-7B-Instruct"
    assert config.engine_kwargs["tensor_parallel_size"] == 2
    assert config.concurrency == 3 and config.batch_size == 32 and config.should_continue_on_error


def test_a_worker_outage_reaches_the_driver_as_itself():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray::MapWorker(...) failed")
            self.cause = cause

    try:
        try:
            raise Wrapped(Outage("openai/fake: 20 of the last 20 calls failed"))
        except Wrapped as inner:
            raise RuntimeError("dataset failed") from inner
    except RuntimeError as exc:
        found = pipeline._cause(exc)
    assert isinstance(found, Outage) and str(found).startswith("openai/fake: 20 of")
    plain = ValueError("x")
    assert pipeline._cause(plain) is plain
    assert isinstance(pipeline._cause(RuntimeError("y").with_traceback(None)), RuntimeError)
    assert isinstance(pipeline._cause(Wrapped(UserError("bad key"))), UserError)


def test_a_role_a_worker_cannot_build_is_raised_as_itself_from_its_first_batch(tmp_path):
    # (from the constructor Ray would hand the driver a dead actor with the message only)
    missing = RoleSettings(f"gguf:{tmp_path / 'no-such.gguf'}")
    asker = pipeline.Asker(pipeline.Phase(_plan()), {EVOL: (missing, "--evol-model")}, cache_dir=None,
                           concurrency=4, max_error_rate=0.5)
    with pytest.raises(UserError, match="no-such.gguf"):
        asyncio.run(asker({"state": [json.dumps({"row": _row(1), "replies": []})]}))


def test_workers_get_absolute_paths():
    relative = RoleSettings("gguf:models/x.gguf")
    assert pipeline.absolute(relative).model.startswith("gguf:/")
    assert pipeline.absolute(RoleSettings("openai/x")).model == "openai/x"
    assert pipeline.absolute_dir("cache").startswith("/") and pipeline.absolute_dir(None) is None
