"""A real browser over the MLflow UI: headless Chromium (Debian's) driven by Playwright."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
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


def _ui(args, cwd) -> tuple[subprocess.Popen, list[str]]:
    """`auto-evol ui ARGS` as a user starts it; its output lines are collected as they come."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "auto_evol", "ui", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # a full pipe would stall it
    return proc, lines


def _first_line(lines: list[str], proc) -> str:
    deadline = time.time() + 120
    while not lines and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lines, f"auto-evol ui printed nothing (exit {proc.poll()})"
    return lines[0].strip()


@pytest.fixture
def ui_server(workdir):
    import json

    (workdir / "questions.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(40)))
    (workdir / "init.md").write_text("Rewrite (level 0) this: {instruction}\n")
    settings = dict(data="questions.jsonl", init_method="init.md", candidates=2, batch_size=3, dev_size=8, seed=1,
                    evol_model="openai/fake", optimizer_model="openai/fake", cache_dir=None)
    with FakeOpenAI() as fake:
        result = optimize(steps=2, api_base=fake.base, name="older", **settings)
        latest = optimize(steps=3, api_base=fake.base, name="latest", **settings)
    port = _free_port()
    proc, lines = _ui(["--port", str(port)], workdir)
    url = f"http://127.0.0.1:{port}"
    first = _first_line(lines, proc)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"MLflow UI did not start: {''.join(lines)[-2000:]}")
    yield url, result, latest, first
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _rows(result) -> int:
    """The runs of one optimize run: itself, its steps, their candidates."""
    return 1 + len(result.history) + sum(len(record.candidates) for record in result.history)


def _open(page, address: str, result) -> str:
    """The page's text once the optimize run's last candidate row is drawn, without a click."""
    page.goto(address)
    page.get_by_text("optimize questions", exact=True).first.wait_for(timeout=60_000)
    last = result.history[-1]
    page.get_by_text(f"step {last.step} candidate {len(last.candidates)}", exact=True).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    return page.inner_text("body")


def test_the_first_address_ui_prints_shows_the_optimize_run_and_its_failure_rates(ui_server, workdir):
    from playwright.sync_api import sync_playwright

    url, older, latest, first = ui_server
    assert first.startswith(f"{url}/#/experiments/") and latest.run_id in first
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        text = _open(page, first, latest)
        page.screenshot(path=str(SCREENSHOTS / "optimize_run.png"))

        # `--run ID` prints the same view for an older run (its first line, before its server would start)
        proc, lines = _ui(["--port", url.rsplit(":", 1)[1], "--run", older.run_id], workdir)
        try:
            given = _first_line(lines, proc)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        assert older.run_id in given
        older_text = _open(page, given, older)
        browser.close()

    for shown, result in ((text, latest), (older_text, older)):
        assert f"{_rows(result)} matching runs" in shown  # this run's rows, each one its own row
        for column in ("failure_rate", "failure_rate_e0", "failure_rate_e_star", "llm_calls", "auto_evol.accepted_steps"):
            assert column in shown
        assert f"{result.rates[0]:g}" in shown and f"{result.rates[-1]:g}" in shown  # e0 -> e*
        assert ",".join(map(str, result.accepted_steps)) in shown
        for record in result.history:
            assert f"step {record.step}" in shown
            for c, rate in zip(record.candidates, record.rates):
                assert f"step {record.step} candidate {c.index + 1}" in shown and f"{rate:g}" in shown
    assert (SCREENSHOTS / "optimize_run.png").stat().st_size > 10_000


def test_candidates_and_their_failure_rates_are_on_the_page(ui_server):
    from playwright.sync_api import sync_playwright

    import mlflow

    url, result, _, _ = ui_server
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
