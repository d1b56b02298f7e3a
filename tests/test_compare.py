"""`auto-evol compare` with a scripted LM: statistics, difficulty, diversity, plots, report, MLflow."""
from __future__ import annotations

import json
import re
from dataclasses import FrozenInstanceError, replace

import pytest

from auto_evol.compare import CompareOptions, compare
from auto_evol.core.errors import UserError
from auto_evol.algorithm.judge import difficulty_score
from conftest import scripted_llm
from fake_openai import compare_world as scripted_world


def test_difficulty_replies_that_are_not_a_score_are_not_guessed():
    assert difficulty_score("7") == 7 and difficulty_score(" 10. ") == 10 and difficulty_score("**4**") == 4
    assert difficulty_score("I would say 7") is None and difficulty_score("11") is None
    assert difficulty_score("") is None


def test_compare_reports_intervals_difficulty_diversity_and_plots(compare_project):
    import mlflow

    model, _ = scripted_llm(scripted_world, name="cmp")
    summary = compare(CompareOptions(methods=["level0.md", "level2.md", "evol-instruct"], data="q.jsonl", rounds=2,
                                     dev_size=20, out="reports/q", embeddings="tfidf", cache_dir=None),
                      evol=model)
    m0, m2 = summary.methods["level0.md"], summary.methods["level2.md"]
    assert m2.failure_rate.estimate < m0.failure_rate.estimate
    assert m0.failure_rate.low <= m0.failure_rate.estimate <= m0.failure_rate.high
    assert m2.difference_to_baseline.estimate < 0 and m0.difference_to_baseline.estimate == 0
    assert sum(m0.failures.values()) == round(m0.failure_rate.estimate * 20)
    # Complexity climbs round after round for a method that keeps evolving.
    rounds = summary.methods["evol-instruct"].per_round
    assert rounds[1].difficulty > rounds[0].difficulty > summary.seed_difficulty
    assert rounds[1].length_growth > rounds[0].length_growth > 1
    dev_ids = {json.loads(line)["item_id"] for line in open(compare_project / "reports/q/stages.jsonl")}
    # 'not sure' (questions 0, 10, 20...) is counted, not guessed.
    assert summary.unscored_difficulty == sum(int(i) % 10 == 0 for i in dev_ids)
    groups = summary.diversity.groups
    assert set(groups) == {"seeds", "level0.md", "level2.md", "evol-instruct"}
    assert all(0 <= g.mean_pairwise_distance <= 1 for g in groups.values() if g.mean_pairwise_distance)
    report = (compare_project / "reports/q/report.md").read_text()
    assert "| `level2.md` |" in report and re.search(r"\[[-+]\d", report)
    for png in ("failure_rate.png", "difficulty.png", "diversity_tsne.png"):
        assert (compare_project / "reports/q" / png).stat().st_size > 5_000
    run = mlflow.MlflowClient().get_run(summary.run_id)
    assert run.data.metrics["level2.failure_rate"] == m2.failure_rate.estimate
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(summary.run_id)} >= {"report.md", "failure_rate.png"}
    # summary.json is to_dict(), key for key (written before the run id was known), without the t-SNE points.
    written = (compare_project / "reports/q/summary.json").read_text()
    assert json.loads(written) == json.loads(json.dumps(replace(summary, run_id=None).to_dict(), default=str))
    assert list(json.loads(written)) == ["data", "dev_items", "rounds", "baseline", "confidence", "embeddings",
                                         "methods", "seed_difficulty", "unscored_difficulty", "calls", "seconds",
                                         "cost", "diversity"]
    assert list(json.loads(written)["diversity"]) == ["k", "groups"]
    assert json.loads(written)["methods"]["level2.md"]["failure_rate"] == {
        "estimate": m2.failure_rate.estimate, "low": m2.failure_rate.low, "high": m2.failure_rate.high}
    assert summary.to_dict()["run_id"] == summary.run_id
    with pytest.raises(FrozenInstanceError):
        summary.data = "other"


@pytest.mark.parametrize("options, message", [
    (dict(methods=["nope"]), "unknown method 'nope'"),
    (dict(methods=["e0"], dev_size=5), "too small for bootstrap intervals"),
    (dict(methods=["e0"], embeddings="word2vec"), "--embeddings must be"),
    (dict(methods=["e0"], baseline="weak"), "is not one of --methods"),
])
def test_bad_input(compare_project, options, message):
    with pytest.raises(UserError, match=re.escape(message)):
        compare(CompareOptions(data="q.jsonl", **options), evol=scripted_llm(scripted_world, name="bad")[0])


def test_quiet_compare_prints_the_report_path_only(compare_project, tmp_path):
    import os
    import subprocess
    import sys

    from fake_openai import FakeOpenAI

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", OPENAI_API_KEY="unused-by-fake")
    with FakeOpenAI() as fake:
        done = subprocess.run([sys.executable, "-m", "auto_evol", "compare", "--methods", "level0.md", "level2.md",
                               "--data", "q.jsonl", "--dev-size", "20", "--rounds", "1", "--evol-model", "openai/fake",
                               "--api-base", fake.base, "--embeddings", "tfidf", "--out", "rep", "--no-track",
                               "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                              cwd=compare_project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "rep/report.md\n"
    assert (compare_project / "rep" / "report.md").is_file()
