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

from .errors import UserError

# Column names tried, in order, when the user names none.
COMMON_INSTRUCTION_FIELDS = ("instruction", "prompt", "question", "query", "input", "text", "problem")
# Answer columns tried, in order, when the user names none: Alpaca's output, the response of Dolly,
# OpenOrca and MetaMathQA, the prompt/completion pairs of fine-tuning files, then the worked solution
# of MATH-style sets before a bare answer (in gsm8k_seed `solution` is the worked text and `answer`
# only the number; in GSM8K itself `answer` is the worked text and the only one).
COMMON_OUTPUT_FIELDS = ("output", "response", "completion", "solution", "answer")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_PREFIX = "hf:"


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


def to_items(rows: list[dict], field_name: str, source: str) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        where = row.get("_where") or f"{source} row {i + 1}"
        value = row.get(field_name)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: empty or missing {field_name!r}")
        extra = {k: v for k, v in row.items() if k != field_name and not k.startswith("_")}
        items.append(Item(id=str(row.get("id", i)), instruction=value.strip(), extra=extra))
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
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        at = f" after row {n}" if n else ""
        raise UserError(f"{spec}: could not read this Hugging Face dataset{at} ({first})") from None


def stream_rows(source: Path | str):
    """Yield (where, row) for every row of a data file or hub dataset, or (where, BadRow) for a row
    that cannot be read; rows are read one at a time for JSONL, CSV, Parquet and hub datasets (a JSON
    array is parsed whole)."""
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
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield where, BadRow(where, f"not UTF-8 ({exc.reason})")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, BadRow(where, f"not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                yield where, row if isinstance(row, dict) else BadRow(
                    where, f"expected a JSON object, got {type(row).__name__}")
    elif kind == "csv":
        with open(path, encoding="utf-8", errors="strict", newline="") as fh:
            reader = csv.DictReader(fh)
            try:
                for row in reader:
                    yield f"{path}:{reader.line_num}", row
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{reader.line_num + 1}: not UTF-8 ({exc.reason})") from None
            except csv.Error as exc:
                raise UserError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    elif kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as exc:
            raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        n = 0
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", row
    else:
        for i, row in enumerate(_json(path), start=1):
            yield f"{path} item {i}", row
