"""Bad input at the command line: one clear line, exit code 2, no traceback, nothing written."""
from __future__ import annotations

import json

import pytest

from conftest import cli



@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "few.jsonl").write_text("\n".join(json.dumps({"prompt": f"q{i}"}) for i in range(5)))
    (tmp_path / "nocol.jsonl").write_text("\n".join(json.dumps({"body": f"q{i}"}) for i in range(80)))
    (tmp_path / "ok.jsonl").write_text("\n".join(json.dumps({"prompt": f"q{i}"}) for i in range(80)))
    (tmp_path / "blank.md").write_text("---\nname: blank\n---\n\n")
    (tmp_path / "bad.toml").write_text("steps = 2\ncandidatez = 3\n")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--data", "nope"], "unknown data set 'nope'"),
    (["--data", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--data", "empty.jsonl"], "empty.jsonl: no rows"),
    (["--data", "few.jsonl"], "few.jsonl: 5 rows are too few for a dev set of 50 plus a mini-batch of 10"),
    (["--data", "nocol.jsonl"], "nocol.jsonl: no instruction column found"),
    (["--data", "ok.jsonl", "--evol-model", "nosuchprovider/model"], "unknown provider 'nosuchprovider'"),
    (["--data", "ok.jsonl", "--optimizer-model", "openai/gpt-4o-mini"], "no API key in the environment (set OPENAI_API_KEY)"),
    (["--data", "ok.jsonl", "--evol-model", "anthropic/claude-sonnet-4-5"], "set ANTHROPIC_API_KEY"),
    (["--init-method", "blank.md"], "blank.md: not a method: it holds no prompt text"),
    (["--init-method", "nope"], "unknown method 'nope'"),
    (["--config", "bad.toml"], "bad.toml:2: unknown setting 'candidatez'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--evol-model", "gguf:/nowhere/model.gguf"], "/nowhere/model.gguf: GGUF file not found"),
])
def test_bad_input_is_one_clear_line(files, args, message):
    out = cli(["optimize", *args], files)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (files / "methods").exists() and not (files / "mlruns").exists()


def test_help_lists_the_options(tmp_path):
    out = cli(["optimize", "--help"], tmp_path)
    assert out.returncode == 0
    for flag in ("--data", "--config", "--init-method", "--candidates", "--evol-model", "--quiet"):
        assert flag in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--data", "nocol.jsonl"], "no instruction column found"),
    (["--data", "ok.jsonl", "--method", "nope"], "unknown method 'nope'"),
    (["--data", "ok.jsonl", "--format", "xml"], "unknown --format 'xml'"),
    (["--data", "ok.jsonl", "--on-bad-line", "maybe"], "--on-bad-line must be skip or fail"),
    (["--data", "ok.jsonl", "--evol-model", "openai/gpt-4o-mini"], "no API key in the environment"),
    (["--data", "ok.jsonl", "--method", "blank.md"], "not a method"),
])
def test_evolve_bad_input_is_one_clear_line(files, args, message):
    out = cli(["evolve", *args, "--out", "o.jsonl"], files)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: ") and message in lines[0], out.stderr
    assert not (files / "o.jsonl").exists()


def test_compare_takes_several_methods_after_one_flag_and_bad_input_is_one_line(files):
    out = cli(["compare", "--methods", "e0", "nope-method", "--data", "ok.jsonl", "--dev-size", "20", "--no-track"],
              files)
    # What a run may have left in methods/ (a demo's e*) is listed too, so only the shipped names are checked.
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("auto-evol: error: unknown method 'nope-method' (known: e0, evol-instruct-breadth, ")
    for name in ("evol-instruct-complicate-input", "evol-instruct-reasoning", "weak", "; or give a file path)"):
        assert name in out.stderr
    out = cli(["compare", "--methods", "e0", "weak", "--data", "ok.jsonl", "--dev-size", "5", "--no-track"], files)
    assert out.returncode == 2 and "too small for bootstrap intervals" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
