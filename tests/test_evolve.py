"""`auto-evol evolve`: rounds, elimination, provenance, formats, bad lines, and nothing lost."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from auto_evol.storage import output
from auto_evol.core.errors import UserError
from auto_evol.evolve import EvolveOptions, evolve
from auto_evol.algorithm.method import CLASSIC_OPERATORS, pick
from auto_evol.tracking.registry import resolve_methods
from conftest import scripted_llm
from fake_openai import FakeOpenAI, evolve_world

EXPECTED_REASONS = {"unreadable_evolution", "unchanged", "copies_prompt_words", "no_information_gain",
                    "sorry_short_answer"}


def seeds(path: Path, n: int, with_output: bool = False) -> Path:
    rows = [{"id": f"s{i}", "instruction": f"Question number {i}?", **({"output": "4"} if with_output else {})}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run(tmp_path, n=30, rounds=2, observers=None, **extra):
    data = seeds(tmp_path / "seeds.jsonl", n)
    model, engine = scripted_llm(evolve_world, name="evolve-world")
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=rounds, cache_dir=None,
                            track=False, concurrency=8, **extra)
    return evolve(options, evol=model, answerer=model, observers=observers), engine


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rounds_eliminate_and_retry_failures_and_every_record_keeps_its_provenance(tmp_path):
    result, _ = run(tmp_path)
    assert result.complete
    records = read_jsonl(result.out)
    kept = [s.kept for s in result.rounds]
    assert len(records) == result.records == 30 + sum(kept)
    assert len({r["id"] for r in records}) == len(records)
    assert Counter(r["round"] for r in records) == Counter({0: 30, 1: kept[0], 2: kept[1]})
    for r in records:
        assert r["output"] and r["instruction"]
        if r["round"]:
            assert r["method"] in CLASSIC_OPERATORS and len(r["method_hash"]) == 12
            assert r["parent_instruction"] and r["evol_model"] == "test/evolve-world"
    rejects = read_jsonl(result.rejects)
    reasons = Counter(r["reason"] for r in rejects)
    assert set(reasons) == EXPECTED_REASONS
    assert sum(sum(s.eliminated.values()) for s in result.rounds) == len(rejects)
    # A failed instruction goes back unchanged: round 2 starts again from the seed for question 3.
    round2 = {r["seed_id"]: r for r in read_jsonl(tmp_path / "out.jsonl.work" / "round2.jsonl")}
    assert round2["s3"]["parent_instruction"] == "Question number 3?"
    # ...and a kept one is evolved further.
    assert round2["s1"]["parent_instruction"] == "Question number 1? Also explain each step."
    assert round2["s1"]["instruction"].count("Also explain each step.") == 2
    assert result.rounds[0].to_dict()["mean_words_after"] > result.rounds[0].to_dict()["mean_words_before"]


def test_method_choice_is_uniform_seeded_and_weighted():
    methods = resolve_methods(["evol-instruct"])
    assert [m.name for m, _ in methods] == list(CLASSIC_OPERATORS)
    picks = Counter(pick(methods, 0, f"s{i}", 1).name for i in range(3000))
    assert set(picks) == set(CLASSIC_OPERATORS) and min(picks.values()) > 400
    assert pick(methods, 0, "s1", 1) == pick(methods, 0, "s1", 1)
    weighted = resolve_methods(["e0=3", "weak=1"])
    share = Counter(pick(weighted, 1, f"s{i}", 1).name for i in range(2000))["e0"] / 2000
    assert 0.7 < share < 0.8
    with pytest.raises(UserError, match="unknown method"):
        resolve_methods(["nope"])


def test_sample_is_a_seeded_shuffle(tmp_path):
    records = [{"id": f"r{i}", "instruction": f"q{i}", "output": "a"} for i in range(10_000)]
    first = list(output.shuffled(iter(records), seed=1, count=len(records), workdir=tmp_path))
    again = list(output.shuffled(iter(records), seed=1, count=len(records), workdir=tmp_path))
    other = list(output.shuffled(iter(records), seed=2, count=len(records), workdir=tmp_path))
    assert first == again and first != other and sorted(r["id"] for r in first) == sorted(r["id"] for r in records)
    assert [r["id"] for r in first[:5]] != [r["id"] for r in records[:5]]


@pytest.mark.parametrize("fmt", output.FORMATS)
def test_every_output_format_reads_back(tmp_path, fmt):
    records = [{"id": f"s{i}#1", "seed_id": f"s{i}", "round": 1, "instruction": f"Do {i}", "input": "x" if i else "",
                "output": f"done {i}", "method": "m", "method_hash": "h", "parent_instruction": "p",
                "evol_model": "e", "answer_model": "a"} for i in range(3)]
    path = tmp_path / {"parquet": "out.parquet", "hf": "out_hf"}.get(fmt, "out.json")
    assert output.write(iter(records), path, fmt) == 3
    if fmt == "hf":   # a folder of Parquet shards (its README.md card is evolve's: tests/test_finishing.py)
        rows = pd.read_parquet(path / "data").to_dict("records")
        assert rows[1]["instruction"] == "Do 1" and rows[1]["round"] == 1
        assert [p.name for p in path.iterdir()] == ["data"]
    elif fmt == "parquet":
        rows = pd.read_parquet(path).to_dict("records")
        assert rows[1]["instruction"] == "Do 1" and rows[1]["seed_id"] == "s1" and rows[1]["round"] == 1
    elif fmt == "alpaca":
        rows = json.loads(path.read_text())
        assert rows[0] == {"instruction": "Do 0", "input": "", "output": "done 0", "provenance": rows[0]["provenance"]}
        assert rows[0]["provenance"]["method_hash"] == "h"
    else:
        rows = read_jsonl(path)
        if fmt == "jsonl":
            assert rows[2]["output"] == "done 2" and rows[2]["parent_instruction"] == "p"
        elif fmt == "sharegpt":
            assert rows[1]["conversations"][0] == {"from": "human", "value": "Do 1\n\nx"}
            assert rows[1]["conversations"][1]["value"] == "done 1"
        else:
            assert set(rows[0]) == {"messages"} and rows[0]["messages"][1]["content"] == "done 0"
            side = read_jsonl(path.with_name("out.provenance.jsonl"))
            assert side[1]["line"] == 2 and side[1]["seed_id"] == "s1"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_lines_are_skipped_with_file_line_and_reason_or_fail_the_run(tmp_path):
    data = tmp_path / "bad.jsonl"
    lines = [json.dumps({"id": "a", "prompt": "Question number 1?"}).encode(),
             b'{"id": "b", "prompt": oops}',
             json.dumps({"id": "c", "prompt": "  "}).encode(),
             b'{"id": "d", "prompt": "caf\xe9 number 2?"}',
             json.dumps({"id": "e", "prompt": "Question number 9? " * 3000}).encode(),
             json.dumps({"id": "a", "prompt": "Question number 8?"}).encode(),
             json.dumps({"id": "f", "title": "no prompt here"}).encode(),
             json.dumps({"id": "g", "prompt": "Question number 10?"}).encode()]
    data.write_bytes(b"\n".join(lines) + b"\n")
    model, _ = scripted_llm(evolve_world, name="bad-lines")
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=1, cache_dir=None, track=False)
    result = evolve(options, evol=model, answerer=model)
    where = {b.where.rsplit(":", 1)[1]: b.reason for b in result.bad_lines}
    assert set(where) == {"2", "3", "4", "5", "6", "7"}
    assert "not valid JSON" in where["2"] and "empty instruction" in where["3"] and "not UTF-8" in where["4"]
    assert "max-instruction-chars" in where["5"] and "duplicate id 'a'" in where["6"] and "missing column" in where["7"]
    assert {r["seed_id"] for r in read_jsonl(result.out) if r["round"] == 0} == {"a", "g"}

    failing = EvolveOptions(data=str(data), out=str(tmp_path / "strict.jsonl"), rounds=1, cache_dir=None,
                            track=False, on_bad_line="fail")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        evolve(failing, evol=model, answerer=model)
    assert not (tmp_path / "strict.jsonl").exists()


def test_max_calls_stops_and_a_rerun_finishes_with_nothing_lost_or_doubled(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full, _ = run(tmp_path / "a")
    part_dir = tmp_path / "b"
    stopped, _ = run(part_dir, max_calls=25)
    assert not stopped.complete and not stopped.out.exists()
    finished, engine = run(part_dir)
    assert finished.complete and len(engine.prompts) < 30 + 30 * 2 * 3
    a = sorted((r["id"], r["instruction"]) for r in read_jsonl(full.out))
    b = sorted((r["id"], r["instruction"]) for r in read_jsonl(finished.out))
    assert a == b


def test_a_rerun_with_other_settings_is_refused_unless_restarted(tmp_path):
    run(tmp_path, rounds=1)
    with pytest.raises(UserError, match="holds a run with other settings"):
        run(tmp_path, rounds=2)
    result, _ = run(tmp_path, rounds=2, restart=True)
    assert result.complete and len(result.rounds) == 2


def test_dry_run_counts_calls_and_does_nothing(tmp_path):
    data = seeds(tmp_path / "seeds.jsonl", 12)
    estimate = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "o.jsonl"), rounds=4), dry_run=True)
    assert estimate["items"] == 12 and estimate["calls"] == 12 + 12 * 4 * 3
    assert estimate["prompt_tokens_estimate"] > 0 and not (tmp_path / "o.jsonl.work").exists()


def cli(args, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", OPENAI_API_KEY="unused-by-fake")
    return subprocess.Popen([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 160)
    rng = random.Random(7)
    work = tmp_path / "killed.jsonl.work"
    with FakeOpenAI(latency=0.04) as fake:
        args = ["evolve", "--data", "seeds.jsonl", "--rounds", "2", "--evol-model", "openai/fake", "--api-base",
                fake.base, "--concurrency", "16", "--no-track", "--quiet"]
        def journaled() -> int:
            return sum(len(p.read_bytes().splitlines()) for p in work.glob("round*.jsonl"))

        mid_work_kills = 0
        for _ in range(4):
            # Kill once a random number of further results has been journaled: always mid-work.
            target = journaled() + rng.randint(10, 120)
            proc = cli(args + ["--out", "killed.jsonl", "--cache-dir", str(tmp_path / "cache-a")], tmp_path)
            deadline = time.time() + 120
            while proc.poll() is None and journaled() < target and time.time() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                mid_work_kills += 1
        proc = cli(args + ["--out", "killed.jsonl", "--cache-dir", str(tmp_path / "cache-a")], tmp_path)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        whole = cli(args + ["--out", "whole.jsonl", "--cache-dir", str(tmp_path / "cache-b")], tmp_path)
        out, err = whole.communicate(timeout=600)
        assert whole.returncode == 0, err
    assert mid_work_kills >= 2
    killed = read_jsonl(tmp_path / "killed.jsonl")
    ids = [r["id"] for r in killed]
    assert len(ids) == len(set(ids))
    assert sorted((r["id"], r["instruction"]) for r in killed) == \
        sorted((r["id"], r["instruction"]) for r in read_jsonl(tmp_path / "whole.jsonl"))


def test_failed_or_malformed_replies_fail_their_item_and_nothing_is_lost(tmp_path):
    from dspy import lm15

    def flaky(prompt):
        if "number 8?" in prompt:
            raise lm15.ProviderError("the server's reply is not a chat completion")
        return evolve_world(prompt)

    data = seeds(tmp_path / "seeds.jsonl", 20)
    model, _ = scripted_llm(flaky, name="flaky")
    result = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=1, cache_dir=None,
                                  track=False), evol=model, answerer=model)
    out, rejects = read_jsonl(result.out), read_jsonl(result.rejects)
    assert {r["id"]: r["reason"] for r in rejects if r["seed_id"] == "s8"} == {"s8#0": "llm_error",
                                                                              "s8#1": "llm_error"}
    round1 = {r["seed_id"] for r in out if r["round"] == 1} | {r["seed_id"] for r in rejects if r["round"] == 1}
    assert round1 == {f"s{i}" for i in range(20)}
    assert "s8" not in {r["seed_id"] for r in out}


def test_the_stats_go_to_mlflow(workdir):
    import mlflow

    data = seeds(workdir / "seeds.jsonl", 12)
    model, _ = scripted_llm(evolve_world, name="tracked")
    result = evolve(EvolveOptions(data=str(data), out=str(workdir / "out.jsonl"), rounds=2, cache_dir=None),
                    evol=model, answerer=model)
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["auto_evol.kind"] == "evolve" and run.data.metrics["records"] == result.records
    kept = sorted(client.get_metric_history(result.run_id, "kept"), key=lambda m: m.step)
    assert [m.value for m in kept] == [s.kept for s in result.rounds]
    assert "stats.json" in {a.path for a in client.list_artifacts(result.run_id)}


def test_a_hugging_face_dataset_is_streamed_in_through_the_datasets_library(tmp_path, monkeypatch):
    """``hf:NAME[:SPLIT]`` goes through datasets.load_dataset (streaming). No network here: the name
    resolves to a dataset folder in the working directory, which load_dataset reads the way it reads
    a downloaded hub repository; offline mode makes an unknown name fail fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "acme" / "seeds"
    repo.mkdir(parents=True)
    seeds(repo / "train.jsonl", 12, with_output=True)
    (repo / "test.jsonl").write_text(json.dumps({"id": "t0", "instruction": "Question number 40?"}) + "\n")
    model, _ = scripted_llm(evolve_world, name="hub")

    def run_on(spec: str, out: str):
        options = EvolveOptions(data=spec, out=str(tmp_path / out), rounds=1, cache_dir=None, track=False)
        return evolve(options, evol=model, answerer=model)

    result = run_on("hf:acme/seeds", "train.jsonl")
    round0 = [r for r in read_jsonl(result.out) if r["round"] == 0]
    assert sorted(r["seed_id"] for r in round0) == sorted(f"s{i}" for i in range(12))
    assert all(r["output"] == "4" for r in round0)
    result = run_on("hf:acme/seeds:test", "test.jsonl")
    assert {r["seed_id"] for r in read_jsonl(result.out)} == {"t0"}
    for spec, message in [("hf:acme/nothere", r"hf:acme/nothere: could not read this Hugging Face dataset"),
                          ("hf:acme/seeds:validation", r"could not read .*validation"),
                          ("hf:a:b:c:d", r"write a Hugging Face dataset as hf:NAME")]:
        with pytest.raises(UserError, match=message):
            run_on(spec, "bad.jsonl")


def test_evolve_tells_its_observers_each_phase_and_the_result(tmp_path):
    from auto_evol.core.observer import Observer

    class Recorder(Observer):
        def __init__(self):
            self.events = []

        def start(self, options, **context):
            self.events.append(("start", context["seeds"], [m.name for m, _ in context["methods"]]))

        def phase(self, name, total, done=0):
            self.events.append(("phase", name, total, done))

        def advance(self, name):
            self.events.append(("advance", name))

        def finish(self, result):
            self.events.append(("finish", result.records))

        def close(self, error):
            self.events.append(("close", error))

    heard = Recorder()
    result, _ = run(tmp_path, n=12, rounds=2, observers=[heard])
    assert heard.events[0][:2] == ("start", 12) and heard.events[-2:] == [("finish", result.records), ("close", None)]
    phases = [e for e in heard.events if e[0] == "phase"]
    assert [p[1] for p in phases] == ["answer seeds", "round 1", "round 2"] and phases[1][2] == 12
    for _, name, total, _ in phases:
        assert sum(e == ("advance", name) for e in heard.events) == total
    assert result.stats.to_dict() == json.loads((tmp_path / "out.jsonl.work" / "stats.json").read_text())
