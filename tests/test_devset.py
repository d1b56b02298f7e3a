import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from auto_evol.storage.data import Item, guess_output_field, load_items
from auto_evol.algorithm.devset import batch, load_split, near_duplicate_groups, registered
from auto_evol.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def _items(texts):
    return [Item(id=str(i), instruction=t) for i, t in enumerate(texts)]


def _maker():
    spec = importlib.util.spec_from_file_location("make_gsm8k_seed", REPO / "dev_sets" / "make_gsm8k_seed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gsm8k_seed_is_real_gsm8k_with_a_held_out_dev_set_free_of_near_duplicates():
    assert "gsm8k_seed" in registered()
    split_ = load_split("gsm8k_seed", dev_size=50, batch_size=10, seed=0)
    train, dev = split_.train, split_.dev
    assert len(train) >= 2000 and len(dev) == 50
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", i.extra["answer"]) for i in train + dev)
    assert all(i.extra["solution"] for i in train + dev)
    ids = [i.id for i in train + dev]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"gsm8k-train-\d+", i) for i in ids)
    assert not {i.instruction for i in train} & {i.instruction for i in dev}
    labels = near_duplicate_groups([i.instruction for i in dev + train])
    assert not set(labels[:50]) & set(labels[50:])
    assert (registered()["gsm8k_seed"] / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.skipif(not GSM8K.is_file(), reason="GSM8K's train.jsonl is not beside the checkout")
def test_gsm8k_seed_ids_point_at_their_gsm8k_lines_and_the_script_reproduces_the_files():
    lines = GSM8K.read_text(encoding="utf-8").splitlines()
    folder = registered()["gsm8k_seed"]
    shipped = {name: [json.loads(line) for line in (folder / name).read_text().splitlines()]
               for name in ("train.jsonl", "dev.jsonl")}
    for row in shipped["train.jsonl"] + shipped["dev.jsonl"]:
        source = json.loads(lines[int(row["id"].rsplit("-", 1)[1])])
        assert source["question"].strip() == row["instruction"]
        assert source["answer"].rsplit("####", 1)[1].strip().replace(",", "") == row["answer"]
    maker = _maker()
    train, dev, groups = maker.choose(maker.read_problems(GSM8K))
    assert [f"gsm8k-train-{p['index']}" for p in train] == [r["id"] for r in shipped["train.jsonl"]]
    assert [f"gsm8k-train-{p['index']}" for p in dev] == [r["id"] for r in shipped["dev.jsonl"]]
    assert groups == 88


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "x\\n#### 5"}\n{"question": "q2", "answer": "no marker"}\n',
     r"gsm\.jsonl:2: 'answer' does not end in '#### <number>'"),
    ('{"question": "q", "answer": "#### five"}\n', r"gsm\.jsonl:1: final answer 'five' is not a number"),
    ('{"question": "", "answer": "#### 5"}\n', r"gsm\.jsonl:1: empty or missing 'question'"),
    ('{"question": "q", "answer": "#### 5"}\n{oops\n', r"gsm\.jsonl:2: not valid JSON"),
    ('{"question": "q", "answer": "#### 1,250"}\n', r"gsm\.jsonl: 1 problems, 2050 needed"),
])
def test_the_gsm8k_script_names_the_bad_line(tmp_path, content, message):
    path = tmp_path / "gsm.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        _maker().read_problems(path)


def test_the_gsm8k_script_reads_answers_and_solutions(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": " Q? ", "answer": "3 x 5 = <<3*5=15>>15\n#### 1,215"}) + "\n")
    maker = _maker()
    maker.TRAIN_SIZE, maker.DEV_SIZE = 0, 1
    assert maker.read_problems(path) == [{"index": 0, "question": "Q?", "answer": "1215", "solution": "3 x 5 = 15"}]


def test_batches_walk_the_pool_without_repeats_until_it_is_used_up():
    split_ = load_split("gsm8k_seed", dev_size=8, batch_size=10, seed=3)
    pool = split_.train
    steps = [batch(pool, 10, seed=3, step=t) for t in range(1, len(pool) // 10 + 1)]
    seen = [i.id for b in steps for i in b]
    assert len(seen) == len(set(seen)) == len(pool) // 10 * 10
    assert all(set(b) <= set(pool) and len(b) == 10 for b in steps)
    assert steps[0] == batch(pool, 10, seed=3, step=1)
    assert steps[0] != batch(pool, 10, seed=4, step=1)


def test_a_new_pass_draws_a_fresh_permutation():
    pool = _items([f"Instruction {i}" for i in range(23)])
    first_pass = [batch(pool, 5, seed=0, step=t) for t in range(1, 5)]      # 4 batches of 5, 3 left over
    ids = [i.id for b in first_pass for i in b]
    assert len(set(ids)) == 20
    second_pass = [batch(pool, 5, seed=0, step=t) for t in range(5, 9)]
    assert len({i.id for b in second_pass for i in b}) == 20
    assert second_pass != first_pass
    assert [batch(pool, 5, seed=0, step=t) for t in range(1, 9)] == first_pass + second_pass
    with pytest.raises(ValueError):
        batch(pool, 5, seed=0, step=0)


def test_near_duplicates_differing_by_a_number_or_a_word_are_one_group():
    texts = [
        "Sam buys 12 apples and eats 3 of them. How many apples does Sam have left?",
        "Sam buys 15 apples and eats 4 of them. How many apples does Sam have left?",    # other numbers
        "Sam buys 12 pears and eats 3 of them. How many pears does Sam have left?",      # another word
        "Write a short poem about the sea at night.",
        "Write a short poem about the sea at dawn.",                                     # one word changed
        "Write a short poem about the sea at night, please.",                            # one word added
        "Explain how a bicycle gear system works to a child.",
        "List three prime numbers greater than fifty.",
        "What is 7 plus 5?",
        "What is 8 plus 5?",                                                             # short: number kept
        "Task 3",
        "Task 4",                                                                        # too short to be alike
        "???",
        "???",
    ]
    labels = near_duplicate_groups(texts)
    assert labels == [0, 0, 0, 3, 3, 3, 6, 7, 8, 8, 10, 11, 12, 12]
    assert labels == near_duplicate_groups(list(texts))


def test_near_duplicates_never_straddle_a_split_and_unrelated_rows_do(tmp_path):
    folder = registered()["gsm8k_seed"]
    rows = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines()][:40]
    base = rows[0]["instruction"]
    number = re.sub(r"\d+", lambda m: str(int(m.group()) + 7), base)
    word = re.sub(r"\b(\w{4,})\b", "things", base, count=1)
    rows += [{"id": "number", "instruction": number}, {"id": "word", "instruction": word}]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps({"id": r["id"], "instruction": r["instruction"]}) for r in rows))
    sides = []
    for seed in range(30):
        s = load_split(str(path), dev_size=10, batch_size=4, seed=seed)
        assert len(s.dev) == 10 and len(s.train) == 32
        dev_ids = {i.id for i in s.dev}
        assert len({r in dev_ids for r in (rows[0]["id"], "number", "word")}) == 1
        sides.append(rows[0]["id"] in dev_ids)
        assert s == load_split(str(path), dev_size=10, batch_size=4, seed=seed)
    assert any(sides) and not all(sides)         # the group goes either way, always whole
    assert load_split(str(path), dev_size=10, batch_size=4, seed=1).dev != \
        load_split(str(path), dev_size=10, batch_size=4, seed=2).dev


def test_a_pool_of_one_near_duplicate_group_cannot_give_a_dev_set(tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"Sam buys {i} apples and eats {i % 3} of them. "
                                                         f"How many apples does Sam have left?"})
                              for i in range(20)))
    with pytest.raises(UserError, match=r"same\.jsonl: its near-duplicate groups are too large to hold out 5"):
        load_split(str(path), dev_size=5, batch_size=2, seed=0)


@pytest.mark.parametrize("row, exclude, expected", [
    ({"instruction": "i", "input": "", "output": "o"}, (), "output"),
    ({"instruction": "i", "context": "", "response": "r"}, (), "response"),
    ({"prompt": "p", "completion": "c"}, (), "completion"),
    ({"question": "q", "answer": "a"}, (), "answer"),
    ({"instruction": "q", "answer": "42", "solution": "6 x 7 = 42"}, (), "solution"),
    ({"question": "q", "answer": 42}, (), "answer"),
    ({"question": "q", "answer": True}, (), None),
    ({"question": "q", "output": None, "response": {"text": "r"}, "answer": "a"}, (), "answer"),
    ({"response": "the prompt", "answer": "a"}, ("response",), "answer"),
    ({"question": "q", "label": "x"}, (), None),
])
def test_the_output_column_is_guessed(row, exclude, expected):
    assert guess_output_field(row, exclude) == expected


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
