import json

import pandas as pd
import pytest

from auto_evol.data import load_items
from auto_evol.devset import batch, load_split, registered
from auto_evol.errors import UserError


def test_gsm8k_seed_is_registered_with_a_disjoint_held_out_dev_set():
    assert "gsm8k_seed" in registered()
    split = load_split("gsm8k_seed", dev_size=50, batch_size=10, seed=0)
    assert len(split.train) >= 500 and len(split.dev) == 50
    assert not {i.instruction for i in split.train} & {i.instruction for i in split.dev}
    assert all(i.extra["answer"].replace(".", "", 1).replace("-", "", 1).isdigit() for i in split.dev)


def test_batches_come_from_the_training_pool_and_repeat_with_the_seed():
    split = load_split("gsm8k_seed", dev_size=8, batch_size=4, seed=3)
    b1 = batch(split.train, 4, seed=3, step=1)
    assert b1 == batch(split.train, 4, seed=3, step=1)
    assert b1 != batch(split.train, 4, seed=3, step=2)
    assert set(b1) <= set(split.train)


def _rows(n):
    return [{"id": f"r{i}", "prompt": f"Question number {i}?"} for i in range(n)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_reads_and_the_column_is_guessed(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    rows = _rows(12)
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    items = load_items(path)
    assert [i.instruction for i in items] == [r["prompt"] for r in rows]
    split = load_split(str(path), dev_size=5, batch_size=3, seed=1)
    assert len(split.dev) == 5 and len(split.train) == 7
    assert split == load_split(str(path), dev_size=5, batch_size=3, seed=1)
    assert split.dev != load_split(str(path), dev_size=5, batch_size=3, seed=2).dev


def test_identical_instructions_never_straddle_the_split(tmp_path):
    path = tmp_path / "dups.jsonl"
    rows = [{"instruction": f"Task {i % 6}"} for i in range(18)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    for seed in range(5):
        split = load_split(str(path), dev_size=6, batch_size=2, seed=seed)
        assert not {i.instruction for i in split.train} & {i.instruction for i in split.dev}


@pytest.mark.parametrize("content, field, message", [
    ('{"prompt": "a"}\n{"prompt": oops}\n', None, r"bad\.jsonl:2: not valid JSON"),
    ('{"prompt": "a"}\n{"prompt": ""}\n', None, r"bad\.jsonl:2: empty or missing 'prompt'"),
    ('{"body": "a"}\n', None, r"bad\.jsonl: no instruction column found \(columns: body\)"),
    ('{"prompt": "a"}\n', "question", r"bad\.jsonl: no column 'question'"),
    ("", None, r"bad\.jsonl: no rows"),
])
def test_bad_files_say_where_and_what(tmp_path, content, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_items(path, field)


def test_too_few_rows_unknown_name_and_non_utf8(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows(5)))
    with pytest.raises(UserError, match="5 rows are too few for a dev set of 4 plus a mini-batch of 2"):
        load_split(str(path), dev_size=4, batch_size=2, seed=0)
    with pytest.raises(UserError, match="unknown data set 'nope'"):
        load_split("nope", dev_size=4, batch_size=2, seed=0)
    binary = tmp_path / "latin.jsonl"
    binary.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl:2: not UTF-8"):
        load_items(binary)


def test_a_hugging_face_dataset_splits_like_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "pool").mkdir(parents=True)
    pd.DataFrame(_rows(30)).to_parquet(tmp_path / "acme" / "pool" / "train.parquet")
    split = load_split("hf:acme/pool", dev_size=10, batch_size=4, seed=0)
    assert split.name == "acme-pool" and len(split.train) == 20 and len(split.dev) == 10
    assert {i.id for i in split.train + split.dev} == {f"r{i}" for i in range(30)}
    with pytest.raises(UserError, match="too few"):
        load_split("hf:acme/pool", dev_size=28, batch_size=4, seed=0)
