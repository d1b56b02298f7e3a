"""The MLflow record of optimize runs, the prompt registry, secrets, and resume after a real kill."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auto_evol.algorithm import method
from auto_evol import optimize
from auto_evol.tracking import registry
from auto_evol.core.errors import UserError
from fake_openai import FakeOpenAI

FAKE_KEY = "sk-fake-9f8e7d6c5b4a-do-not-log"


def settings(fake, **extra):
    base = dict(data="questions.jsonl", init_method="init.md", steps=3, candidates=2, batch_size=3, dev_size=8,
                seed=1, evol_model="openai/fake", optimizer_model="openai/fake", api_base=fake.base,
                cache_dir=None, concurrency=4)
    base.update(extra)
    return base


def test_every_step_candidate_and_failure_is_on_record_and_e_star_is_registered(project, monkeypatch):
    import mlflow

    with FakeOpenAI() as fake:
        result = optimize(**settings(fake))
    assert result.accepted_steps == [1, 2, 3] and result.rates[0] > result.rates[-1]
    for record in result.history:  # the two candidates wrote the same text: judged once, not twice
        assert record.candidates[0].method.hash == record.candidates[1].method.hash
        assert record.calls["dev evaluation"] <= 8 * 2 and record.rates[0] == record.rates[1]
    c = mlflow.MlflowClient()
    parent = c.get_run(result.run_id)
    assert parent.data.params["parent_method_hash"] == method.load("init.md").hash
    assert parent.data.params["evol_model"] == "openai/fake" and parent.data.params["evol_temperature"] == "0.0"
    assert parent.data.metrics["failure_rate_e0"] == result.rates[0]
    assert parent.data.metrics["failure_rate_e_star"] == result.rates[-1]
    assert parent.data.tags["auto_evol.accepted_steps"] == "1,2,3"
    rates = sorted(c.get_metric_history(result.run_id, "failure_rate"), key=lambda m: m.step)
    assert [m.value for m in rates] == result.rates

    runs = c.search_runs([parent.info.experiment_id], max_results=100)
    steps = [r for r in runs if r.data.tags.get("auto_evol.kind") == "step"]
    candidates = [r for r in runs if r.data.tags.get("auto_evol.kind") == "candidate"]
    assert len(steps) == 3 and all(r.data.tags["mlflow.parentRunId"] == result.run_id for r in steps)
    assert len(candidates) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in candidates} == {r.info.run_id for r in steps}
    winners = [r for r in candidates if r.data.tags["auto_evol.winner"] == "true"]
    assert len(winners) == 3
    for step_run in steps:
        assert step_run.data.metrics["calls.dev_evaluation"] > 0 and "seconds.analysis" in step_run.data.metrics
        # a step's failure rate is that of the method it hands on: the optimize run's rate at that step
        assert step_run.data.metrics["failure_rate"] == result.rates[int(step_run.data.tags["auto_evol.step"])]
        assert step_run.data.metrics["llm_calls"] > 0
    # one tag names the optimize run on all its runs: the UI's view filters on it
    assert {r.data.tags.get("auto_evol.optimize_run") for r in runs} == {result.run_id}
    one = winners[0]
    assert "failure_rate" in one.data.metrics and "failures.unreadable_evolution" in one.data.metrics
    assert one.data.metrics["length_growth"] > 0
    files = {a.path for a in c.list_artifacts(one.info.run_id)}
    assert {"method.md", "method.diff", "feedback.md", "dev_evaluation.json", "optimizer_reply.md"} <= files
    diff = Path(c.download_artifacts(one.info.run_id, "method.diff", str(project))).read_text()
    assert "-Rewrite (level" in diff and "+Rewrite (level" in diff
    table = json.loads(Path(c.download_artifacts(one.info.run_id, "dev_evaluation.json", str(project))).read_text())
    assert {"original", "evolved", "answer", "failure"} <= set(table["columns"]) and len(table["data"]) == 8

    # e* is the champion of the data set's prompt; the registry URI works wherever a method does.
    assert result.prompt_uri == "prompts:/questions/1" and result.champion
    champion = registry.resolve("prompts:/questions@champion")
    assert champion.text == result.best.text == method.load(result.method_path).text


def test_champion_moves_only_for_a_better_e_star_on_the_same_dev_set(project):
    with FakeOpenAI() as fake:
        first = optimize(**settings(fake, steps=1, name="first"))
        assert first.champion
        worse = optimize(**settings(fake, steps=1, init_method="init.md", name="again"))
        assert worse.prompt_uri.endswith("/2") and not worse.champion  # equal rate: the champion stays
        better = optimize(**settings(fake, steps=3, name="better"))
        assert better.champion and better.rates[-1] < first.rates[-1]
    assert registry.resolve("prompts:/questions@champion").text == better.best.text
    with pytest.raises(UserError, match="prompts:/questions/9"):
        registry.resolve("prompts:/questions/9")


def test_no_trace_of_the_api_key_in_the_store_or_exported_files(project, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with FakeOpenAI() as fake:
        result = optimize(**settings(fake, steps=1, api_base=fake.base))
        assert f"Bearer {FAKE_KEY}" in fake.auth  # the key was really used
    assert result.run_id
    hits = []
    for path in [*Path("mlruns").rglob("*"), *Path("methods").rglob("*")]:
        if path.is_file() and FAKE_KEY.encode() in path.read_bytes():
            hits.append(str(path))
    assert not hits
    con = sqlite3.connect("mlruns/mlflow.db")
    for (table,) in con.execute("select name from sqlite_master where type='table'"):
        for row in con.execute(f"select * from '{table}'"):
            assert FAKE_KEY not in repr(row), table


def cli(args, cwd, **popen):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", OPENAI_API_KEY="unused-by-fake")
    return subprocess.Popen([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_a_run_killed_mid_step_resumes_to_the_same_e_star(project, tmp_path):
    cache = tmp_path / "cache"
    # 100 ms a call: with no phase barriers the whole run took well under the time the test needs to
    # see step 1's checkpoint at 20 ms, so the kill came after its end.
    with FakeOpenAI(latency=0.1) as fake:
        args = ["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--steps", "3", "-m", "2",
                "--batch-size", "3", "--dev-size", "8", "--seed", "1", "--evol-model", "openai/fake",
                "--optimizer-model", "openai/fake", "--api-base", fake.base, "--cache-dir", str(cache),
                "--concurrency", "2", "--quiet"]
        killed = cli(args, project)
        # Let it finish step 1 (its checkpoint) and get into step 2, then kill it for real.
        deadline = time.time() + 120
        while time.time() < deadline and not _checkpoint_step(project, at_least=1):
            time.sleep(0.05)
        calls_before = fake.calls
        while time.time() < deadline and fake.calls < calls_before + 6:
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed.returncode == -signal.SIGKILL
        run_id = _optimize_run_id(project)
        assert not (project / "methods").exists()

        resumed = cli(["optimize", "--resume", run_id, "--quiet"], project)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        e_star = method.load(out.strip())

        fresh_dir = tmp_path / "fresh"
        fresh_dir.mkdir()
        for name in ("questions.jsonl", "init.md"):
            (fresh_dir / name).write_text((project / name).read_text())
        fresh = cli(args, fresh_dir)
        out, err = fresh.communicate(timeout=300)
        assert fresh.returncode == 0, err
        assert method.load(out.strip()).text == e_star.text

    import mlflow

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["auto_evol.accepted_steps"] == "1,2,3"
    steps = [r for r in c.search_runs([run.info.experiment_id]) if r.data.tags.get("auto_evol.kind") == "step"]
    assert sorted(int(r.data.tags["auto_evol.step"]) for r in steps) == [1, 2, 3]  # no step twice


def _optimize_run_id(cwd: Path) -> str:
    con = sqlite3.connect(cwd / "mlruns" / "mlflow.db")
    [(run_id,)] = con.execute("select run_uuid from tags where key='auto_evol.kind' and value='optimize'").fetchall()
    return run_id


def _checkpoint_step(cwd: Path, at_least: int) -> bool:
    db = cwd / "mlruns" / "mlflow.db"
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(db)
        rows = con.execute("select max(step) from metrics where key='failure_rate'").fetchall()
    except sqlite3.Error:
        return False
    return bool(rows and rows[0][0] is not None and rows[0][0] >= at_least)


def run_cli(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_runs_and_methods_commands_over_a_real_store(project):
    with FakeOpenAI() as fake:
        result = optimize(**settings(fake, steps=2, name="gsm-e-star"))
    out = run_cli(["runs"], project)
    assert out.returncode == 0 and result.run_id in out.stdout and "questions" in out.stdout
    assert f"{result.rates[0]:.1%} -> {result.rates[-1]:.1%}" in out.stdout

    listed = run_cli(["methods", "list"], project).stdout
    assert "gsm-e-star" in listed and "e0" in listed and "prompts:/questions/1" in listed and "champion" in listed
    shown = run_cli(["methods", "show", "prompts:/questions@champion"], project)
    assert shown.returncode == 0 and result.best.text in shown.stdout
    diff = run_cli(["methods", "diff", "init.md", "gsm-e-star"], project).stdout
    assert "-Rewrite (level 0)" in diff and "+Rewrite (level 2)" in diff

    exported = run_cli(["methods", "export", result.run_id, "--to", "methods/from-run.md"], project)
    assert exported.returncode == 0, exported.stderr
    assert method.load("methods/from-run.md").text == result.best.text
    exported = run_cli(["methods", "export", "prompts:/questions/1", "--to", "out/from-registry.md"], project)
    assert exported.returncode == 0 and method.load("out/from-registry.md").text == result.best.text
    # A registry version can start a new run.
    with FakeOpenAI() as fake:
        again = optimize(**settings(fake, steps=1, init_method="prompts:/questions@champion", name="from-champion"))
    assert again.rates[0] == result.rates[-1]


def _first_line(args, cwd) -> str:
    """The first line `auto-evol ui` prints, read before its MLflow server is up; then it is stopped."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        return proc.stdout.readline().strip()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_prints_first_the_address_of_an_optimize_runs_steps_and_candidates(project):
    import mlflow

    with FakeOpenAI() as fake:
        first = optimize(**settings(fake, steps=1, name="first"))
        latest = optimize(**settings(fake, steps=2, name="latest"))
    c = mlflow.MlflowClient()
    experiment = c.get_run(latest.run_id).info.experiment_id
    runs = c.search_runs([experiment], max_results=100)
    older = [r for r in runs if r.data.tags.get("auto_evol.optimize_run") == first.run_id]
    for r in older:  # as runs recorded before the tag existed: the UI tags them again
        c.delete_tag(r.info.run_id, "auto_evol.optimize_run")

    for args, run_id in ((["ui", "--port", "5999"], latest.run_id), (["ui", "--port", "5999", "--run", first.run_id],
                                                                    first.run_id)):
        url = _first_line(args, project)
        assert url == (f"http://127.0.0.1:5999/#/experiments/{experiment}/runs?workflowType=machine_learning"
                       f"&viewStateShareKey=auto-evol-{run_id}")
        view = json.loads(c.get_experiment(experiment).tags[f"mlflow.sharedViewState.auto-evol-{run_id}"])
        assert view["searchFilter"] == f"tags.`auto_evol.optimize_run` = '{run_id}'"
        assert view["selectedColumns"][:3] == ["metrics.`failure_rate`", "metrics.`failure_rate_e0`",
                                               "metrics.`failure_rate_e_star`"]
        assert "tags.`auto_evol.accepted_steps`" in view["selectedColumns"]
    assert all(c.get_run(r.info.run_id).data.tags["auto_evol.optimize_run"] == first.run_id for r in older)

    candidate = next(r for r in runs if r.data.tags.get("auto_evol.kind") == "candidate")
    url = _first_line(["ui", "--port", "5999", "--run", candidate.info.run_id], project)
    assert url == f"http://127.0.0.1:5999/#/experiments/{experiment}/runs/{candidate.info.run_id}"

    out = run_cli(["ui", "--run", "0123456789abcdef"], project)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "unknown run id '0123456789abcdef'" in lines[0], out.stderr


@pytest.mark.parametrize("args, message", [
    (["optimize", "--resume", "0123456789abcdef"], "unknown run id '0123456789abcdef'"),
    (["methods", "show", "prompts:/questions/7"], "prompts:/questions/7: not found in the prompt registry"),
    (["methods", "diff", "e0", "missing-method"], "unknown method 'missing-method'"),
    (["methods", "export", "0123456789abcdef", "--to", "x.md"], "unknown run id"),
])
def test_bad_tracking_input_is_one_clear_line(project, args, message):
    with FakeOpenAI() as fake:
        optimize(**settings(fake, steps=1, track=True))
    out = run_cli(args, project)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert not (project / "x.md").exists()


def test_an_unreachable_tracking_server_is_one_clear_line(project):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run([sys.executable, "-m", "auto_evol", "runs"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "tracking store http://127.0.0.1:9 cannot be used" in lines[0]


def test_trace_records_every_llm_call(project, monkeypatch):
    import mlflow
    import mlflow.dspy

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    try:
        with FakeOpenAI() as fake:
            result = optimize(**settings(fake, steps=1, candidates=1, trace=True))
        experiment = mlflow.MlflowClient().get_run(result.run_id).info.experiment_id
        traces = mlflow.search_traces(locations=[experiment], return_type="list")
    finally:
        mlflow.dspy.autolog(disable=True)
    assert len(traces) >= result.usage["evol"]["calls"]
    assert not [p for p in Path("mlruns").rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
