"""End to end on the real embedded model (SmolLM2-135M GGUF, in process): tiny settings, real calls."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from auto_evol.llm import backends, client as llm
from auto_evol.algorithm import method

pytestmark = pytest.mark.embedded


def test_the_embedded_model_answers():
    backends.configure_cache(None)
    model = backends.build(llm.RoleSettings(max_tokens=24), concurrency=1)
    reply = model.ask("Say hello.")
    assert reply.text.strip() and reply.output_tokens > 0
    assert model.usage.snapshot()["calls"] == 1


def test_optimize_on_the_embedded_model_writes_e_star_and_a_failure_rate_history(tmp_path):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["optimize", "--steps", "1", "--candidates", "1", "--batch-size", "1", "--dev-size", "2",
            "--evol-max-tokens", "96", "--optimizer-max-tokens", "128", "--name", "tiny",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    out = subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    path = tmp_path / "methods" / "tiny.md"
    assert out.stdout.strip().endswith("tiny.md") and path.is_file()
    e_star = method.load(path)
    # An optimized method may have no placeholder: the instruction is then appended (method.py).
    assert "Question marker 17" in e_star.render("Question marker 17") and "lineage" in e_star.extra

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("gsm8k_seed").experiment_id],
                               filter_string="tags.`auto_evol.kind` = 'optimize'")
    history = sorted(client.get_metric_history(run.info.run_id, "failure_rate"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1]
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert run.data.params["evol_model"] == "embedded" and run.data.tags["auto_evol.e_star"] == "tiny"


def test_optimize_through_an_openai_compatible_server_on_loopback(tmp_path, monkeypatch):
    """The provider path (LiteLLM/DSPy over HTTP) against a real server: llama.cpp's own, on 127.0.0.1."""
    import xllamacpp

    from auto_evol import optimize

    params = xllamacpp.CommonParams()
    params.model.path = str(backends.embedded_model_path())
    params.n_ctx = 4096
    params.verbosity = -1
    server = xllamacpp.Server(params)
    base = server.listening_address + "/v1"
    assert base.startswith("http://127.0.0.1:")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = optimize(data="gsm8k_seed", evol_model="openai/smollm2", optimizer_model="openai/smollm2",
                      api_base=base, steps=1, candidates=1, batch_size=1, dev_size=2, evol_max_tokens=64,
                      optimizer_max_tokens=96, cache_dir=None, track=False, name="via-http")
    assert result.usage["evol"]["calls"] >= 3 and result.usage["evol"]["errors"] == 0
    assert result.usage["evol"]["output_tokens"] > 0
    assert (tmp_path / "methods" / "via-http.md").is_file() and len(result.rates) == 2


def test_evolve_on_the_embedded_model(tmp_path):
    import json

    from auto_evol.evolve import EvolveOptions, evolve

    data = tmp_path / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": q}) for q in (
        "What is 12 times 7?", "Name three primary colors.", "Write a haiku about rain.")))
    result = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=1, judge=False,
                                  evol_max_tokens=96, answer_max_tokens=64, concurrency=4,
                                  cache_dir=str(tmp_path / "cache"), track=False))
    rows = [json.loads(line) for line in open(result.out)]
    rejects = [json.loads(line) for line in open(result.rejects)]
    assert result.complete and sum(r["round"] == 0 for r in rows) == 3       # seeds answered by the model
    assert sum(r["round"] == 1 for r in rows) + len(rejects) == 3             # every item kept or rejected
    assert all(r["output"] for r in rows) and result.calls["evol"]["output_tokens"] > 0
