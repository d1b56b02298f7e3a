"""Bad input files: one clear line naming the file, the line or row, and what is wrong; exit 2, before
any LLM call; never a traceback, never rows silently merged, dropped or let through."""
from __future__ import annotations

import json

import pytest

from conftest import cli

from auto_evol.storage.data import BadRow, load_items, stream_rows
from auto_evol.core.errors import UserError

# A provider model on a server where nothing listens: any call would fail, so an error that names the
# input proves it came first.
NO_SERVER = ["--evol-model", "openai/x", "--api-base", "http://127.0.0.1:9"]


def verb(name):
    """The command line that reads ``data`` for each verb, with nothing to call."""
    if name == "evolve":
        return lambda data: ["evolve", "--data", data, "--out", "o.jsonl", "--rounds", "1", "--no-track", *NO_SERVER]
    return lambda data: ["optimize", "--data", data, "--no-track", "--optimizer-model", "openai/x", *NO_SERVER]


def one_error_line(out) -> str:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auto-evol: error: "), out.stderr
    return lines[0].removeprefix("auto-evol: error: ")


def csv_rows(n=100, bad=None):
    lines = ["id,instruction,answer"]
    for i in range(1, n + 1):
        lines.append((bad or {}).get(i, f"{i},What is {i} plus {i}?,{2 * i}"))
    return "\n".join(lines) + "\n"


# --- 1. CSV: a quote left open ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["evolve", "optimize"])
def test_a_csv_quote_left_open_names_the_line_where_the_record_starts(tmp_path, name):
    (tmp_path / "data.csv").write_text(csv_rows(bad={50: '50,"What is the sum of 2 and 3?,5'}))
    message = one_error_line(cli(verb(name)("data.csv"), tmp_path))
    assert message.startswith("data.csv:51: not valid CSV: a quoted field that opens here is not closed"), message
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("name", ["evolve", "optimize"])
def test_a_csv_quote_closed_by_a_later_stray_quote_is_caught_too(tmp_path, name):
    # The inch mark on row 58 closes the quote opened on row 50: strict CSV sees no error, and rows
    # 51..57 would be one instruction.
    (tmp_path / "data.csv").write_text(csv_rows(bad={50: '50,"What is the sum of 2 and 3?,5',
                                                     58: '58,A board is 5",5'}))
    message = one_error_line(cli(verb(name)("data.csv"), tmp_path))
    assert message.startswith("data.csv:51: not valid CSV: a quoted field that opens here runs on to line 59"), message
    assert "7 lines that look like rows of their own" in message


def test_legitimate_multi_line_csv_values_still_pass(tmp_path):
    path = tmp_path / "ok.csv"
    prose = '"Read this:\nFirst, add the numbers.\nThen, carefully, divide by 2.\nFinally, say it."'
    listing = '"Fix the code:\n' + "\n".join(f"x{i} = f(a, b)" for i in range(12)) + '"'
    table = '"Sum the last column:\nname,age,score\nann,3,4\nbob,5,6"'
    path.write_text(csv_rows(20, bad={3: f"3,{prose},1", 7: f"7,{listing},2", 9: f"9,{table},3"}))
    items = load_items(path)
    assert len(items) == 20 and items[2].instruction.startswith("Read this:\nFirst, add")
    assert items[6].instruction.count("\n") == 12 and items[8].instruction.endswith("bob,5,6")
    assert [where for where, _ in stream_rows(path)][:4] == [f"{path}:{n}" for n in (2, 3, 4, 8)]


def test_a_csv_row_with_too_many_fields_is_a_bad_row_not_a_shifted_one(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(csv_rows(60, bad={51: "51,What is 1,000 plus 2?,1002"}))
    with pytest.raises(UserError, match=r"data\.csv:52: 4 fields where the header has 3"):
        load_items(path)
    rows = dict(stream_rows(path))
    assert isinstance(rows[f"{path}:52"], BadRow) and len(rows) == 60
    path.write_text("id,instruction,answer\n1,What is 1?,1,\n")  # a trailing empty field is let through
    assert load_items(path)[0].extra == {"id": "1", "answer": "1"}


# --- 2. Parquet: corrupt pages, or not Parquet at all ------------------------------------------------

def corrupt_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 10_000
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)],
                             "instruction": [f"What is {i} times {i}? " * 3 for i in range(rows)]}),
                   path, row_group_size=4096, compression="none")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = b"\xff" * 2000  # the footer, at the end, stays intact
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["evolve", "optimize"])
def test_a_parquet_file_with_corrupt_pages_names_the_file_and_row(tmp_path, name):
    corrupt_parquet(tmp_path / "data.parquet")
    message = one_error_line(cli(verb(name)("data.parquet"), tmp_path))
    assert message.startswith("data.parquet row 4097: not a readable Parquet file ("), message


def test_a_file_that_is_not_parquet_is_one_line(tmp_path):
    (tmp_path / "data.parquet").write_text("id,instruction\n1,hello\n")
    message = one_error_line(cli(verb("evolve")("data.parquet"), tmp_path))
    assert message.startswith("data.parquet: not a readable Parquet file ("), message


# --- 3. evolve: "no usable rows" says which and why ---------------------------------------------------

@pytest.mark.parametrize("indent", [2, None])
def test_a_json_array_in_a_jsonl_file_names_the_first_bad_row_and_hints(tmp_path, indent):
    rows = [{"instruction": f"Question {i}?"} for i in range(3)]
    (tmp_path / "x.jsonl").write_text(json.dumps(rows, indent=indent) + "\n")
    message = one_error_line(cli(verb("evolve")("x.jsonl"), tmp_path))
    assert message.startswith("x.jsonl: no usable rows ("), message
    assert "the first, x.jsonl:1: " in message and "name the file .json" in message
    if indent is None:
        assert "(1 bad one; the first, x.jsonl:1: expected a JSON object, got list" in message


def test_a_binary_file_named_jsonl_names_the_first_bad_row(tmp_path):
    import gzip

    rows = "".join(json.dumps({"instruction": f"Question {i}?"}) + "\n" for i in range(500)).encode()
    (tmp_path / "x.jsonl").write_bytes(gzip.compress(rows, mtime=0))
    message = one_error_line(cli(verb("evolve")("x.jsonl"), tmp_path))
    assert message.startswith("x.jsonl: no usable rows (") and "; the first, x.jsonl:1: " in message
    assert "holds NUL bytes: a binary file (compressed?), not JSON Lines)" in message
    (tmp_path / "y.jsonl").write_bytes(b'{"instruction": "caf\xe9?"}\n')
    message = one_error_line(cli(verb("evolve")("y.jsonl"), tmp_path))
    assert message == "y.jsonl: no usable rows (1 bad one; the first, y.jsonl:1: not UTF-8 (invalid continuation byte))"


# --- 4. one set of row rules for evolve and optimize -------------------------------------------------

def seeds_with(tmp_path, bad: dict[int, dict]):
    rows = [bad.get(n, {"id": str(n), "instruction": f"Question number {n}?"}) for n in range(1, 81)]
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_optimize_refuses_an_overlong_instruction_and_a_duplicate_id(tmp_path):
    seeds_with(tmp_path, {3: {"id": "3", "instruction": "x" * 1_048_576}})
    message = one_error_line(cli(verb("optimize")("seeds.jsonl"), tmp_path))
    assert message == "seeds.jsonl:3: instruction of 1048576 characters is beyond the limit of 20000"
    path = seeds_with(tmp_path, {7: {"id": 12, "instruction": "Question number 7?"}})
    message = one_error_line(cli(verb("optimize")("seeds.jsonl"), tmp_path))
    assert message == "seeds.jsonl:12: duplicate id '12'"
    with pytest.raises(UserError, match=r"seeds\.jsonl:12: duplicate id '12'"):
        load_items(path)


def test_evolve_and_optimize_share_the_row_rules(tmp_path):
    from auto_evol.storage.data import MAX_INSTRUCTION_CHARS, row_problem
    from auto_evol.evolve import EvolveOptions, _row_problem

    options = EvolveOptions(data="x.jsonl", out="o.jsonl")
    assert options.max_instruction_chars == MAX_INSTRUCTION_CHARS == 20000
    cases = [{"instruction": "x" * 20001}, {"id": "a", "instruction": "again"}, {"title": "t"},
             {"instruction": "  "}, {"instruction": 5}, BadRow("x.jsonl:9", "not valid JSON")]
    for row in cases:
        shared = row_problem(row, "instruction", {"a"}, 9, MAX_INSTRUCTION_CHARS)
        assert shared and _row_problem(row, "instruction", options, {"a"}, 9).startswith(shared.split(" (")[0])
    assert row_problem({"instruction": "fine"}, "instruction", seen := set(), 4) is None and seen == {"4"}
    assert row_problem({"instruction": "fine"}, "instruction", seen, 4) == \
        "duplicate id '4' (the row's position, as it has no 'id')"
