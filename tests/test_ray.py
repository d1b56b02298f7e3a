"""``evolve --ray`` on a real Ray cluster: two nodes (two raylets, ray.cluster_utils.Cluster) on this
machine, the loopback OpenAI-compatible server answering, ``auto-evol`` run as a user runs it.

Small enough for CI on 2 cores (a cluster start is ~5 s; each evolve ~15-30 s); marked ``ray`` so
they can be picked (-m ray) or left out (-m "not ray"); scripts/test.sh runs them with the rest.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli
from fake_openai import FakeOpenAI

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node; the second declares a GPU (a logical one: the vLLM tests
    need the check to pass, and stand in for the engine)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _seeds(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?",
                                        "output": "4" if i % 3 else ""}) + "\n" for i in range(n)))
    return path


def _evolve(tmp_path: Path, base: str, out: str, *extra: str, n: int = 40):
    return cli(["evolve", "--data", str(_seeds(tmp_path / "seeds.jsonl", n)), "--out", str(tmp_path / out),
                "--evol-model", "openai/fake", "--api-base", base, "--rounds", "2", "--no-track", "-q", *extra],
               tmp_path)


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def _journaled_once(work: Path, items: int) -> None:
    """Each phase's journal holds every item of its phase once (round 0: the seeds' answers)."""
    for name in ("round0.jsonl", "round1.jsonl", "round2.jsonl"):
        ids = [json.loads(line)["seed_id"] for line in (work / name).read_text().splitlines()]
        assert len(ids) == len(set(ids)), name
        assert len(ids) == (items if name != "round0.jsonl" else sum(1 for i in range(items) if not i % 3))


def test_evolve_on_two_nodes_writes_the_records_of_a_local_run(tmp_path, two_nodes):
    with FakeOpenAI() as fake:
        local = _evolve(tmp_path, fake.base, "local.jsonl")
        assert local.returncode == 0, local.stderr
        calls = fake.calls
        spread = _evolve(tmp_path, fake.base, "ray.jsonl", "--ray", two_nodes.address, "--ray-workers", "2",
                         "--ray-batch-size", "8")
        assert spread.returncode == 0, spread.stderr
        assert fake.calls == 2 * calls   # the same calls again, none lost or doubled
    # the same records (and rejects) with the same provenance; the seeded shuffle even puts them in order
    assert _lines(tmp_path / "ray.jsonl") == _lines(tmp_path / "local.jsonl")
    assert len(_lines(tmp_path / "ray.jsonl")) > 40
    assert _lines(tmp_path / "ray.rejects.jsonl") == _lines(tmp_path / "local.rejects.jsonl")
    stats = json.loads((tmp_path / "ray.jsonl.work" / "stats.json").read_text())
    local_stats = json.loads((tmp_path / "local.jsonl.work" / "stats.json").read_text())
    assert stats["rounds"] == local_stats["rounds"] and stats["complete"]
    assert {k: stats["calls"]["evol"][k] for k in ("calls", "input_tokens", "output_tokens")} == \
        {k: local_stats["calls"]["evol"][k] for k in ("calls", "input_tokens", "output_tokens")}
    _journaled_once(tmp_path / "ray.jsonl.work", 40)


def _asker_pids() -> list[int]:
    """Processes of Ray workers running auto-evol's Asker (Ray titles them after the operator)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"Asker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _fault_mid_run(tmp_path: Path, cluster, workers: int, fault) -> None:
    """A two-round --ray evolve of 120 items in a subprocess; ``fault()`` is tried once 8 items of round 1
    are journaled, until it says it struck. The run must still end well with the local run's records,
    each item journaled once."""
    with FakeOpenAI(latency=0.05) as fake:
        local = _evolve(tmp_path, fake.base, "local.jsonl", n=120)
        assert local.returncode == 0, local.stderr
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MLFLOW_TRACKING_URI")}
        run = subprocess.Popen(
            [sys.executable, "-m", "auto_evol", "evolve", "--data", str(tmp_path / "seeds.jsonl"),
             "--out", str(tmp_path / "ray.jsonl"), "--evol-model", "openai/fake", "--api-base", fake.base,
             "--rounds", "2", "--no-track", "-q", "--ray", cluster.address, "--ray-workers", str(workers),
             "--ray-batch-size", "4", "--concurrency", "4"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = tmp_path / "ray.jsonl.work" / "round1.jsonl"
        struck = False
        deadline = time.time() + 90
        while not struck and time.time() < deadline and run.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 8:
                struck = fault()
            time.sleep(0.05)
        out, err = run.communicate(timeout=300)
    assert struck, "the run ended before the fault could strike"
    assert run.returncode == 0, err
    assert _lines(tmp_path / "ray.jsonl") == _lines(tmp_path / "local.jsonl")
    _journaled_once(tmp_path / "ray.jsonl.work", 120)   # the lost batches redone, not doubled


def test_a_worker_killed_mid_run_loses_nothing(tmp_path, two_nodes):
    def kill_a_worker() -> bool:
        pids = _asker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
        return bool(pids)

    _fault_mid_run(tmp_path, two_nodes, 2, kill_a_worker)


@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "no Ray cluster answers there"),
                                           ("not-an-address", "not a Ray address")])
def test_a_bad_ray_address_is_one_line_and_exit_2(tmp_path, address, says):
    began = time.time()
    result = _evolve(tmp_path, "http://127.0.0.1:9/v1", "out.jsonl", "--ray", address)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and address in lines[0], result.stderr
    assert time.time() - began < 30
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.work").exists()


def test_a_vllm_role_on_a_cluster_without_gpus_says_so_before_any_call(tmp_path):
    # No --ray: a vllm:MODEL role starts a local Ray, which has no GPU here.
    result = _evolve(tmp_path, "http://127.0.0.1:9/v1", "out.jsonl", "--answer-model", "vllm:Qwen/Qwen2.5-0.5B-Instruct",
                     "--vllm-tensor-parallel", "2")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "--answer-model vllm:Qwen/Qwen2.5-0.5B-Instruct" in line and "need 2 GPU(s)" in line and "has 0" in line
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.work").exists()


def _optimize(folder: Path, base: str, *extra: str):
    (folder / "questions.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(40)))
    (folder / "init.md").write_text("Rewrite (level 0) this: {instruction}\n")   # fake_openai's world
    return cli(["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--steps", "2", "-m", "2",
                "--batch-size", "3", "--dev-size", "12", "--seed", "1", "--evol-model", "openai/fake",
                "--optimizer-model", "openai/fake", "--api-base", base, "--cache-dir", str(folder / "cache"),
                "--no-track", "--name", "best", "--quiet", *extra], folder)


def test_optimize_judges_the_dev_set_on_the_cluster_and_finds_the_same_method(tmp_path, two_nodes):
    local, spread = tmp_path / "local", tmp_path / "spread"
    local.mkdir(), spread.mkdir()
    with FakeOpenAI() as fake:
        alone = _optimize(local, fake.base)
        assert alone.returncode == 0, alone.stderr
        calls = fake.calls
        on_ray = _optimize(spread, fake.base, "--ray", two_nodes.address, "--ray-workers", "2")
        assert on_ray.returncode == 0, on_ray.stderr
        assert fake.calls == 2 * calls   # the same calls (each run has its own cache)
    best = (local / "methods" / "best.md").read_text()
    assert (spread / "methods" / "best.md").read_text() == best
    assert "level 2" in best   # two accepted steps: the world's optimizer adds a level each


def _stand_in_engine(base: str):
    """Stands in for Ray Data's vLLM processor (no GPU here): the same dataset in and out, with the
    processor's columns (generated_text, token counts), generated by the loopback server instead."""
    import urllib.request

    def generate(row: dict) -> dict:
        body = json.dumps({"model": "fake", "messages": list(row["messages"])}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            reply = json.loads(answer.read())
        return {**row, "generated_text": reply["choices"][0]["message"]["content"],
                "num_input_tokens": reply["usage"]["prompt_tokens"],
                "num_generated_tokens": reply["usage"]["completion_tokens"]}

    def build(settings, options, batch_size, preprocess, postprocess):
        assert settings.model == "vllm:Qwen/Qwen2.5-0.5B-Instruct" and options.tensor_parallel == 1

        def postprocess_or_pass(row: dict) -> dict:   # as Ray's processor: failed rows pass by it
            return {**postprocess(row), "__inference_error__": ""}

        return lambda ds: ds.map(preprocess).map(generate).map(postprocess_or_pass)

    return build


def test_a_vllm_evol_role_runs_as_engine_stages_and_writes_the_same_records(tmp_path, two_nodes, monkeypatch):
    from auto_evol.cluster import pipeline
    from auto_evol.evolve import EvolveOptions, evolve

    seeds = _seeds(tmp_path / "seeds.jsonl", 30)
    with FakeOpenAI() as fake:
        common = dict(data=str(seeds), rounds=1, api_base=fake.base, answer_model="openai/fake", track=False)
        local = evolve(EvolveOptions(out=str(tmp_path / "local.jsonl"), evol_model="openai/fake", **common),
                       observers=[])
        monkeypatch.setattr(pipeline, "build_engine_stage", _stand_in_engine(fake.base))
        engines = evolve(EvolveOptions(out=str(tmp_path / "vllm.jsonl"), evol_model="vllm:Qwen/Qwen2.5-0.5B-Instruct",
                                       ray=two_nodes.address, ray_workers=1, **common), observers=[])
    assert engines.complete and engines.records == local.records > 20

    def records(path: Path) -> list[dict]:   # the evol model's name aside, every field the same
        return sorted((json.dumps({k: v for k, v in json.loads(line).items() if k != "evol_model"}, sort_keys=True)
                       for line in path.read_text().splitlines()))

    assert records(tmp_path / "vllm.jsonl") == records(tmp_path / "local.jsonl")
    assert engines.calls["evol"]["calls"] == local.calls["evol"]["calls"]
    assert engines.calls["answer"]["calls"] == local.calls["answer"]["calls"]


def test_an_outage_on_a_worker_stops_the_run_in_one_line_and_a_rerun_goes_on(tmp_path, two_nodes):
    with FakeOpenAI() as fake:
        fake.failing = True   # every call 500: the workers' roles trip their error window
        down = _evolve(tmp_path, fake.base, "out.jsonl", "--ray", two_nodes.address, "--ray-workers", "1",
                       "--max-error-rate", "0.5")
        assert down.returncode == 4, down.stderr
        lines = [x for x in down.stderr.strip().splitlines() if x.startswith("auto-evol")]
        assert len(lines) == 1 and "calls failed" in lines[0], down.stderr
        fake.failing = False
        again = _evolve(tmp_path, fake.base, "out.jsonl", "--ray", two_nodes.address, "--ray-workers", "1")
        assert again.returncode == 0, again.stderr
    _journaled_once(tmp_path / "out.jsonl.work", 40)


def test_a_node_removed_mid_run_loses_nothing(tmp_path, two_nodes):
    extra = two_nodes.add_node(num_cpus=2)   # a third node, to take away while its workers have calls in flight
    two_nodes.wait_for_nodes()

    def remove_it() -> bool:
        two_nodes.remove_node(extra)
        return True

    _fault_mid_run(tmp_path, two_nodes, 3, remove_it)
