"""The first hour of a new user: a fresh install in an empty folder, before any optimize run."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

CLASSIC = ("evol-instruct-constraints", "evol-instruct-deepening", "evol-instruct-concretizing",
           "evol-instruct-reasoning", "evol-instruct-complicate-input", "evol-instruct-breadth")


def auto_evol(args, cwd, **env):
    """The installed `auto-evol` command (python -m auto_evol where no script was installed)."""
    script = Path(sys.executable).parent / "auto-evol"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "auto_evol"]
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    clean.update(LITELLM_LOCAL_MODEL_COST_MAP="True", COLUMNS="200", **env)
    return subprocess.run([*command, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)


@pytest.fixture
def empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_methods_list_in_an_empty_folder_shows_the_shipped_methods_and_an_empty_registry(empty):
    out = auto_evol(["methods", "list"], empty)
    assert out.returncode == 0, out.stderr
    for name in ("e0", "weak", *CLASSIC):
        assert name in out.stdout
    assert "evol-instruct (evolve, compare)" in out.stdout
    assert "prompt registry: empty" in out.stdout and "no MLflow store" in out.stdout
    assert not out.stderr.strip()
    assert list(empty.iterdir()) == []  # no mlruns/, nothing at all


def test_show_and_diff_need_no_store_and_a_registry_uri_says_there_is_none(empty):
    shown = auto_evol(["methods", "show", "e0"], empty)
    assert shown.returncode == 0 and "name: e0" in shown.stdout and "{instruction}" in shown.stdout
    diff = auto_evol(["methods", "diff", "e0", "weak"], empty)
    assert diff.returncode == 0 and "--- e0" in diff.stdout and "+++ weak" in diff.stdout
    missing = auto_evol(["methods", "show", "prompts:/gsm8k_seed@champion"], empty)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert "prompts:/gsm8k_seed@champion: no prompt registry here: no MLflow store at" in lines[0]
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("args", [["runs"], ["ui"], ["methods", "export", "0123456789abcdef", "--to", "x.md"]])
def test_commands_that_need_the_store_ask_for_one_in_one_line(empty, args):
    out = auto_evol(args, empty)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "no MLflow store at" in lines[0], out.stderr
    assert "auto-evol optimize" in lines[0]
    assert list(empty.iterdir()) == []


def test_a_store_without_prompts_is_an_empty_registry_too(workdir):
    from auto_evol.tracking import store

    store.client()  # a store, as an evolve or compare run leaves one, with no optimize run in it
    out = auto_evol(["methods", "list"], workdir)
    assert out.returncode == 0, out.stderr
    assert "e0" in out.stdout and "prompt registry at sqlite:///" in out.stdout and ": empty" in out.stdout


def test_version_names_the_package_and_what_it_runs_on(empty):
    import dspy
    import mlflow

    out = auto_evol(["--version"], empty)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    [line] = out.stdout.strip().splitlines()
    assert line.startswith(f"auto-evol {metadata.version('auto-evol')} ")
    assert f"DSPy {dspy.__version__}" in line and f"MLflow {mlflow.__version__}" in line
    assert f"xllamacpp {metadata.version('xllamacpp')}" in line
    assert list(empty.iterdir()) == []
