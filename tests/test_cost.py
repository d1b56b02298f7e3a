"""Cost: prices from LiteLLM's offline table, USD per role on every run, --dry-run estimates, --max-cost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auto_evol.llm import cost
from auto_evol import optimize
from auto_evol.cli.main import app
from auto_evol.evolve import EvolveOptions, evolve
from auto_evol.llm.client import Reply, RoleSettings, Usage
from conftest import scripted_llm
from fake_openai import evolve_world
from test_optimize import World

# USD per token for the scripted models: dear enough that a run costs whole cents.
EVOL_PRICE = {"input_cost_per_token": 1e-4, "output_cost_per_token": 3e-4}
OPT_PRICE = {"input_cost_per_token": 2e-4, "output_cost_per_token": 5e-4,
             "input_cost_per_token_batches": 1e-4, "output_cost_per_token_batches": 1e-4}


def litellm_table() -> dict:
    import importlib.util

    folder = Path(list(importlib.util.find_spec("litellm").submodule_search_locations)[0])
    return json.loads((folder / cost.TABLE_FILE).read_text())


@pytest.fixture
def prices(tmp_path, monkeypatch):
    """AUTO_EVOL_PRICES naming the scripted models' prices."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"test/evolve-world": EVOL_PRICE, "test/evol": EVOL_PRICE,
                                "test/optimizer": OPT_PRICE, "openai/my-own": EVOL_PRICE}))
    monkeypatch.setenv(cost.PRICES_ENV, str(path))
    return path


# --- prices ------------------------------------------------------------------------------------------

def test_known_and_provider_prefixed_models_take_litellms_prices():
    table = litellm_table()
    for model, key in (("gpt-4o-mini", "gpt-4o-mini"), ("openai/gpt-4o-mini", "gpt-4o-mini"),
                       ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5")):
        price = cost.lookup(model)
        assert price is not None and price.model == model
        assert (price.input, price.output) == (table[key]["input_cost_per_token"], table[key]["output_cost_per_token"])
        assert "LiteLLM" in price.source and key in price.source and not price.free
    # the providers' own address is the provider; any other server's price is unknown
    assert cost.lookup("openai/gpt-4o-mini", "https://api.openai.com/v1") == cost.lookup("openai/gpt-4o-mini")
    assert cost.lookup("openai/gpt-4o-mini", "http://127.0.0.1:8000/v1") is None
    assert "--api-base" in cost.no_price("openai/gpt-4o-mini", "http://u:secret@127.0.0.1:8000/v1")
    assert "secret" not in cost.no_price("openai/gpt-4o-mini", "http://u:secret@127.0.0.1:8000/v1")


def test_unknown_models_have_no_price_and_local_ones_are_free():
    for model in ("openai/no-such-model-xyz", "nowhere/else", "anthropic/gpt-4o-mini"):   # the last: wrong provider
        assert cost.lookup(model) is None
        assert "no known price for " + model in cost.no_price(model)
    for model in (None, "embedded", "gguf:/models/x.gguf", "ollama_chat/llama3"):
        price = cost.lookup(model)
        assert price is not None and price.free and price.source == cost.LOCAL_FREE
    assert cost.role_cost("evol", {"input_tokens": 10**6}, cost.lookup("embedded"), None).note == cost.LOCAL_FREE


def test_batch_prices_come_from_the_table_or_half_the_online_price(prices):
    table = litellm_table()["gpt-4o-mini"]
    listed = cost.lookup("openai/gpt-4o-mini")
    assert (listed.input_batch, listed.output_batch) == (table["input_cost_per_token_batches"],
                                                         table["output_cost_per_token_batches"])
    assert "batch prices" in listed.batch_source
    halved = cost.lookup("test/evol")          # no *_batches fields: the documented 50% discount
    assert (halved.input_batch, halved.output_batch) == (0.5e-4, 1.5e-4) and "50%" in halved.batch_source
    assert cost.lookup("test/optimizer").output_batch == 1e-4
    assert str(prices) in cost.lookup("test/evol").source


def test_cost_arithmetic_counts_paid_tokens_only():
    price = cost.Price("m", 2e-6, 8e-6, 1e-6, 4e-6, "test", "test")
    usage = Usage()
    usage.add(Reply("a", input_tokens=1000, output_tokens=500), 0.1)
    usage.add(Reply("b", input_tokens=4000, output_tokens=4000, cached=True), 0.1)   # a cache hit: not paid for
    usage.add(None, 0.1)                                                               # a failed call
    snapshot = usage.snapshot()
    assert cost.cost(snapshot, price) == pytest.approx(1000 * 2e-6 + 500 * 8e-6)
    assert cost.cost(snapshot, price, batch=True) == pytest.approx(1000 * 1e-6 + 500 * 4e-6)
    costs = cost.costs({"evol": snapshot, "answer": snapshot},
                       {"evol": RoleSettings("gpt-4o-mini"), "answer": RoleSettings("openai/no-such-model-xyz")})
    assert costs["evol"].usd == pytest.approx(1000 * 1.5e-7 + 500 * 6e-7) and costs["evol"].calls == 3
    assert costs["answer"].usd is None and cost.total(costs) is None   # never a partial sum
    assert "no known price for openai/no-such-model-xyz" in cost.summary(costs)
    assert cost.metrics(costs) == {"cost.evol": costs["evol"].usd}


def test_the_price_table_is_read_without_importing_litellm():
    code = ("import sys; from auto_evol.llm import cost; assert cost.lookup('openai/gpt-4o-mini') is not None; "
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- --dry-run ---------------------------------------------------------------------------------------

def test_evolve_dry_run_prices_each_role(tmp_path):
    data = tmp_path / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Question number {i}?"}) for i in range(12)))
    estimate = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "o.jsonl"), rounds=2,
                                    evol_model="openai/gpt-4o-mini", answer_model="anthropic/claude-sonnet-4-5"),
                      dry_run=True)
    roles = estimate["roles"]
    assert roles["evol"]["calls"] == 12 * 2 * 2 and roles["answer"]["calls"] == 12 + 12 * 2   # judge calls: evol
    assert roles["evol"]["calls"] + roles["answer"]["calls"] == estimate["calls"]
    for role, model in (("evol", "openai/gpt-4o-mini"), ("answer", "anthropic/claude-sonnet-4-5")):
        price = cost.lookup(model)
        r = roles[role]
        assert r["model"] == model and r["cost_usd"] == pytest.approx(
            r["input_tokens"] * price.input + r["output_tokens"] * price.output, abs=1e-6)
        assert r["cost_usd"] > 0
    assert estimate["cost_usd"] == pytest.approx(roles["evol"]["cost_usd"] + roles["answer"]["cost_usd"], abs=1e-5)

    unknown = evolve(EvolveOptions(data=str(data), out=str(tmp_path / "o.jsonl"), evol_model="openai/no-such-model-xyz",
                                   answer_model="embedded"), dry_run=True)
    assert unknown["roles"]["evol"]["cost_usd"] == "no known price for openai/no-such-model-xyz"
    assert unknown["roles"]["answer"]["cost_usd"] == 0
    assert unknown["cost_usd"] == "no known price for openai/no-such-model-xyz"


def test_optimize_dry_run_prints_an_upper_bound_per_phase_and_role(project):
    out = CliRunner().invoke(app, ["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--steps", "2",
                                   "-m", "2", "--batch-size", "3", "--dev-size", "8", "--evol-model",
                                   "openai/gpt-4o-mini", "--optimizer-model", "anthropic/claude-sonnet-4-5",
                                   "--dry-run"])
    assert out.exit_code == 0, out.output
    estimate = json.loads(out.stdout)
    assert estimate["upper_bound"] is True and "upper bound" in estimate["assumes"]
    phases = {name: p["calls"] for name, p in estimate["phases"].items()}
    assert phases == {"baseline": 16, "trajectory": 2 * 3, "analysis": 2 * 2, "optimization": 2 * 2,
                      "dev evaluation": 2 * 2 * 8 * 2, "champion check": 16}
    assert estimate["roles"]["evol"]["calls"] == 16 + 6 + 64 + 16 and estimate["roles"]["optimizer"]["calls"] == 8
    assert estimate["roles"]["evol"]["output_tokens"] == 102 * 1024      # every reply at --evol-max-tokens
    price = cost.lookup("anthropic/claude-sonnet-4-5")
    opt = estimate["roles"]["optimizer"]
    assert opt["cost_usd"] == pytest.approx(opt["input_tokens"] * price.input + opt["output_tokens"] * price.output,
                                            abs=1e-6)
    assert estimate["cost_usd"] == pytest.approx(estimate["roles"]["evol"]["cost_usd"] + opt["cost_usd"], abs=1e-5)
    assert not Path("mlruns").exists() and not Path("methods").exists()   # nothing run, nothing recorded


# --- every run reports its cost ----------------------------------------------------------------------

def run_evolve(folder: Path, **extra):
    folder.mkdir(exist_ok=True)
    data = folder / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?"}) for i in range(30)))
    model, engine = scripted_llm(evolve_world, name="evolve-world")
    options = EvolveOptions(data=str(data), out=str(folder / "out.jsonl"), rounds=2, cache_dir=None, track=False,
                            concurrency=8, **extra)
    return evolve(options, evol=model, answerer=model, observers=[]), engine


def usd(result) -> float:
    return cost.total(result.costs)


def test_evolve_reports_its_cost_and_max_cost_stops_before_passing_it(tmp_path, prices):
    full, _ = run_evolve(tmp_path / "full")
    [spent] = full.costs.values()          # one Llm answers both roles here
    assert spent.usd == pytest.approx(spent.input_tokens * 1e-4 + spent.output_tokens * 3e-4) and spent.usd > 0
    stats = json.loads((tmp_path / "full" / "out.jsonl.work" / "stats.json").read_text())
    assert stats["cost"]["total_usd"] == pytest.approx(spent.usd)

    cap = usd(full) / 3
    stopped, _ = run_evolve(tmp_path / "capped", max_cost=cap)
    assert not stopped.complete and stopped.stopped == "--max-cost"
    assert cap / 2 < usd(stopped) <= cap            # stopped near the cap, not past it
    finished, _ = run_evolve(tmp_path / "capped")             # a rerun goes on (its own, uncapped, count)
    assert finished.complete and usd(stopped) + usd(finished) == pytest.approx(usd(full), rel=0.02)
    read = lambda path: sorted(json.loads(line)["id"] for line in path.read_text().splitlines())   # noqa: E731
    assert read(finished.out) == read(full.out)


def test_evolve_logs_cost_to_mlflow(workdir, prices):
    import mlflow

    data = workdir / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?"}) for i in range(8)))
    model, _ = scripted_llm(evolve_world, name="evolve-world")
    result = evolve(EvolveOptions(data=str(data), out=str(workdir / "out.jsonl"), rounds=1, cache_dir=None),
                    evol=model, answerer=model)
    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["cost_usd"] == pytest.approx(usd(result)) and metrics["cost_usd"] > 0
    assert metrics["cost.evol_and_answer"] == pytest.approx(usd(result))


def run_optimize(project, **options):
    evol, _ = scripted_llm(World().evol, name="evol")
    opt, _ = scripted_llm(World().optimizer, temperature=0.6, name="optimizer")
    settings = dict(data="questions.jsonl", init_method="init.md", steps=3, candidates=2, batch_size=3, dev_size=8,
                    seed=1, concurrency=1, methods_dir="methods", cache_dir=None)
    settings.update(options)
    return optimize(evol=evol, optimizer=opt, **settings)


def test_optimize_logs_cost_per_run_step_and_candidate(project, prices):
    import mlflow

    result = run_optimize(project)
    expected = {role: u["input_tokens"] * p["input_cost_per_token"] + u["output_tokens"] * p["output_cost_per_token"]
                for (role, u), p in zip(result.usage.items(), (EVOL_PRICE, OPT_PRICE))}
    assert result.costs["evol"].usd == pytest.approx(expected["evol"]) and expected["optimizer"] > 0
    c = mlflow.MlflowClient()
    parent = c.get_run(result.run_id)
    assert parent.data.metrics["cost_usd"] == pytest.approx(sum(expected.values()))
    assert parent.data.metrics["cost.evol"] == pytest.approx(expected["evol"])
    assert parent.data.metrics["cost.optimizer"] == pytest.approx(expected["optimizer"])
    runs = c.search_runs([parent.info.experiment_id], max_results=100)
    steps = {int(r.data.tags["auto_evol.step"]): r for r in runs if r.data.tags.get("auto_evol.kind") == "step"}
    for record in result.history:
        step_run = steps[record.step]
        assert step_run.data.metrics["cost_usd"] == pytest.approx(record.cost) and record.cost > 0
        assert step_run.data.metrics["cost.optimizer"] > 0
        candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == step_run.info.run_id]
        # the candidates' dev evaluations add up to the step's dev-evaluation cost
        assert sum(r.data.metrics["cost_usd"] for r in candidates) == pytest.approx(record.dev_cost)
        assert record.dev_cost > 0 and record.dev_cost < record.cost
    baseline = sum(expected.values()) - sum(r.cost for r in result.history)
    assert baseline > 0    # e0 on the dev set is paid for too, outside the steps


def test_optimize_max_cost_stops_after_a_step_and_resume_finishes(project, prices):
    import mlflow

    reference = run_optimize(project, track=False, methods_dir="reference")
    first, second = reference.history[0].cost, reference.history[1].cost
    baseline = reference.cost - sum(r.cost for r in reference.history)
    cap = baseline + first + 0.5 * min(first, second)   # room for step 1, not for another like it
    stopped = run_optimize(project, max_cost=cap)
    assert stopped.stopped == "--max-cost" and len(stopped.history) == 1 and stopped.method_path is None
    assert stopped.process_cost <= cap
    c = mlflow.MlflowClient()
    run = c.get_run(stopped.run_id)
    assert run.info.status == "KILLED" and run.data.tags["auto_evol.stopped"] == "--max-cost"
    resumed = run_optimize(project, resume=stopped.run_id)
    assert resumed.stopped is None and resumed.rates == reference.rates and resumed.method_path.exists()
    assert c.get_run(stopped.run_id).info.status == "FINISHED"
    assert resumed.cost == pytest.approx(reference.cost)   # the run's cost counts both processes


def test_max_cost_without_a_price_is_refused_before_any_call(tmp_path):
    data = tmp_path / "seeds.jsonl"
    data.write_text(json.dumps({"instruction": "Question number 1?"}) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", cost.PRICES_ENV)}
    for args in (["evolve", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--evol-model",
                  "openai/no-such-model-xyz", "--max-cost", "1"],
                 ["optimize", "--data", "gsm8k_seed", "--optimizer-model", "openai/no-such-model-xyz",
                  "--max-cost", "1"]):
        out = subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        [line] = out.stderr.strip().splitlines()
        assert "--max-cost: no known price for openai/no-such-model-xyz" in line
    assert not (tmp_path / "o.jsonl.work").exists() and not (tmp_path / "mlruns").exists()


def test_compare_reports_cost_in_its_summary_table_and_mlflow(workdir, prices, monkeypatch):
    import mlflow

    from auto_evol import compare as compare_mod
    from test_compare import scripted_world

    (workdir / "q.jsonl").write_text("\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"})
                                               for i in range(30)))
    (workdir / "level0.md").write_text("Rewrite (level 0) this: {instruction}\n")
    model, _ = scripted_llm(scripted_world, name="evol")        # priced as test/evol
    summary = compare_mod.compare(compare_mod.CompareOptions(methods=["level0.md", "e0"], data="q.jsonl", rounds=1,
                                                             dev_size=10, out="reports/q", embeddings="tfidf",
                                                             cache_dir=None), evol=model)
    [spent] = summary.costs.values()
    assert spent.role == "evol" and spent.usd == pytest.approx(spent.input_tokens * 1e-4 + spent.output_tokens * 3e-4)
    written = json.loads((workdir / "reports/q/summary.json").read_text())
    assert written["cost"]["total_usd"] == pytest.approx(spent.usd) and spent.usd > 0
    assert mlflow.MlflowClient().get_run(summary.run_id).data.metrics["cost_usd"] == pytest.approx(spent.usd)

    monkeypatch.setattr(compare_mod, "compare", lambda options, **kw: summary)
    out = CliRunner().invoke(app, ["compare", "--methods", "level0.md", "--methods", "e0", "--data", "q.jsonl"],
                             env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert f"cost: evol: {spent.input_tokens:,} in + {spent.output_tokens:,} out tokens" in out.stdout
    assert f"total {cost.usd_text(spent.usd)}" in out.stdout


# --- --batch: batched calls at the batch price ----------------------------------------------------------

# The batch fake's model (tests/fake_batch.py on 127.0.0.1, priced through AUTO_EVOL_PRICES): its batch prices
# are the table's *_batches fields, far from both the online price and its half.
FAKE_PRICE = {"input_cost_per_token": 1e-4, "output_cost_per_token": 4e-4,
              "input_cost_per_token_batches": 3e-5, "output_cost_per_token_batches": 1e-4}
ONLINE, BATCH = (1e-4, 4e-4), (3e-5, 1e-4)


@pytest.fixture
def fake_prices(tmp_path, monkeypatch):
    from auto_evol.llm.batch import batcher as batch_mod

    path = tmp_path / "fake-prices.json"
    path.write_text(json.dumps({"openai/fake": FAKE_PRICE, "openai/gpt-4o-mini": FAKE_PRICE}))
    monkeypatch.setenv(cost.PRICES_ENV, str(path))
    monkeypatch.setenv(batch_mod.POLL_ENV, "0.01")
    return path


def priced(usage, per_token) -> float:
    return usage["input_tokens"] * per_token[0] + usage["output_tokens"] * per_token[1]


def minus(a, b) -> dict:
    return {k: a[k] - b.get(k, 0) for k in ("input_tokens", "output_tokens")}


def batched_evolve(folder: Path, base: str, **extra):
    folder.mkdir(exist_ok=True)
    data = folder / "seeds.jsonl"
    if not data.exists():
        data.write_text("\n".join(json.dumps({"id": f"s{i}", "instruction": f"Question number {i}?"})
                                  for i in range(30)))
    options = EvolveOptions(data=str(data), out=str(folder / "out.jsonl"), rounds=2, evol_model="openai/fake",
                            api_base=base, track=False, **extra)
    return evolve(options, observers=[])


def test_a_batched_evolve_run_is_billed_at_the_batch_price(tmp_path, fake_prices, monkeypatch):
    from fake_batch import FakeOpenAIBatch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        result = batched_evolve(tmp_path / "all", fake.base, batch="all")
        assert fake.batches_created and not fake.chat_calls
    assert set(result.costs) == {"evol", "answer"}
    for role, spent in result.costs.items():
        usage = result.calls[role]
        assert spent.usd == pytest.approx(priced(usage, BATCH)) and spent.usd < priced(usage, ONLINE) / 2
        assert (spent.batch_calls, spent.batch_input_tokens) == (usage["calls"], usage["input_tokens"])
        assert spent.to_dict()["batch"] == {k: usage[k] for k in ("calls", "input_tokens", "output_tokens")}
        assert "at the batch price" in spent.describe()
    stats = json.loads((tmp_path / "all" / "out.jsonl.work" / "stats.json").read_text())
    assert stats["cost"]["total_usd"] == pytest.approx(usd(result))
    assert stats["cost"]["evol"]["cost_usd"] == pytest.approx(result.costs["evol"].usd, abs=1e-6)

    # --batch evol: the evolutions (and verdicts) at the batch price, the answers online.
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        mixed = batched_evolve(tmp_path / "evol", fake.base, batch="evol")
        assert fake.batches_created and fake.chat_calls
    assert mixed.costs["evol"].usd == pytest.approx(priced(mixed.calls["evol"], BATCH))
    assert mixed.costs["answer"].usd == pytest.approx(priced(mixed.calls["answer"], ONLINE))
    assert not mixed.costs["answer"].batch_calls and "batch" not in mixed.costs["answer"].to_dict()


def test_evolve_max_cost_with_batch_counts_the_batch_price_and_sends_no_probe_batch(tmp_path, fake_prices,
                                                                                    monkeypatch):
    from fake_batch import FakeOpenAIBatch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sizes = dict(evol_max_tokens=256, answer_max_tokens=256)   # the first wave's bound per call (prompts are shorter)
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        full = batched_evolve(tmp_path / "full", fake.base, batch="all", **sizes)
    cap = usd(full) / 2
    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        stopped = batched_evolve(tmp_path / "capped", fake.base, batch="all", max_cost=cap, **sizes)
        first = len(fake.submitted[0])
        finished = batched_evolve(tmp_path / "capped", fake.base, batch="all", **sizes)   # a rerun goes on
    assert not stopped.complete and stopped.stopped == "--max-cost"
    # Counted at the batch price (online prices, ~3.5x these, would stop below a third of the cap), kept by
    # estimate: the first wave sized by the price bound, each later one by what the last cost.
    assert cap * 0.6 < usd(stopped) <= cap
    assert first > 1        # no phase starts with an item alone: that would be a batch of one request
    assert finished.complete and usd(stopped) + usd(finished) == pytest.approx(usd(full), rel=0.05)


def test_optimize_batch_prices_its_dev_evaluation_at_the_batch_price(project, fake_prices):
    import mlflow

    from fake_batch import FakeOpenAIBatch

    with FakeOpenAIBatch(polls_to_finish=1) as fake:
        result = optimize(data="questions.jsonl", init_method="init.md", steps=2, candidates=2, batch_size=3,
                          dev_size=8, seed=1, evol_model="openai/fake", optimizer_model="openai/fake",
                          api_base=fake.base, cache_dir=None, concurrency=2, patience=5, batch="all")
        assert fake.batches_created
    evol, batched = result.usage["evol"], result.batch_usage["evol"]
    assert 0 < batched["calls"] < evol["calls"]      # the trajectories went online
    expected = priced(minus(evol, batched), ONLINE) + priced(batched, BATCH)
    assert result.costs["evol"].usd == pytest.approx(expected)
    assert result.costs["evol"].batch_calls == batched["calls"]
    assert result.costs["optimizer"].usd == pytest.approx(priced(result.usage["optimizer"], ONLINE))
    assert not result.costs["optimizer"].batch_calls
    assert result.process_cost == pytest.approx(result.cost)
    c = mlflow.MlflowClient()
    parent = c.get_run(result.run_id).data.metrics
    assert parent["cost.evol"] == pytest.approx(expected) and parent["cost_usd"] == pytest.approx(result.cost)
    runs = c.search_runs([c.get_run(result.run_id).info.experiment_id], max_results=100)
    for record in result.history:
        # the dev evaluation: every call batched, at the batch price; the step's trajectory online
        assert record.dev_batch_usage["calls"] == record.dev_usage["calls"] > 0
        assert record.dev_cost == pytest.approx(priced(record.dev_usage, BATCH))
        step_evol, step_batched = record.usage["evol"], record.batch_usage["evol"]
        assert step_batched["calls"] == record.dev_usage["calls"] < step_evol["calls"]
        assert record.costs["evol"].usd == pytest.approx(priced(minus(step_evol, step_batched), ONLINE)
                                                         + priced(step_batched, BATCH))
        [step_run] = [r for r in runs if r.data.tags.get("auto_evol.kind") == "step"
                      and r.data.tags["auto_evol.step"] == str(record.step)]
        assert step_run.data.metrics["cost_usd"] == pytest.approx(record.cost)
        assert step_run.data.metrics["cost_usd.dev_evaluation"] == pytest.approx(record.dev_cost)
        candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == step_run.info.run_id]
        assert sum(r.data.metrics["cost_usd"] for r in candidates) == pytest.approx(record.dev_cost)
    # the checkpoint keeps the batched part, for a resumed run's cost
    checkpoint = json.loads(Path(c.download_artifacts(result.run_id, "checkpoint.json")).read_text())
    assert checkpoint["spent_batch"]["evol"]["calls"] == batched["calls"]


def test_compare_batch_prices_the_batched_phases_at_the_batch_price(compare_project, fake_prices):
    import dspy

    from auto_evol.compare import CompareOptions, compare
    from auto_evol.llm.client import Llm
    from fake_batch import FakeOpenAIBatch
    from fake_openai import compare_world

    options = dict(methods=["level0.md", "level2.md"], data="q.jsonl", rounds=2, dev_size=20, embeddings="tfidf",
                   cache_dir=None, track=False, evol_model="openai/fake")
    with FakeOpenAIBatch(compare_world, polls_to_finish=1) as fake:
        online = compare(CompareOptions(**options, api_base=fake.base, out="online"))
        # --batch evol: the rounds (evol role) in batches, the difficulty judge (a role of its own) online
        split = compare(CompareOptions(**options, api_base=fake.base, out="split", batch="evol"))
        # One Llm for both (the judge is the evol role): its rounds batched, its difficulty scores online
        one = Llm(RoleSettings("openai/fake", fake.base, 0.0, None, 1024),
                  dspy.LM("openai/fake", api_base=fake.base, api_key="test", cache=False), structured=True)
        mixed = compare(CompareOptions(**options, api_base=fake.base, out="mixed", batch="evol"), evol=one)
        assert fake.batches_created and fake.chat_calls
    assert split.costs["evol"].usd == pytest.approx(priced(split.calls["evol"], BATCH))
    assert split.costs["evol"].batch_calls == split.calls["evol"]["calls"] == online.calls["evol"]["calls"]
    assert split.costs["judge"].usd == pytest.approx(priced(split.calls["judge"], ONLINE))
    assert online.costs["evol"].usd == pytest.approx(priced(online.calls["evol"], ONLINE))
    assert not online.costs["evol"].batch_calls

    [spent] = mixed.costs.values()
    usage = mixed.calls["evol"]
    assert usage["calls"] == online.calls["evol"]["calls"] + online.calls["judge"]["calls"]
    part = {"input_tokens": spent.batch_input_tokens, "output_tokens": spent.batch_output_tokens}
    assert spent.batch_calls == online.calls["evol"]["calls"] < usage["calls"]
    assert spent.usd == pytest.approx(priced(minus(usage, part), ONLINE) + priced(part, BATCH))
    written = json.loads((compare_project / "mixed" / "summary.json").read_text())
    assert written["cost"]["total_usd"] == pytest.approx(spent.usd)
    assert written["cost"]["evol"]["batch"]["calls"] == spent.batch_calls


def test_dry_runs_with_batch_show_batch_prices(project, fake_prices):
    data = project / "seeds.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Question number {i}?"}) for i in range(12)))
    kw = dict(data=str(data), out=str(project / "o.jsonl"), rounds=2, evol_model="openai/fake")
    online = evolve(EvolveOptions(**kw), dry_run=True)
    batched = evolve(EvolveOptions(**kw, batch="all"), dry_run=True)
    mixed = evolve(EvolveOptions(**kw, batch="answer"), dry_run=True)
    for role in ("evol", "answer"):
        r = online["roles"][role]
        assert r["price"] == "online" and r["cost_usd"] == pytest.approx(priced(r, ONLINE), abs=1e-6)
        b = batched["roles"][role]
        assert b["price"] == "batch" and b["cost_usd"] == pytest.approx(priced(b, BATCH), abs=1e-6)
        assert b["calls"] == r["calls"] and b["cost_usd"] < r["cost_usd"] / 2
    assert mixed["roles"]["evol"]["cost_usd"] == online["roles"]["evol"]["cost_usd"]
    assert mixed["roles"]["answer"]["cost_usd"] == batched["roles"]["answer"]["cost_usd"]
    assert "batch prices" in batched["assumes"] and "online (not batch)" in online["assumes"]

    args = ["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--steps", "2", "-m", "2",
            "--batch-size", "3", "--dev-size", "8", "--evol-model", "openai/gpt-4o-mini", "--optimizer-model",
            "openai/gpt-4o-mini", "--dry-run"]
    plain, with_batch = (json.loads(CliRunner().invoke(app, a).stdout) for a in (args, args + ["--batch", "all"]))
    phases = with_batch["phases"]
    on_batch = {name for name, p in phases.items() if p["price"] == "batch"}
    assert on_batch == {"baseline", "dev evaluation", "champion check"}
    assert {p["price"] for p in plain["phases"].values()} == {"online"}
    evol = with_batch["roles"]["evol"]
    expected = sum(priced(p, BATCH if name in on_batch else ONLINE) for name, p in phases.items()
                   if p["role"] == "evol")
    assert evol["cost_usd"] == pytest.approx(expected, abs=1e-5) and evol["calls"] == plain["roles"]["evol"]["calls"]
    assert evol["cost_usd"] < plain["roles"]["evol"]["cost_usd"]
    assert with_batch["roles"]["optimizer"] == plain["roles"]["optimizer"]     # online either way
    assert "batch prices" in with_batch["assumes"]
