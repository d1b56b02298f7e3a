"""evolve's on-disk layout (workfolder.py), its typed stats, and the output-format table (output.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from auto_evol.storage import output
from auto_evol.core.errors import UserError
from auto_evol.evolve import EvolveOptions, EvolveStats, evolve
from auto_evol.storage.workfolder import WorkFolder
from conftest import scripted_llm
from fake_openai import evolve_world


def test_the_work_folder_spells_the_names_earlier_runs_wrote(tmp_path):
    # These names are an on-disk contract: a rerun continues a folder an earlier version wrote.
    work = WorkFolder(tmp_path / "out.jsonl")
    folder = tmp_path / "out.jsonl.work"
    assert work.path == folder
    assert (work.lock, work.manifest, work.seeds, work.seeds_done, work.bad_lines, work.stats) == (
        folder / "lock", folder / "manifest.json", folder / "seeds.jsonl", folder / "seeds.done",
        folder / "bad_lines.jsonl", folder / "stats.json")
    assert work.answers == work.journal(0) == folder / "round0.jsonl"
    assert work.journal(3) == folder / "round3.jsonl"
    assert work.journal(3, partial=True) == folder / "round3.partial.jsonl"
    assert work.rejects == tmp_path / "out.rejects.jsonl"
    assert work.outputs() == (tmp_path / "out.jsonl", tmp_path / "out.rejects.jsonl",
                              tmp_path / "out.provenance.jsonl")


def _run(tmp_path: Path, **extra):
    rows = [{"id": f"s{i}", "instruction": f"Question number {i}?"} for i in range(12)]
    data = tmp_path / "seeds.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model, _ = scripted_llm(evolve_world, name="evolve-world")
    options = EvolveOptions(data=str(data), out=str(tmp_path / "out.jsonl"), rounds=2, cache_dir=None, track=False,
                            concurrency=4, **extra)
    return evolve(options, evol=model, answerer=model)


def test_a_run_writes_exactly_the_layout_and_stats_json_is_the_typed_stats(tmp_path):
    result = _run(tmp_path)
    work = WorkFolder(result.out)
    names = {p.name for p in work.path.iterdir()}
    assert names == {"lock", "manifest.json", "seeds.jsonl", "seeds.done", "bad_lines.jsonl", "round0.jsonl",
                     "round1.jsonl", "round2.jsonl", "stats.json", "shuffle"}
    assert result.rejects == work.rejects and work.rejects.exists()
    on_disk = json.loads(work.stats.read_text())
    assert list(on_disk) == ["records", "complete", "rounds", "bad_lines", "calls", "seconds", "notices", "cost"]
    typed = EvolveStats.of(result, [])
    assert typed.to_dict() == on_disk
    assert on_disk["rounds"][0] == result.rounds[0].to_dict() and on_disk["records"] == result.records
    with pytest.raises(AttributeError):
        typed.records = 0   # frozen: the stats of a finished run are not edited on the way to MLflow
    assert EvolveStats.of(result, ["a", "b", "a"]).notices == ("a", "b")


def test_resume_drops_llm_errors_unless_the_next_round_carried_them(tmp_path):
    work = WorkFolder(tmp_path / "out.jsonl")
    work.path.mkdir()
    rows = [{"seed_id": "a", "status": "kept"}, {"seed_id": "b", "status": "rejected", "reason": "llm_error"},
            {"seed_id": "c", "status": "rejected", "reason": "llm_error"}]
    work.journal(1).write_text("".join(json.dumps(r) + "\n" for r in rows))
    work.journal(2).write_text(json.dumps({"seed_id": "c", "status": "kept"}) + "\n")
    assert work.resume(1, retry="llm_error") == {"a", "c"}
    assert [json.loads(line)["seed_id"] for line in work.journal(1).read_text().splitlines()] == ["a", "c"]
    # Round 0 (the seeds' answers) is never carried into round 1: its failed calls are always retried.
    work.answers.write_text(json.dumps({"seed_id": "a", "output": "", "reason": "llm_error"}) + "\n")
    work.journal(1).write_text(json.dumps({"seed_id": "a", "status": "kept"}) + "\n")
    assert work.resume(0, retry="llm_error") == set()


def test_claim_refuses_another_runs_folder_and_restart_keeps_only_the_lock(tmp_path):
    work = WorkFolder(tmp_path / "out.jsonl")
    work.claim({"seed": 0}, restart=False)
    work.seeds_done.touch()
    work.lock.touch()
    with pytest.raises(UserError, match="holds a run with other settings"):
        work.claim({"seed": 1}, restart=False)
    work.claim({"seed": 1}, restart=True)
    assert {p.name for p in work.path.iterdir()} == {"lock", "manifest.json"}
    assert json.loads(work.manifest.read_text()) == {"seed": 1}


def test_every_format_is_one_table_entry_read_by_validation_writing_and_help(tmp_path, monkeypatch):
    assert list(output.FORMATS) == ["jsonl", "alpaca", "sharegpt", "openai", "parquet", "hf"]
    assert output.format_help() == "jsonl | alpaca | sharegpt | openai | parquet | hf [default: from --out]"
    assert output.format_for(tmp_path / "x.PARQUET", None) == "parquet"
    assert output.format_for(tmp_path / "x.json", None) == "jsonl"
    with pytest.raises(UserError, match=r"unknown --format 'csv' \(known: jsonl, alpaca, sharegpt, openai, parquet, hf\)"):
        output.format_for(tmp_path / "x.json", "csv")
    import typer

    from auto_evol.cli.main import app

    command = typer.main.get_command(app).commands["evolve"]
    assert next(p for p in command.params if p.name == "format").help == output.format_help()
    # A format added to the table is known everywhere at once: validation, suffix, writer, help.
    plain = output.Format("plain", "the instruction only, one a line", lambda r: {"instruction": r["instruction"]},
                          suffix=".plain")
    monkeypatch.setitem(output.FORMATS, "plain", plain)
    assert output.format_for(tmp_path / "x.json", "plain") == "plain"
    assert output.format_for(tmp_path / "x.plain", None) == "plain"
    assert "plain" in output.format_help()
    path = tmp_path / "out.plain"
    assert output.write(iter([{"id": "1", "instruction": "Do it"}]), path, "plain") == 1
    assert path.read_text() == '{"instruction": "Do it"}\n'


def test_evolve_writes_each_format_it_validates(tmp_path):
    result = _run(tmp_path, format="alpaca")
    rows = json.loads(result.out.read_text())
    assert len(rows) == result.records and set(rows[0]) == {"instruction", "input", "output", "provenance"}
