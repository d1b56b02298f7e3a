"""How every verb turns flags and a --config preset into its options, and what --quiet leaves out.

The verbs run in-process with their work replaced by a stand-in that keeps the options it was given,
so these tests see exactly what a run would get, with no LLM and no data.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from auto_evol.cli.main import RENAMED, SWITCHES, app


def invoke(args):
    return CliRunner().invoke(app, args, catch_exceptions=False)


@pytest.fixture
def preset(workdir):
    """A preset as optimize takes it; `rounds` is optimize's (per trajectory), which compare must not take."""
    (workdir / "p.toml").write_text('steps = 2\ncandidates = 3\nconcurrency = 2\ncache-dir = "preset-cache"\n'
                                    'dev-size = 30\nseed = 7\nrounds = 1\nevol-model = "openai/from-preset"\n'
                                    'optimizer-model = "openai/optimizer-from-preset"\nevol-max-tokens = 300\n')
    return workdir / "p.toml"


def test_optimize_flag_beats_preset_beats_default(preset, monkeypatch):
    optimize_mod = importlib.import_module("auto_evol.optimize")   # the package exports the function

    seen = []
    monkeypatch.setattr(optimize_mod, "optimize", lambda options, **kw: seen.append(options)
                        or SimpleNamespace(method_path=Path("methods/x.md")))
    out = invoke(["optimize", "--config", str(preset), "--steps", "10", "--no-cache", "--quiet"])
    assert out.exit_code == 0 and out.stdout == "methods/x.md\n", out.stdout
    [options] = seen
    defaults = optimize_mod.Options()
    assert options.steps == 10                # typed, though 10 is the default: the flag wins over steps = 2
    assert options.candidates == 3 and options.concurrency == 2 and options.dev_size == 30   # the preset
    assert options.cache_dir is None          # --no-cache over the preset's cache-dir
    assert options.batch_size == defaults.batch_size and options.track is True             # neither: the default
    # No preset: the typed flags over the defaults, nothing else.
    seen.clear()
    invoke(["optimize", "--steps", "3", "--no-track", "--quiet"])
    assert seen == [dataclasses.replace(defaults, steps=3, track=False)]


def test_compare_flag_beats_preset_beats_default_and_takes_only_its_own_settings(preset, monkeypatch):
    compare_mod = importlib.import_module("auto_evol.compare")   # the package exports the function

    seen = []
    monkeypatch.setattr(compare_mod, "compare", lambda options, **kw: seen.append(options)
                        or SimpleNamespace(data="q"))
    out = invoke(["compare", "--methods", "e0", "--methods", "weak", "--config", str(preset), "--seed", "0",
                  "--out", "rep", "--quiet"])
    assert out.exit_code == 0 and out.stdout == "rep/report.md\n", out.stdout
    [options] = seen
    assert options.methods == ["e0", "weak"]
    assert options.seed == 0                  # typed 0 (the default) beats the preset's 7
    assert options.dev_size == 30 and options.evol_model == "openai/from-preset" and options.concurrency == 2
    assert options.cache_dir == "preset-cache" and options.evol_max_tokens == 300
    assert options.rounds == compare_mod.CompareOptions(methods=[]).rounds == 3   # optimize's rounds = 1 is not compare's
    assert options.track is True and options.confidence == 0.95


def test_check_takes_a_preset_and_a_flag_beats_it(preset, monkeypatch):
    from auto_evol.llm import backends
    from auto_evol.llm import check as check_mod

    probed = []

    def probe(settings, role):
        probed.append((role, settings))
        return check_mod.Verdict(role, settings.label, True, True, True, True)

    monkeypatch.setattr(check_mod, "probe", probe)
    monkeypatch.setattr(backends, "check", lambda settings, flag: None)
    out = invoke(["check", "--config", str(preset), "--optimizer-model", "openai/typed"])
    assert out.exit_code == 0, out.stdout
    roles = dict(probed)
    assert roles["evol"].model == "openai/from-preset" and roles["evol"].max_tokens == 300
    assert roles["optimizer"].model == "openai/typed"


def test_evolve_passes_only_typed_flags_and_its_shown_defaults_are_the_dataclass_defaults(workdir, monkeypatch):
    evolve_mod = importlib.import_module("auto_evol.evolve")   # the package exports the function

    seen = []
    monkeypatch.setattr(evolve_mod, "evolve", lambda options, **kw: seen.append(options)
                        or SimpleNamespace(complete=True, out=Path("o.jsonl")))
    out = invoke(["evolve", "--data", "s.jsonl", "--quiet"])
    assert out.exit_code == 0 and out.stdout == "o.jsonl\n", out.stdout
    assert seen == [evolve_mod.EvolveOptions(data="s.jsonl")]
    seen.clear()
    invoke(["evolve", "--data", "s.jsonl", "--method", "e0", "--method", "weak=2", "--no-judge", "--no-track",
            "--rounds", "2", "--quiet"])
    assert seen == [evolve_mod.EvolveOptions(data="s.jsonl", methods=["e0", "weak=2"], judge=False, track=False,
                                             rounds=2)]


@pytest.mark.parametrize("verb, options_type", [
    ("optimize", "auto_evol.optimize:Options"), ("evolve", "auto_evol.evolve:EvolveOptions"),
    ("compare", "auto_evol.compare:CompareOptions"), ("check", "auto_evol.optimize:Options")])
def test_a_default_that_help_shows_is_the_one_a_run_uses(verb, options_type):
    """A flag left out is not passed, so the dataclass decides; a default written on the flag too must agree."""
    module, name = options_type.split(":")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    command = typer.main.get_command(app).commands[verb]
    compared = 0
    for param in command.params:
        field = fields.get(RENAMED.get(param.name, param.name))
        if field is None or param.name in SWITCHES or param.default is None or param.required:
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if param.name == "method":
            assert list(param.default) == default
        else:
            assert param.default == default, f"{verb} --{param.name}"
        compared += 1
    assert compared or verb == "optimize"     # optimize's flags all default to None: the dataclass decides


def test_quiet_check_prints_only_the_roles_that_cannot_work(monkeypatch):
    from auto_evol.llm import backends, providers
    from auto_evol.llm import check as check_mod

    def probe(settings, role):
        return check_mod.Verdict(role, settings.label, role == "evol", role == "evol" or None, None, None,
                                 "" if role == "evol" else "connection refused")

    monkeypatch.setattr(check_mod, "probe", probe)
    monkeypatch.setattr(backends, "check", lambda settings, flag: None)
    monkeypatch.setattr(providers, "adapt", lambda settings: (settings, ["a notice"]))
    args = ["check", "--evol-model", "openai/a", "--optimizer-model", "openai/b"]
    loud, quiet = invoke(args), invoke([*args, "--quiet"])
    assert loud.exit_code == quiet.exit_code == 2
    assert len(loud.stdout.splitlines()) == 4     # a notice and a verdict per role
    [line] = quiet.stdout.splitlines()
    assert line.startswith("optimizer openai/b: reachable no") and "connection refused" in line
    # Every role usable: nothing at all, exit 0.
    monkeypatch.setattr(check_mod, "probe", lambda s, role: check_mod.Verdict(role, s.label, True, True, True, True))
    silent = invoke([*args, "-q"])
    assert silent.exit_code == 0 and silent.stdout == ""


def test_quiet_runs_prints_the_run_ids_only(monkeypatch):
    from auto_evol.tracking import store

    rows = [{"data": "gsm8k_seed", "evol_model": "embedded", "optimizer_model": "embedded", "rates": "40% -> 20%",
             "steps": "2", "calls": "100", "date": "2024-01-01", "status": "FINISHED", "run_id": f"run{i}"}
            for i in range(3)]
    monkeypatch.setattr(store, "optimize_runs", lambda limit: rows[:limit])
    loud = invoke(["runs"])
    assert loud.exit_code == 0 and "3 optimize runs" in loud.stdout and "┏" in loud.stdout   # the table
    quiet = invoke(["runs", "--quiet", "--limit", "2"])
    assert quiet.exit_code == 0 and quiet.stdout == "run0\nrun1\n"


def test_quiet_methods_list_prints_names_only(workdir):
    from auto_evol.tracking import registry

    loud = invoke(["methods", "list"])
    quiet = invoke(["methods", "list", "-q"])
    assert loud.exit_code == quiet.exit_code == 0
    names = quiet.stdout.splitlines()
    assert names == [f["name"] for f in registry.method_files()] and {"e0", "weak"} <= set(names)
    assert "prompt registry" in loud.stdout and "prompt registry" not in quiet.stdout
    assert len(quiet.stdout) < len(loud.stdout)
    assert list(workdir.iterdir()) == []      # no store made for a listing
