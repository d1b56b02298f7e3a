"""Finishing a dataset (issue 25): the dry-run table and --pilot, --format hf with its card and
--push-to-hub, --decontaminate, --dedup near."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auto_evol.algorithm.contamination import CONTAMINATED, BenchmarkIndex
from auto_evol.algorithm.dedup import NEAR_DUPLICATE, Evolved, near_duplicates
from auto_evol.cli.main import app
from auto_evol.core.errors import UserError
from auto_evol.evolve import EvolveOptions, evolve
from auto_evol.storage import card
from conftest import scripted_llm
from fake_hub import FakeHub
from fake_openai import FakeOpenAI, e0_world

ROOT = Path(__file__).resolve().parents[1]
GSM = ROOT / "dev_sets" / "gsm8k_seed"   # GSM8K training problems (MIT): the benchmark stand-in here


def problems(name: str) -> list[dict]:
    return [json.loads(line) for line in (GSM / name).read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def gsm_seeds(path: Path, n: int = 12) -> Path:
    return write_jsonl(path, [{"id": r["id"], "instruction": r["instruction"], "output": r["answer"]}
                              for r in problems("dev.jsonl")[:n]])


def rewrite_world(rewrites: dict[str, str] | None = None):
    """e0's evolver, the judge and answers: an instruction is evolved to ``rewrites``' text when one of its
    keys is in it, else to itself plus a sentence; the judge says 'not equal'; answers are fine."""
    rewrites = rewrites or {}

    def world(prompt: str) -> str:
        if "#Instruction#:" in prompt and "#Finally Rewritten Instruction#" in prompt:
            instruction = prompt.rsplit("#Instruction#:", 1)[1].strip()
            text = next((v for k, v in rewrites.items() if k in instruction),
                        instruction + " Give the answer in cents and show each step.")
            return f"Step 4 #Finally Rewritten Instruction#:\n{text}"
        if prompt.startswith("Compare two instructions"):
            return "not equal"
        return "The answer is 42, worked out step by step with every intermediate total shown."
    return world


def run(tmp_path, data: Path, world=None, **extra):
    model, _ = scripted_llm(world or rewrite_world(), name="finishing")
    options = EvolveOptions(data=str(data), methods=["e0"], track=False, concurrency=4,
                            **{"out": str(tmp_path / "out.jsonl"), "rounds": 1, **extra})
    return evolve(options, evol=model, answerer=model)


# --- the dry run ------------------------------------------------------------------------------------

def test_dry_run_prints_a_table_and_json_keeps_its_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gsm_seeds(tmp_path / "seeds.jsonl", 20)
    args = ["evolve", "--data", "seeds.jsonl", "--method", "e0", "--rounds", "2", "--evol-model",
            "openai/gpt-4o-mini", "--out", "o.jsonl", "--dry-run"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["evol", "openai/gpt-4o-mini"] for line in lines)
    assert any(line.startswith("total") and "$" in line for line in lines)
    assert any(line.startswith("assumes:") for line in lines)
    estimate = json.loads(CliRunner().invoke(app, args + ["--json"]).stdout)
    assert {"prompt_tokens_estimate", "output_tokens_estimate", "roles", "cost_usd"} <= set(estimate)
    assert not (tmp_path / "o.jsonl.work").exists()


def test_the_evolver_estimate_follows_the_method_format(tmp_path):
    data = gsm_seeds(tmp_path / "seeds.jsonl", 20)
    e0, weak = (evolve(EvolveOptions(data=str(data), out=str(tmp_path / "o.jsonl"), methods=[m], rounds=2,
                                     evol_model="openai/gpt-4o-mini"), dry_run=True) for m in ("e0", "weak"))
    evolutions = 20 * 2
    # e0 writes a methods list, a plan and the instruction twice: hundreds of tokens per evolution
    per_evolution = (e0["roles"]["evol"]["output_tokens"] - evolutions * 3) / evolutions
    assert 250 < per_evolution < 700
    assert weak["roles"]["evol"]["output_tokens"] < e0["roles"]["evol"]["output_tokens"] / 3


def test_pilot_estimate_is_within_a_quarter_of_what_the_run_then_spends(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused-by-fake")
    rows = problems("train.jsonl")[:120]
    data = write_jsonl(tmp_path / "seeds.jsonl", [{"id": r["id"], "instruction": r["instruction"]} for r in rows])
    with FakeOpenAI(reply=e0_world) as fake:
        kw = dict(data=str(data), out=str(tmp_path / "o.jsonl"), methods=["e0"], rounds=2, evol_model="openai/fake",
                  api_base=fake.base, track=False, concurrency=16)
        estimate = evolve(EvolveOptions(**kw), dry_run=True, pilot=20)
        pilot = estimate["pilot"]
        assert pilot["items"] == 20 and pilot["per_call"]["evol"]["output_tokens"] > 100
        assert not (tmp_path / "o.jsonl").exists()   # the pilot writes no output, only the work folder
        result = evolve(EvolveOptions(**kw))
    assert result.complete and result.records
    spent = {role: {k: result.calls[role][k] + pilot["used"][role][k] for k in ("calls", "input_tokens", "output_tokens")}
             for role in ("evol", "answer")}
    # the real run paid only for the items the pilot had not done
    assert result.calls["evol"]["calls"] + result.calls["answer"]["calls"] == \
        sum(spent[r]["calls"] for r in spent) - pilot["used"]["evol"]["calls"] - pilot["used"]["answer"]["calls"]
    for role in ("evol", "answer"):
        row = estimate["roles"][role]
        for k in ("input_tokens", "output_tokens"):
            assert abs(row[k] - spent[role][k]) <= 0.25 * spent[role][k], (role, k, row[k], spent[role][k])
            low, high = row["range"][k]
            assert low <= row[k] <= high
    total_estimate = estimate["prompt_tokens_estimate"] + estimate["output_tokens_estimate"]
    total_spent = sum(spent[r]["input_tokens"] + spent[r]["output_tokens"] for r in spent)
    assert abs(total_estimate - total_spent) <= 0.25 * total_spent
    assert set(pilot["elimination"]) == {"1", "2"}


def cli(args, cwd, env=None):
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HF_TOKEN",
                                                               "HUGGING_FACE_HUB_TOKEN")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("extra, message", [
    (["--pilot", "5"], "--pilot is for --dry-run"),
    (["--json"], "--json is for --dry-run"),
    (["--push-to-hub", "me/data"], "needs --format hf"),
    (["--format", "hf", "--push-to-hub", "me/data"], "no Hugging Face token"),
    (["--format", "hf", "--push-to-hub", "not a repo"], "OWNER/NAME"),
    (["--dedup", "fuzzy"], "--dedup must be off or near"),
    (["--decontaminate", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--decontaminate", "bad.jsonl"], "bad.jsonl:2"),
])
def test_bad_finishing_flags_are_one_line_before_any_call(tmp_path, extra, message):
    gsm_seeds(tmp_path / "seeds.jsonl", 3)
    (tmp_path / "bad.jsonl").write_text('{"question": "What is 2 + 2?"}\n{"question": \n')
    out = "data_hf" if "hf" in extra else "o.jsonl"
    done = cli(["evolve", "--data", "seeds.jsonl", "--out", out, "--evol-model", "openai/fake",
                "--api-base", "http://127.0.0.1:9/v1", "--no-track", *extra], tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert not any(p.name.endswith(".work") for p in tmp_path.iterdir())


# --- --format hf and the card -----------------------------------------------------------------------

def test_an_hf_folder_loads_with_datasets_and_its_card_tells_how_it_was_made(tmp_path, monkeypatch):
    import datasets

    folder = tmp_path / "seeds"
    folder.mkdir()
    (folder / "LICENSE").write_text((GSM / "LICENSE").read_text())
    data = gsm_seeds(folder / "seeds.jsonl", 12)
    sorry = problems("dev.jsonl")[3]["instruction"][:40]
    world = rewrite_world()

    def failing(prompt: str) -> str:   # one evolution is answered 'sorry': an elimination for the card
        if not prompt.startswith(("Compare", "Your job")) and sorry in prompt:
            return "Sorry, no."
        return world(prompt)

    monkeypatch.setattr("auto_evol.storage.output.HF_SHARD_ROWS", 10)   # several shards
    result = run(tmp_path, data, failing, out=str(tmp_path / "hf_out"), format="hf", rounds=2)
    assert result.complete
    loaded = datasets.load_dataset(str(tmp_path / "hf_out"), split="train")
    assert len(loaded) == result.records and {"instruction", "output", "seed_id", "round", "method"} <= set(
        loaded.column_names)
    shards = -(-result.records // 10)
    assert [p.name for p in sorted((tmp_path / "hf_out" / "data").iterdir())] == [
        f"train-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]
    text = (tmp_path / "hf_out" / "README.md").read_text()
    header = text.split("---")[1]
    assert "license: mit" in header and "size_categories:\n- n<1K" in header and "path: data/train-*" in header
    assert "`test/finishing`" in text and "| e0 |" in text and "Step 1: Study the #Instruction#" in text
    assert "sorry_short_answer" in text and "| 1 |" in text and "| 2 |" in text
    # a folder with someone else's files is refused before any call
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        run(tmp_path, data, out=str(tmp_path / "other"), format="hf")


def test_a_card_says_when_the_license_is_unknown():
    facts = card.CardFacts(title="t", records=1500, seeds_source="x.jsonl", seeds=10, evol_model="m", answer_model="m",
                           methods=(card.MethodFact("e*", "abc", 1.0, "text", "prompts:/gsm/3"),), rounds=())
    text = card.render(facts)
    assert "license: other" in text and "not known from the seeds" in text and "- 1K<n<10K" in text
    assert "prompts:/gsm/3" in text and "```text" not in text


def test_push_to_hub_uploads_the_folder_with_the_token_from_the_environment(tmp_path, monkeypatch):
    token = "hf_secret_token_123"
    data = gsm_seeds(tmp_path / "seeds.jsonl", 6)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # An in-process compare earlier in the suite sets HF_HUB_OFFLINE for its own process (its report's
    # embeddings): this test's process is a user's evolve, which never ran a compare.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", token)
    with FakeHub(token=token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        result = run(tmp_path, data, out=str(tmp_path / "hf_out"), format="hf", push_to_hub="me/evolved")
    assert result.complete and not hub.unknown and hub.validated
    files = hub.files["datasets/me/evolved"]
    assert set(files) == {"README.md", "data/train-00000-of-00001.parquet"}
    assert files["README.md"] == (tmp_path / "hf_out" / "README.md").read_bytes()
    assert set(hub.auth) == {f"Bearer {token}"}
    for path in tmp_path.rglob("*"):   # the token is written nowhere
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    # a refused token is one line naming the repo, never the token
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with FakeHub(token=token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        with pytest.raises(UserError, match="me/evolved: the Hub refused") as refused:
            run(tmp_path, data, out=str(tmp_path / "hf_out"), format="hf", push_to_hub="me/evolved")
    assert "hf_wrong" not in str(refused.value)


# --- --decontaminate --------------------------------------------------------------------------------

def reworded(text: str) -> str:
    """A light rewording: a name and a verb replaced, a comma dropped."""
    words = text.split()
    words[0], words[len(words) // 2] = "Sam", "then"
    return " ".join(words).replace(",", "", 1)


def test_planted_benchmark_problems_are_caught_and_clean_ones_are_not():
    bench = problems("train.jsonl")
    index = BenchmarkIndex(("gsm8k", r["id"], r["instruction"]) for r in bench)
    planted = bench[123]
    assert index.check(planted["instruction"]).item_id == planted["id"]
    assert index.check(reworded(planted["instruction"])).item_id == planted["id"]
    assert index.check("Here is a harder one. " + planted["instruction"] + " Answer in cents, showing each step."
                       ).item_id == planted["id"]
    # The 50 dev problems were chosen with no near-duplicate in GSM8K's training split: none is flagged,
    # though they share GSM8K's stock phrasing.
    assert [d["id"] for d in problems("dev.jsonl") if index.check(d["instruction"])] == []
    # a clean problem with one stock 13-gram of a benchmark item is not flagged
    stock = " ".join(planted["instruction"].split()[:13])
    assert index.check(stock + " " + problems("dev.jsonl")[0]["instruction"]) is None


def test_contaminated_seeds_and_evolutions_are_rejected_with_the_benchmark_id(tmp_path):
    bench_rows = problems("train.jsonl")[:300]
    bench = write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"id": r["id"], "question": r["instruction"]} for r in bench_rows])
    clean = problems("dev.jsonl")[:8]
    rows = [{"id": r["id"], "instruction": r["instruction"], "output": r["answer"]} for r in clean]
    rows += [{"id": "planted", "instruction": bench_rows[10]["instruction"], "output": "x"},
             {"id": "reworded", "instruction": reworded(bench_rows[20]["instruction"]), "output": "x"}]
    data = write_jsonl(tmp_path / "seeds.jsonl", rows)
    # one clean seed evolves into a benchmark problem: that evolution is rejected too
    key = clean[2]["instruction"][:30]
    world = rewrite_world({key: bench_rows[30]["instruction"] + " Show each step."})
    result = run(tmp_path, data, world, decontaminate=[str(bench)], rounds=2)
    assert result.complete
    out = read_jsonl(result.out)
    texts = " ".join(r["instruction"] for r in out)
    for b in (bench_rows[10], bench_rows[20], bench_rows[30]):
        assert b["instruction"][20:80] not in texts
    rejects = {r["id"]: r for r in read_jsonl(result.rejects) if r["reason"] == CONTAMINATED}
    assert rejects["planted#0"]["benchmark_id"] == bench_rows[10]["id"]
    assert rejects["reworded#0"]["benchmark_id"] == bench_rows[20]["id"]
    evolved = [r for r in rejects.values() if r["round"]]
    assert {r["benchmark_id"] for r in evolved} == {bench_rows[30]["id"]} and len(evolved) == 2   # tried again in round 2
    stats = json.loads((tmp_path / "out.jsonl.work" / "stats.json").read_text())
    assert stats["decontamination"]["seeds"] == 2 and stats["decontamination"]["evolved"] == 2
    assert stats["rounds"][0]["eliminated"] == {CONTAMINATED: 1}
    assert len([r for r in out if r["round"] == 0]) == 8


# --- --dedup near -----------------------------------------------------------------------------------

def test_near_duplicates_on_a_crafted_set():
    seeds = [("a", "Tom buys 3 apples at 2 dollars each. How much does he pay in all?"),
             ("b", "Ann reads 20 pages a day for a week. How many pages does she read?"),
             ("c", "A train goes 60 miles an hour for 3 hours. How far does it go?")]
    harder = ("At a market Tom buys 3 apples at 2 dollars each and 4 pears at 1 dollar each, and pays with a 20 dollar "
              "bill. How much change does he get, in cents?")   # Jaccard 0.48 to seed a: a real evolution
    evolved = [
        Evolved("a#1", "a", 1, harder),
        Evolved("b#1", "b", 1, harder.replace("Tom", "Tim")),      # another seed evolved into a's evolution
        Evolved("c#1", "c", 1, seeds[1][1] + " Explain."),         # c evolved into seed b
        Evolved("a#2", "a", 2, harder + " Show each step."),       # a's own lineage: no duplicate
        Evolved("b#2", "b", 2, "Ann reads 20 pages a day for a week and 5 more on Sunday. How many pages, and how many words?"),
    ]
    dropped = near_duplicates(seeds, evolved)
    assert dropped == {"b#1": "a#1", "c#1": "b#0"}
    assert near_duplicates(seeds, evolved[:1] + evolved[3:]) == {}


def test_dedup_near_removes_and_counts_per_round(tmp_path):
    clean = problems("dev.jsonl")[:6]
    data = write_jsonl(tmp_path / "seeds.jsonl", [{"id": r["id"], "instruction": r["instruction"], "output": r["answer"]}
                                                  for r in clean])
    same = "A baker sells 12 cakes a day at 15 dollars each for a week. How much money does she make in cents?"
    world = rewrite_world({clean[0]["instruction"][:30]: same, clean[1]["instruction"][:30]: same.replace("A", "One", 1),
                           clean[2]["instruction"][:30]: clean[3]["instruction"] + " Explain."})
    plain = run(tmp_path, data, world, rounds=1, out=str(tmp_path / "plain.jsonl"))
    result = run(tmp_path, data, world, rounds=1, dedup="near")
    assert result.records == plain.records - 2
    assert result.rounds[0].eliminated == {NEAR_DUPLICATE: 2} and result.rounds[0].kept == 4
    rejects = {r["id"]: r for r in read_jsonl(result.rejects)}
    twins = {f"{clean[0]['id']}#1", f"{clean[1]['id']}#1"}
    dropped = twins & set(rejects)
    assert len(dropped) == 1 and rejects[dropped.pop()]["duplicate_of"] in twins
    assert rejects[f"{clean[2]['id']}#1"]["duplicate_of"] == f"{clean[3]['id']}#0"
    stats = json.loads((tmp_path / "out.jsonl.work" / "stats.json").read_text())
    assert stats["dedup"] == {"mode": "near", "removed": 2, "per_round": {"1": 2}}


# --- optimize --decontaminate -------------------------------------------------------------------------

def test_optimize_leaves_benchmark_items_out_of_its_pool_and_dev_set(project):
    from auto_evol.algorithm.devset import load_split
    from auto_evol.optimize import Options, _decontaminated

    write_jsonl(project / "bench.jsonl", [{"id": f"b{i}", "question": f"Question number {i}?"} for i in range(0, 40, 4)])
    options = Options(data="questions.jsonl", dev_size=8, batch_size=3, decontaminate=["bench.jsonl"])
    plain = load_split("questions.jsonl", dev_size=8, batch_size=3, seed=0)
    split = _decontaminated(plain, options)
    left = {i.id for i in plain.train + plain.dev} - {i.id for i in split.train + split.dev}
    assert left == {str(i) for i in range(0, 40, 4)}
    assert "left out" in split.notes[0] and "bench.jsonl" in split.notes[0]
    args = ["optimize", "--data", "questions.jsonl", "--init-method", "init.md", "--dev-size", "8", "--batch-size", "3",
            "--dry-run", "--decontaminate", "bench.jsonl"]
    estimate = json.loads(CliRunner().invoke(app, args).stdout)
    assert estimate["dev_items"] == len(split.dev)
    write_jsonl(project / "all.jsonl", [{"question": f"Question number {i}?"} for i in range(40)])
    refused = CliRunner().invoke(app, args[:-1] + ["all.jsonl"])
    assert refused.exit_code != 0 and "too few remain" in str(refused.exception or refused.output)
