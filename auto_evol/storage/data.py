"""Instruction datasets in: JSONL, JSON, CSV or Parquet files, one instruction per row, or a Hugging
Face dataset named ``hf:NAME[:SPLIT]`` / ``hf:NAME:CONFIG:SPLIT`` (streamed; needs ``datasets``).

Every problem is reported as one line naming the file (and line, where there is one) and what is
wrong. Rows keep all their columns; the instruction column is named by the user or guessed.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError, first_line

# Column names tried, in order, when the user names none.
COMMON_INSTRUCTION_FIELDS = ("instruction", "prompt", "question", "query", "input", "text", "problem")
# Answer columns tried, in order, when the user names none: Alpaca's output, the response of Dolly,
# OpenOrca and MetaMathQA, the prompt/completion pairs of fine-tuning files, then the worked solution
# of MATH-style sets before a bare answer (in gsm8k_seed `solution` is the worked text and `answer`
# only the number; in GSM8K itself `answer` is the worked text and the only one).
COMMON_OUTPUT_FIELDS = ("output", "response", "completion", "solution", "answer")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_PREFIX = "hf:"
# The longest instruction a row may hold, in characters (evolve: --max-instruction-chars). Longer ones
# are mostly a file read wrong (a CSV quote left open, a whole document in one cell) and would eat the
# context window of every call made about them.
MAX_INSTRUCTION_CHARS = 20000
# A quoted CSV value is taken for a quote left open (see _swallowed_rows) when at least this many of its
# lines look like rows of the file, and they are at least this share of its lines after the first.
SWALLOWED_ROWS_MIN = 5
SWALLOWED_ROWS_SHARE = 0.8


@dataclass(frozen=True)
class Item:
    """One instruction with its id and the rest of its row (answers, metadata)."""
    id: str
    instruction: str
    extra: dict = field(default_factory=dict, compare=False)


def read_rows(path: Path | str) -> list[dict]:
    """Every row of a data file, each with its place in ``_where``; the first unreadable row is an error."""
    rows = []
    for where, row in stream_rows(path):
        if isinstance(row, BadRow):
            raise UserError(f"{row.where}: {row.reason}")
        row.setdefault("_where", where)
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 ({exc.reason})") from None


def _json(path: Path) -> list[dict]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):  # {"data": [...]} and similar single-key wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: item {i} is {type(row).__name__}, expected an object")
    return data


def guess_field(row: dict, source: str) -> str:
    """The first common instruction column the row has, or a clear error naming its columns."""
    for name in COMMON_INSTRUCTION_FIELDS:
        if name in row:
            return name
    columns = [c for c in row if not c.startswith("_")]
    raise UserError(f"{source}: no instruction column found (columns: {', '.join(columns)}); "
                    f"name one with --instruction-field")


def guess_output_field(row: dict, exclude=()) -> str | None:
    """The first common answer column the row has with a text or number in it, or None: a seed
    without an answer is answered by the answer model, so a missing column is no error. Columns in
    ``exclude`` (the instruction and input columns) are never taken."""
    for name in COMMON_OUTPUT_FIELDS:
        value = row.get(name)
        if name not in exclude and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return name
    return None


def instruction_field(rows: list[dict], wanted: str | None, source: str) -> str:
    if wanted:
        if wanted not in rows[0]:
            columns = [c for c in rows[0] if not c.startswith("_")]
            raise UserError(f"{source}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    return guess_field(rows[0], source)


def with_input(instruction: str, input_text: str | None) -> str:
    """What an LLM is asked: the instruction, and its input data below it when there is some."""
    return instruction + (f"\n\n{input_text}" if input_text else "")


def row_id(row: dict, position: int) -> str:
    """A row's id: its ``id`` column when it has one, else its position (counted as the caller counts)."""
    return str(row.get("id", position))


def row_problem(row, field_name: str, seen_ids: set[str], n: int,
                max_chars: int = MAX_INSTRUCTION_CHARS, limit_flag: str | None = None) -> str | None:
    """Why ``row`` cannot be an instruction, or None; a usable row's id (``row_id(row, n)``) is added to
    ``seen_ids``. The one set of row rules for every verb, so a file evolve takes is a file optimize
    takes: evolve skips a bad row or stops at it (--on-bad-line), optimize stops at the first.

    A row is bad when it could not be read (a BadRow), lacks the instruction column, holds no text
    there, holds more than ``max_chars`` characters (``limit_flag`` names the option that raises the
    limit), or repeats an id: ids key caches, dev-set fingerprints and per-item results, so two rows
    with one id would silently merge."""
    if isinstance(row, BadRow):
        return row.reason
    if field_name not in row:
        return f"missing column {field_name!r}"
    value = row[field_name]
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"empty or missing {field_name!r} (an empty instruction)"
    if not isinstance(value, str):
        return f"{field_name!r} holds {type(value).__name__}, not text"
    if len(value) > max_chars:
        return (f"instruction of {len(value)} characters is beyond the limit of {max_chars}"
                + (f" (raise it with {limit_flag})" if limit_flag else ""))
    this_id = row_id(row, n)
    if this_id in seen_ids:
        return f"duplicate id {this_id!r}" + ("" if "id" in row else " (the row's position, as it has no 'id')")
    seen_ids.add(this_id)
    return None


def to_items(rows: list[dict], field_name: str, source: str, max_chars: int = MAX_INSTRUCTION_CHARS) -> list[Item]:
    """Items from rows, stopping at the first row that breaks the row rules (``row_problem``); a row
    without an ``id`` column is known by its position, counted from 0."""
    items = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = row.get("_where") or f"{source} row {i + 1}"
        problem = row_problem(row, field_name, seen, i, max_chars)
        if problem is not None:
            raise UserError(f"{where}: {problem}")
        extra = {k: v for k, v in row.items() if k != field_name and not k.startswith("_")}
        items.append(Item(id=row_id(row, i), instruction=row[field_name].strip(), extra=extra))
    return items


def load_items(path: Path | str, field_name: str | None = None) -> list[Item]:
    rows = read_rows(path)
    return to_items(rows, instruction_field(rows, field_name, str(path)), str(path))


@dataclass(frozen=True)
class BadRow:
    where: str       # file:line (or file row N)
    reason: str


def is_hub(source: Path | str) -> bool:
    return str(source).startswith(HUB_PREFIX)


def hub_name(spec: str) -> str:
    """A short name for a hub dataset spec, usable in run and prompt names."""
    return spec[len(HUB_PREFIX):].split(":")[0].replace("/", "-")


def _hub_rows(spec: str):
    """(where, row) for every row of a Hugging Face dataset split, streamed (never loaded whole)."""
    parts = spec[len(HUB_PREFIX):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"{spec}: write a Hugging Face dataset as hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1] if len(parts) > 1 else "train"
    try:
        import datasets
    except ImportError:
        raise UserError(f"{spec}: reading a Hugging Face dataset needs the 'datasets' package "
                        f"(pip install 'auto-evol[hf]')") from None
    import huggingface_hub

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # its retry notices; a failure is reported below
    n = 0
    try:
        for row in datasets.load_dataset(name, config, split=split, streaming=True):
            n += 1
            yield f"{spec} row {n}", row
    except UserError:
        raise
    except Exception as exc:  # offline, unknown name or split, a broken download: one line, never a traceback
        first = first_line(exc)
        at = f" after row {n}" if n else ""
        raise UserError(f"{spec}: could not read this Hugging Face dataset{at} ({first})") from None


def stream_rows(source: Path | str):
    """Yield (where, row) for every row of a data file or hub dataset, or (where, BadRow) for a row
    that cannot be read; rows are read one at a time for JSONL, CSV, Parquet and hub datasets (a JSON
    array is parsed whole). A break in a file's structure (a CSV quote left open, a corrupt Parquet
    page) raises UserError instead: no row after it can be trusted, so none is handed on."""
    if is_hub(source):
        yield from _hub_rows(str(source))
        return
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a data file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise UserError(f"{path}: unknown data format {path.suffix or '(no suffix)'!r} (known: {known})")
    if kind == "jsonl":
        yield from _jsonl_rows(path)
    elif kind == "csv":
        yield from _csv_rows(path)
    elif kind == "parquet":
        yield from _parquet_rows(path)
    else:
        for i, row in enumerate(_json(path), start=1):
            yield f"{path} item {i}", row


_JSON_ARRAY_HINT = "; this looks like a JSON array, not one JSON object per line: name the file .json"


def _jsonl_rows(path: Path):
    """(where, row or BadRow) per non-blank line. A first line that opens a JSON array gets a hint: the
    whole file is then one array, and every line of it would otherwise be reported on its own."""
    first = True
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            if b"\x00" in raw:   # no JSON text holds a NUL byte; a compressed or binary file does
                yield where, BadRow(where, "holds NUL bytes: a binary file (compressed?), not JSON Lines")
                first = False
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield where, BadRow(where, f"not UTF-8 ({exc.reason})")
                first = False
                continue
            if not line.strip():
                continue
            hint = _JSON_ARRAY_HINT if first and line.lstrip().startswith("[") else ""
            first = False
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, BadRow(where, f"not valid JSON ({exc.msg} at column {exc.colno}){hint}")
                continue
            yield where, row if isinstance(row, dict) else BadRow(
                where, f"expected a JSON object, got {type(row).__name__}{hint}")


def _utf8_error(path: Path) -> str:
    """The line and reason of the first bytes of ``path`` that are not UTF-8 (a text reader decodes in
    chunks, so its own position says little about where they are)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path}:{number}: not UTF-8 ({exc.reason})"
    return f"{path}: not UTF-8"


def _csv_rows(path: Path):
    """(where, row) per CSV record, ``where`` naming the line the record starts on; a record with more
    values than the header is a BadRow (an unquoted comma in a value would shift the columns after it).

    Parsing is strict and a structural error stops the file, whatever --on-bad-line says: after a quote
    left open, where one row ends and the next begins can no longer be told, so no row after it can be
    trusted. Python's csv, left lenient, would read a quote left open on to the end of the file and
    hand back every row after it as one value; strict, it says so. A quote left open that a stray
    quote further down happens to close (``5",``) is no error even to strict csv; _swallowed_rows
    catches that."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        header: list[str] | None = None
        shapes: set[str] = set()   # shapes of the first column of the rows read so far
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise UserError(_utf8_error(path)) from None
            except csv.Error as exc:
                raise UserError(_csv_error(path, start, reader.line_num, exc)) from None
            if not record:   # a blank line
                continue
            if header is None:
                header = record
                continue
            where = f"{path}:{start}"
            if len(record) > len(header):
                if any(value.strip() for value in record[len(header):]):
                    yield where, BadRow(where, f"{len(record)} fields where the header has {len(header)} "
                                               f"(a comma in a value that is not in quotes?)")
                    continue
                record = record[:len(header)]   # trailing empty fields ("a,b,c,")
            swallowed = _swallowed_rows(record, len(header), shapes)
            if swallowed:
                raise UserError(f"{path}:{start}: not valid CSV: a quoted field that opens here runs on to line "
                                f"{reader.line_num}, taking in {swallowed} lines that look like rows of their own "
                                f"(a closing quote missing here, and a stray quote where it ends?)")
            if len(shapes) < 100:
                shapes.add(_shape(record[0]))
            row = dict(zip(header, record))
            for name in header[len(record):]:   # a short record: its last columns are missing
                row.setdefault(name, None)
            yield where, row


def _csv_error(path: Path, start: int, end: int, exc: csv.Error) -> str:
    """One line for a CSV structure error, naming the line its record started on."""
    text = str(exc)
    if "unexpected end of data" in text:
        return (f"{path}:{start}: not valid CSV: a quoted field that opens here is not closed "
                f"(it runs on to the end of the file, line {end})")
    if "field larger than field limit" in text:
        return (f"{path}:{start}: not valid CSV: a value that starts here is longer than "
                f"{csv.field_size_limit()} characters (a quoted field that opens here and is not closed?)")
    if end > start:
        return (f"{path}:{start}: not valid CSV: the row that starts here runs on to line {end} and breaks "
                f"there ({text}); is a quote opened here and not closed?")
    return f"{path}:{start}: not valid CSV ({text})"


def _shape(value: str) -> str:
    """A value's pattern, to tell whether a line starts like the file's rows: runs of letters become
    "a", of digits "9", of spaces " ", other characters stay ("17" and "3" are "9", "gsm8k-train-12"
    is "a9a-a-9")."""
    out: list[str] = []
    for ch in value.strip():
        c = "a" if ch.isalpha() else "9" if ch.isdigit() else " " if ch.isspace() else ch
        if not out or out[-1] != c or c not in "a9 ":
            out.append(c)
    return "".join(out)


def _swallowed_rows(record: list[str], width: int, shapes: set[str]) -> int:
    """How many rows of the file one value of ``record`` seems to have swallowed (0: none).

    A quote left open that a later stray quote closes makes one value of many lines, each of them a
    row of the file. The rule, kept conservative so that real multi-line values (a few lines of text,
    a list, code, even a small table) pass: a value is taken for swallowed rows when at least
    SWALLOWED_ROWS_MIN of its lines after the first, and at least SWALLOWED_ROWS_SHARE of them, look like
    rows of this file: read as CSV on their own they give exactly the header's number of fields, and
    the first of those has the shape (see _shape) of the first column of the rows read before, or of
    this record's own. A file with one column cannot be judged this way, nor the first row of a file
    when the value is in its first column; fewer than SWALLOWED_ROWS_MIN swallowed rows go unnoticed."""
    if width < 2:
        return 0
    for column, value in enumerate(record):
        lines = value.splitlines()[1:]
        if len(lines) < SWALLOWED_ROWS_MIN:
            continue
        known = shapes | ({_shape(record[0])} if column else set())
        if not known:
            continue
        alike = 0
        for line in lines:
            fields = next(csv.reader([line]), [])
            alike += len(fields) == width and _shape(fields[0]) in known
        if alike >= SWALLOWED_ROWS_MIN and alike >= SWALLOWED_ROWS_SHARE * len(lines):
            return alike
    return 0


def _parquet_rows(path: Path):
    """(where, row) per Parquet row, read a batch at a time. Anything the reader cannot decode (a file
    that is not Parquet, corrupt pages, a page whose checksum fails) is one line naming the file and
    the first row it could not read, not an internal error."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path, page_checksum_verification=True)
        batches = table.iter_batches(batch_size=4096)
    except Exception as exc:
        raise UserError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    n = 0
    while True:
        try:
            batch = next(batches, None)
            rows = [] if batch is None else batch.to_pylist()
        except Exception as exc:
            raise UserError(f"{path} row {n + 1}: not a readable Parquet file ({first_line(exc)})") from None
        if batch is None:
            return
        for row in rows:
            n += 1
            yield f"{path} row {n}", row


# The columns a benchmark's problem text is read from (--decontaminate), the first one a row has.
BENCHMARK_FIELDS = ("question", "instruction", "prompt", "problem")


def benchmark_items(spec: str) -> list[tuple[str, str]]:
    """(id, text) for every item of a benchmark set named by ``--decontaminate``: a JSONL / JSON / CSV /
    Parquet file or ``hf:NAME[:SPLIT]``. The text is the first of BENCHMARK_FIELDS the rows have; an id
    is the row's ``id`` (or ``task_id``) column, else its line. A row that cannot be read, or lacks the
    text, is an error naming it: a benchmark read in part would let its other items through unseen."""
    items: list[tuple[str, str]] = []
    field_name = None
    for n, (where, row) in enumerate(stream_rows(spec), start=1):
        if isinstance(row, BadRow):
            raise UserError(f"--decontaminate {where}: {row.reason}")
        if field_name is None:
            field_name = next((f for f in BENCHMARK_FIELDS if f in row), None)
            if field_name is None:
                columns = ", ".join(c for c in row if not str(c).startswith("_"))
                raise UserError(f"--decontaminate {where}: no problem text column (looked for "
                                f"{', '.join(BENCHMARK_FIELDS)}; columns: {columns})")
        text = row.get(field_name)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"--decontaminate {where}: empty or missing {field_name!r}")
        item_id = row.get("id", row.get("task_id"))
        items.append((str(item_id) if item_id is not None else f"line {n}", text))
    if not items:
        raise UserError(f"--decontaminate {spec}: holds no items")
    return items
