"""Nothing lost, nothing leaked: concurrent runs, credentials in URLs, outages, leftovers, resumed counts.

Each test names the numbered item of the reliability issue it guards (items 1-4, 6, 9, 10); bad input
files are in test_reliability_inputs.py, file modes, `ui` and flag errors in test_reliability_edges.py.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auto_evol.storage import locks
from auto_evol.core.errors import Outage, UserError
from auto_evol.evolve import EvolveOptions, evolve
from auto_evol.llm.client import ErrorWindow
from auto_evol.optimize import optimize
from conftest import scripted_llm
from fake_openai import FakeOpenAI, evolve_world

PASSWORD = "s3cret-pw-7d1e"


def seeds(path: Path, n: int, *, with_output: bool = False) -> Path:
    rows = [{"id": f"s{i}", "instruction": f"Question number {i}?", **({"output": "4"} if with_output else {})}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out.update(LITELLM_LOCAL_MODEL_COST_MAP="True", OPENAI_API_KEY="unused-by-fake", COLUMNS="300")
    return out


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def optimize_args(base: str, *extra: str) -> list[str]:
    return ["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--steps", "2", "-m", "2",
            "--batch-size", "3", "--dev-size", "8", "--seed", "1", "--evol-model", "openai/fake",
            "--optimizer-model", "openai/fake", "--api-base", base, "--no-cache", "--concurrency", "2", "--quiet",
            *extra]


# --- 1. one process per work folder ----------------------------------------------------------------

def test_a_second_evolve_on_the_same_out_refuses_at_once_naming_the_holder(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 120, with_output=True)
    args = ["evolve", "--data", "seeds.jsonl", "--out", "out.jsonl", "--rounds", "1", "--evol-model", "openai/fake",
            "--concurrency", "2", "--no-track", "--no-judge", "--quiet"]
    with FakeOpenAI(latency=0.1) as fake:   # about 12 s of work: the second starts well within it
        first = start(args + ["--api-base", fake.base, "--cache-dir", str(tmp_path / "c1")], tmp_path)
        lock = tmp_path / "out.jsonl.work" / "lock"
        deadline = time.time() + 60
        while time.time() < deadline and not (lock.exists() and lock.read_text()):
            time.sleep(0.02)
        second = run(args + ["--api-base", fake.base, "--cache-dir", str(tmp_path / "c2")], tmp_path, timeout=60)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2
    line = one_error_line(second)
    assert "in use by" in line and f"pid {first.pid}" in line and "out.jsonl.work" in line
    records = read_jsonl(tmp_path / "out.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert {r["seed_id"] for r in records if r["round"] == 0} == {f"s{i}" for i in range(120)}
    assert not lock.read_text()   # a clean finish leaves no holder on record


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    data = seeds(tmp_path / "seeds.jsonl", 6)
    work = tmp_path / "out.jsonl.work"
    work.mkdir()
    # What a kill -9 leaves: the holder's record, but no process holding the lock.
    (work / "lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "2026-01-01T00:00:00"}))
    model, _ = scripted_llm(evolve_world, name="takeover")
    result = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=1, cache_dir=None,
                                  track=False), evol=model, answerer=model)
    assert result.complete and result.records > 6
    assert "taking over from pid 999999 on gone" in capsys.readouterr().err


def test_a_held_lock_refuses_and_a_released_one_is_free(tmp_path):
    path = tmp_path / "x.lock"
    with locks.hold(path, "thing X"):
        probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from auto_evol.storage import locks\n"
                                "try:\n with locks.hold(Path(sys.argv[1]), 'thing X'): pass\n"
                                "except Exception as e: print(e); sys.exit(2)", str(path)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 2 and f"thing X is in use by pid {os.getpid()}" in probe.stdout
    with locks.hold(path, "thing X"):
        pass


# --- 2. one store, made once -----------------------------------------------------------------------

def test_two_first_tracked_runs_in_a_fresh_folder_both_succeed(workdir):
    script = ("from auto_evol.tracking import store\n"
              "c = store.client()\n"
              "e = store.experiment_id(c, 'race', store.tracking_uri())\n"
              "c.set_terminated(c.create_run(e).info.run_id)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=workdir, env=env(), stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    con = sqlite3.connect(workdir / "mlruns" / "mlflow.db")
    assert con.execute("select count(*) from runs").fetchone()[0] == 4
    assert not con.execute("select name from sqlite_master where name like '_alembic_tmp%'").fetchall()
    listed = run(["runs"], workdir)
    assert listed.returncode == 0, listed.stderr


# --- 3. credentials in URLs ------------------------------------------------------------------------

def all_bytes(*folders: Path):
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                yield path, path.read_bytes()


def test_a_password_in_api_base_is_sent_as_basic_auth_and_written_nowhere(tmp_path, workdir):
    seeds(workdir / "seeds.jsonl", 12)
    with FakeOpenAI(basic_auth=f"alice:{PASSWORD}") as fake:
        base = fake.base.replace("http://", f"http://alice:{PASSWORD}@")
        done = run(["evolve", "--data", "seeds.jsonl", "--out", "out.jsonl", "--rounds", "1", "--evol-model",
                    "openai/fake", "--api-base", base, "--cache-dir", str(tmp_path / "cache"), "--quiet"], workdir)
    assert done.returncode == 0, done.stderr
    rejects = read_jsonl(workdir / "out.rejects.jsonl")
    assert not [r for r in rejects if r["reason"] == "llm_error"]   # every call got through
    assert len(read_jsonl(workdir / "out.jsonl")) > 12
    assert PASSWORD not in done.stdout + done.stderr
    leaks = [str(p) for p, data in all_bytes(workdir, tmp_path / "cache") if PASSWORD.encode() in data]
    assert not leaks


def test_optimize_with_a_password_in_api_base_and_its_resume(project):
    with FakeOpenAI(basic_auth=f"alice:{PASSWORD}") as fake:
        base = fake.base.replace("http://", f"http://alice:{PASSWORD}@")
        done = run(optimize_args(base), project)
        assert done.returncode == 0, done.stderr
        leaks = [str(p) for p, data in all_bytes(project) if PASSWORD.encode() in data]
        assert not leaks
        con = sqlite3.connect(project / "mlruns" / "mlflow.db")
        [(run_id,)] = con.execute("select run_uuid from tags where key='auto_evol.kind' and value='optimize'")
        for row in con.execute("select * from params"):
            assert PASSWORD not in repr(row)
        # A resume never goes elsewhere silently: without the credentials, or to another server, it refuses.
        without = run(["optimize", "--resume", run_id, "--quiet"], project)
        assert without.returncode == 2 and "give the same --api-base again" in one_error_line(without)
        other = run(["optimize", "--resume", run_id, "--api-base", "http://alice:x@127.0.0.2:9/v1", "--quiet"],
                    project)
        assert other.returncode == 2 and "keeps its server" in one_error_line(other)
        calls = fake.calls
        again = run(["optimize", "--resume", run_id, "--api-base", base, "--quiet"], project)
        assert again.returncode == 0, again.stderr
        assert fake.calls == calls   # a finished run: nothing to redo
    assert PASSWORD not in again.stdout + again.stderr


def test_a_password_in_api_base_for_a_provider_model_is_refused_before_any_call(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 3)
    done = run(["evolve", "--data", "seeds.jsonl", "--evol-model", "anthropic/claude-x", "--api-base",
                f"https://bob:{PASSWORD}@proxy.example/v1", "--no-track"], tmp_path, timeout=120)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "user:password" in line and PASSWORD not in line
    assert not (tmp_path / "evolved.jsonl.work").exists()


def test_a_password_the_url_parser_cannot_see_is_refused_without_being_printed(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 3)
    done = run(["evolve", "--data", "seeds.jsonl", "--evol-model", "openai/fake", "--api-base",
                "http://alice:2024/Zq9@127.0.0.1:9/v1", "--no-track"], tmp_path, timeout=120)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "percent-encode" in line and "Zq9" not in line
    assert not (tmp_path / "evolved.jsonl.work").exists()


def test_a_resume_without_the_password_is_refused(project):
    with FakeOpenAI(basic_auth=f"alice:{PASSWORD}") as fake:
        base = fake.base.replace("http://", f"http://alice:{PASSWORD}@")
        assert run(optimize_args(base, "--steps", "1"), project).returncode == 0
        con = sqlite3.connect(project / "mlruns" / "mlflow.db")
        [(run_id,)] = con.execute("select run_uuid from tags where key='auto_evol.kind' and value='optimize'")
        bare = run(["optimize", "--resume", run_id, "--api-base", fake.base, "--quiet"], project)
    assert bare.returncode == 2 and "give it again with that part" in one_error_line(bare)


# --- 4. fail fast on an outage, and retry what it failed --------------------------------------------

def test_an_outage_at_the_end_of_a_phase_stops_it_without_waiting_for_the_calls_in_flight(tmp_path):
    import asyncio

    from auto_evol.evolve import _Budget, _drive

    async def work_on(row, journal):
        if row == 0:
            await asyncio.sleep(0.2)
            raise Outage("down")
        await asyncio.sleep(20)   # a call hanging on a server that is gone
        journal.append({"seed_id": str(row)})

    started = time.time()
    with pytest.raises(Outage):
        asyncio.run(_drive(iter(range(10)), work_on, tmp_path / "j.jsonl", 64, _Budget(None, []), calls_per_item=1))
    assert time.time() - started < 5
    assert (tmp_path / "j.jsonl").read_text() == ""   # nothing half-done was journaled


def test_error_window_trips_only_on_a_full_window_above_the_limit():
    window = ErrorWindow(limit=0.5, size=4)
    for failed in (True, True, True):
        window.add(failed, "boom")
    assert window.tripped is None   # three failures, but not a full window yet
    window.add(False)
    assert window.tripped and "3 of the last 4" in window.tripped and "boom" in window.tripped
    half = ErrorWindow(limit=0.5, size=4)
    for failed in (True, False, True, False, True, False):
        half.add(failed, "x")
    assert half.tripped is None     # 2 of 4 is not above 0.5
    never = ErrorWindow(limit=1.0, size=2)
    for _ in range(5):
        never.add(True, "x")
    assert never.tripped is None


def test_an_outage_stops_evolve_fast_and_a_rerun_retries_the_failed_items(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 80, with_output=True)
    args = ["evolve", "--data", "seeds.jsonl", "--out", "out.jsonl", "--rounds", "1", "--evol-model", "openai/fake",
            "--concurrency", "4", "--no-track", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    with FakeOpenAI() as fake:
        fake.failing = True
        started = time.time()
        down = run(args + ["--api-base", fake.base], tmp_path, timeout=300)
        seconds = time.time() - started
        calls_while_down = fake.calls
        fake.failing = False
        up = run(args + ["--api-base", fake.base], tmp_path)
    assert down.returncode == 4, down.stderr
    line = one_error_line(down)
    assert line.startswith("auto-evol: stopped:") and "upstream is down" in line and "--max-error-rate" in line
    assert seconds < 120 and calls_while_down < 80 * 5   # stopped long before every item was tried
    assert up.returncode == 0, up.stderr
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert not [r for r in rejects if r["reason"] == "llm_error"]   # the outage's items were tried again
    round1 = [r["seed_id"] for r in read_jsonl(tmp_path / "out.jsonl") if r["round"] == 1] + \
             [r["seed_id"] for r in rejects if r["round"] == 1]
    assert sorted(round1) == sorted(f"s{i}" for i in range(80))   # each item once


def test_an_optimize_run_that_can_judge_nothing_is_never_registered(project):
    with FakeOpenAI() as fake:
        fake.failing = True
        down = run(optimize_args(fake.base), project)
    assert down.returncode == 4, down.stderr
    assert "upstream is down" in one_error_line(down)
    assert not (project / "methods").exists()
    con = sqlite3.connect(project / "mlruns" / "mlflow.db")
    assert not con.execute("select * from registered_models").fetchall()
    assert con.execute("select status from runs").fetchall() == [("FAILED",)]


def test_the_max_error_rate_flag_is_checked_before_anything(tmp_path):
    seeds(tmp_path / "seeds.jsonl", 3)
    done = run(["evolve", "--data", "seeds.jsonl", "--max-error-rate", "0", "--no-track"], tmp_path, timeout=120)
    assert done.returncode == 2 and "--max-error-rate" in one_error_line(done)


# --- 6 and 9. validation before work, and nothing left behind ----------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--sample", "-1"], "--sample must be at least 1"),
    (["--out", "afolder"], "is a folder"),
    (["--out", "afile.txt/out.jsonl"], "is a file, not a folder"),
])
def test_evolve_checks_its_flags_and_output_place_before_any_call(tmp_path, extra, message):
    seeds(tmp_path / "seeds.jsonl", 3)
    (tmp_path / "afolder").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    done = run(["evolve", "--data", "seeds.jsonl", "--evol-model", "openai/fake", "--api-base", "http://127.0.0.1:9/v1",
                "--no-track", *extra], tmp_path, timeout=120)
    assert done.returncode == 2 and message in one_error_line(done)
    assert not list(tmp_path.glob("*.work"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_places_are_refused_before_any_call(project):
    locked = project / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with FakeOpenAI() as fake:
            evolve_run = run(["evolve", "--data", "questions.jsonl", "--out", "locked/out.jsonl", "--evol-model",
                              "openai/fake", "--api-base", fake.base, "--no-track"], project, timeout=120)
            opt = run(optimize_args(fake.base, "--methods-dir", "locked/methods"), project, timeout=120)
            assert fake.calls == 0
    finally:
        locked.chmod(0o700)
    assert evolve_run.returncode == 2 and "permission denied" in one_error_line(evolve_run)
    assert opt.returncode == 2 and "--methods-dir" in one_error_line(opt)


def test_a_methods_dir_that_cannot_be_made_is_refused_before_any_call(project):
    (project / "afile.txt").write_text("x")
    with FakeOpenAI() as fake:
        opt = run(optimize_args(fake.base, "--methods-dir", "afile.txt/methods"), project, timeout=120)
        assert fake.calls == 0
    assert opt.returncode == 2 and "--methods-dir afile.txt/methods: afile.txt is a file" in one_error_line(opt)


def test_an_early_evolve_error_leaves_no_work_folder(tmp_path):
    data = tmp_path / "seeds.jsonl"
    data.write_text('{"instruction": "fine"}\n{"instruction": \n')
    model, engine = scripted_llm(evolve_world, name="early")
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match=r"seeds.jsonl:2"):
        evolve(EvolveOptions(data=str(data), out=str(out), on_bad_line="fail", cache_dir=None, track=False),
               evol=model, answerer=model)
    assert not engine.prompts
    assert not (tmp_path / "out.jsonl.work").exists() and not out.exists()


def test_temporary_files_of_a_killed_assembly_are_cleared_by_the_rerun(tmp_path):
    data = seeds(tmp_path / "seeds.jsonl", 10)
    out = tmp_path / "out.jsonl"
    model, _ = scripted_llm(evolve_world, name="leftovers")
    options = EvolveOptions(data=str(data), out=str(out), rounds=1, cache_dir=None, track=False)
    evolve(options, evol=model, answerer=model)
    # What kill -9 during the final write leaves: the temporary files beside the output.
    for name in (".out.jsonl.k1ll3d_a.tmp", ".out.rejects.jsonl.x8yz1234.tmp"):
        (tmp_path / name).write_text("")
    before = out.read_bytes()
    evolve(options, evol=model, answerer=model)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    other = tmp_path / ".out.jsonl.v2.jsonl.abcd1234.tmp"   # another output's, not this run's to remove
    other.write_text("")
    evolve(options, evol=model, answerer=model)
    assert other.exists()


# --- 9 and 10. a resumed optimize: one e*, every call counted ----------------------------------------

def test_a_resumed_run_counts_all_its_calls_and_writes_one_e_star(project, monkeypatch):
    import importlib

    from auto_evol.tracking import store

    optimize_mod = importlib.import_module("auto_evol.optimize")

    base = dict(data="questions.jsonl", init_method="init.md", steps=3, candidates=2, batch_size=3, dev_size=8,
                seed=1, evol_model="openai/fake", optimizer_model="openai/fake", cache_dir=None, concurrency=2,
                patience=5)
    with FakeOpenAI() as fake:
        whole = optimize(**base, api_base=fake.base, experiment="whole", methods_dir="whole-methods")
        whole_calls = sum(u["calls"] for u in whole.usage.values())

        real_step = optimize_mod._Run.step

        async def interrupted(run, step, *args, **kwargs):
            if step == 2:
                raise KeyboardInterrupt
            return await real_step(run, step, *args, **kwargs)

        monkeypatch.setattr(optimize_mod._Run, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            optimize(**base, api_base=fake.base, experiment="split")
        monkeypatch.setattr(optimize_mod._Run, "step", real_step)
        [killed] = [r for r in store.optimize_runs() if r["status"] == "KILLED"]
        resumed = optimize(resume=killed["run_id"], api_base=fake.base)
        # Finishing again (as after a kill while finishing) rewrites the same e* file.
        store.client().update_run(resumed.run_id, status="RUNNING")
        again = optimize(resume=resumed.run_id, api_base=fake.base)
    assert again.method_path == resumed.method_path
    assert sorted(p.name for p in Path("methods").iterdir()) == [resumed.method_path.name]
    row = next(r for r in store.optimize_runs() if r["run_id"] == resumed.run_id)
    assert int(row["calls"]) == whole_calls   # the first process's calls and the resumed one's


# --- a rerun pays for no finished call, without a reply cache ----------------------------------------

class Stop(BaseException):
    """Stands in for a kill in the middle of an item (not an Exception: nothing catches it on the way)."""


def test_a_rerun_without_a_reply_cache_asks_again_only_what_was_unfinished(tmp_path):
    data = seeds(tmp_path / "seeds.jsonl", 12, with_output=True)
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=1, cache_dir=None, track=False,
                            concurrency=1)

    def dies_at_the_answer_of_question_1(prompt):
        if prompt.startswith("Question number 1?") and "Also explain" in prompt:
            raise Stop
        return evolve_world(prompt)

    first, _ = scripted_llm(dies_at_the_answer_of_question_1, name="dies")
    with pytest.raises(Stop):
        evolve(options, evol=first, answerer=first)
    second, engine = scripted_llm(evolve_world, name="lives")
    result = evolve(options, evol=second, answerer=second)
    asked = [p for p in engine.prompts if "Question number 1?" in p]
    # Question 1's evolution and verdict were finished before the stop: only its answer is asked again.
    assert not [p for p in asked if p.startswith(("You are making", "You are writing", "Compare two"))]
    assert [p for p in asked if p.startswith("Question number 1? Also explain")]
    records = read_jsonl(result.out)
    assert "s1#1" in {r["id"] for r in records}
    assert not list((tmp_path / "out.jsonl.work").glob("*.partial.jsonl"))   # spent once the round is whole
