"""A real browser over the MLflow UI: headless Chromium (Debian's) driven by Playwright."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from auto_evol import optimize
from fake_openai import FakeOpenAI

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("AUTO_EVOL_SCREENSHOTS", Path(__file__).resolve().parent.parent / "screenshots"))
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _browser_available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


if not _browser_available():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium and the playwright package for the UI test")
    pytest.skip("needs Debian's chromium and playwright (scripts/test.sh --with-browser installs them)",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_server(workdir):
    import json

    (workdir / "questions.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(40)))
    (workdir / "init.md").write_text("Rewrite (level 0) this: {instruction}\n")
    with FakeOpenAI() as fake:
        result = optimize(data="questions.jsonl", init_method="init.md", steps=2, candidates=2, batch_size=3,
                          dev_size=8, seed=1, evol_model="openai/fake", optimizer_model="openai/fake",
                          api_base=fake.base, cache_dir=None)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "auto_evol", "ui", "--port", str(port)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"MLflow UI did not start: {proc.stdout.read()[-2000:]}")
    yield url, result
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_candidates_and_their_failure_rates_are_on_the_page(ui_server):
    from playwright.sync_api import sync_playwright

    import mlflow

    url, result = ui_server
    client = mlflow.MlflowClient()
    experiment = client.get_run(result.run_id).info.experiment_id
    candidates = [r for r in client.search_runs([experiment]) if r.data.tags.get("auto_evol.kind") == "candidate"]
    step1 = sorted((r for r in candidates if r.data.tags["auto_evol.step"] == "1"), key=lambda r: r.info.run_name)
    ids = ",".join(f'"{r.info.run_id}"' for r in step1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/#/experiments/{experiment}/runs")
        page.get_by_text("optimize questions").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "experiment_runs.png"))

        page.goto(f"{url}/#/compare-runs?runs=[{ids}]&experiments=[\"{experiment}\"]")
        for run in step1:
            page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("failures.unreadable_evolution").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        text = page.inner_text("body")
        page.screenshot(path=str(SCREENSHOTS / "compare_candidates.png"))
        browser.close()
    for run in step1:
        assert run.info.run_name in text
        assert f"{run.data.metrics['failure_rate']:g}" in text
    assert (SCREENSHOTS / "compare_candidates.png").stat().st_size > 10_000
