"""Evolved records out: a seeded shuffle that never holds the whole dataset, and the file formats
fine-tuning tools read (JSONL with provenance, Alpaca JSON, ShareGPT, OpenAI chat JSONL, Parquet)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .checkpoint import atomic_write
from .data import with_input

PROVENANCE = ("id", "seed_id", "round", "method", "method_hash", "parent_instruction", "evol_model", "answer_model")


@dataclass(frozen=True)
class Format:
    """One output format, registered once in FORMATS: --format's validation, the writer and the
    CLI's help all read the table, so a new format is one entry here and nothing else.

    ``row`` gives a record's shape on one line (or one array element); a columnar format has none and
    its own ``write``. ``array``: the rows form one JSON array (Alpaca), not JSON Lines. ``sidecar``:
    the format allows nothing beside its fields, so provenance goes to OUT-stem.provenance.jsonl.
    ``suffix``: an --out with this suffix picks the format when --format is not given."""
    name: str
    description: str
    row: Callable[[dict], dict] | None = None
    write: Callable[[Iterable[dict], Path, "Format"], int] | None = None
    array: bool = False
    sidecar: bool = False
    suffix: str = ""
    folder: bool = False    # --out names a folder the format fills (hf), not a file


def provenance(record: dict) -> dict:
    return {k: record.get(k) for k in PROVENANCE}


def provenance_path(path: Path) -> Path:
    """Where a sidecar format puts its provenance: beside the output, as OUT-stem.provenance.jsonl."""
    return path.with_name(path.stem + ".provenance.jsonl")


def _base(record: dict) -> dict:
    return {"instruction": record["instruction"], "input": record.get("input", ""), "output": record.get("output", "")}


def _jsonl_row(record: dict) -> dict:
    return {**_base(record), **provenance(record)}


def _alpaca_row(record: dict) -> dict:
    return {**_base(record), "provenance": provenance(record)}


def _sharegpt_row(record: dict) -> dict:
    return {"id": record["id"], "conversations": [
        {"from": "human", "value": with_input(record["instruction"], record.get("input"))},
        {"from": "gpt", "value": record.get("output", "")}], "provenance": provenance(record)}


def _openai_row(record: dict) -> dict:
    return {"messages": [{"role": "user", "content": with_input(record["instruction"], record.get("input"))},
                         {"role": "assistant", "content": record.get("output", "")}]}


def _write_text(records: Iterable[dict], path: Path, fmt: Format) -> int:
    """JSON Lines, or one JSON array (``fmt.array``), a row per record; the sidecar gets a line per row."""
    count = 0
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(atomic_write(path))
        side = stack.enter_context(atomic_write(provenance_path(path))) if fmt.sidecar else None
        if fmt.array:
            fh.write("[\n")
        for record in records:
            text = json.dumps(fmt.row(record), ensure_ascii=False)
            if side is not None:
                side.write(json.dumps({"line": count + 1, **provenance(record)}, ensure_ascii=False) + "\n")
            fh.write(((",\n" if count else "") + text) if fmt.array else text + "\n")
            count += 1
        if fmt.array:
            fh.write("\n]\n")
    return count


COLUMNS = ("instruction", "input", "output", *PROVENANCE)


def _schema():
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c == "round" else pa.string()) for c in COLUMNS])


def _parquet_rows(records: Iterable[dict], open_writer, rows_per_file: int | None = None) -> int:
    """Stream ``records`` into Parquet writers from ``open_writer(index)``, a new file every ``rows_per_file``."""
    import pyarrow as pa

    schema = _schema()
    count, files, writer, batch = 0, 0, None, []

    def flush():
        nonlocal writer, batch, files
        if batch:
            if writer is None:
                writer = open_writer(files, schema)
                files += 1
            writer.write_table(pa.Table.from_pylist(batch, schema))
            batch = []

    for record in records:
        batch.append({c: record.get(c) if c != "input" else record.get("input", "") for c in COLUMNS})
        count += 1
        if len(batch) >= 2048 or (rows_per_file and count % rows_per_file == 0):
            flush()
            if rows_per_file and count % rows_per_file == 0:
                writer.close()
                writer = None
    flush()
    if writer is None and not count:
        writer = open_writer(0, schema)   # an empty dataset is still one (empty) file
    if writer is not None:
        writer.close()
    return count


def _write_parquet(records: Iterable[dict], path: Path, fmt: Format) -> int:
    import pyarrow.parquet as pq

    with atomic_write(path, mode=None) as tmp:
        return _parquet_rows(records, lambda _, schema: pq.ParquetWriter(tmp, schema))


# Records per Parquet shard of an hf folder: about 100-300 MB of evolved text, under the Hub's advice of
# shards below 500 MB, and few enough files that the Hub's viewer and `datasets` read them in one go.
HF_SHARD_ROWS = 200_000
HF_DATA = "data"


def _write_hf(records: Iterable[dict], path: Path, fmt: Format) -> int:
    """A folder ``datasets.load_dataset(path)`` reads: ``data/train-0000i-of-0000n.parquet`` (the card,
    README.md, is the caller's: it needs the run's statistics). The shards are written into a hidden
    folder beside ``data/`` and swapped in whole, so a killed write never leaves a half dataset."""
    import shutil

    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    staging, old = path / f".{HF_DATA}.tmp", path / f".{HF_DATA}.old"
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    count = _parquet_rows(records, lambda i, schema: pq.ParquetWriter(staging / f"train-{i:05d}.parquet", schema),
                          HF_SHARD_ROWS)
    shards = sorted(staging.glob("train-*.parquet"))
    for i, shard in enumerate(shards):
        shard.rename(staging / f"train-{i:05d}-of-{len(shards):05d}.parquet")
    target = path / HF_DATA
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return count


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("jsonl", "instruction, input, output and provenance, one JSON object a line", _jsonl_row),
    Format("alpaca", "one JSON array of {instruction, input, output, provenance}", _alpaca_row, array=True),
    Format("sharegpt", "JSON Lines of {id, conversations (human, gpt), provenance}", _sharegpt_row),
    Format("openai", "chat JSON Lines of {messages}; provenance in OUT-stem.provenance.jsonl", _openai_row,
           sidecar=True),
    Format("parquet", "columns instruction, input, output and provenance", write=_write_parquet, suffix=".parquet"),
    Format("hf", "a Hugging Face dataset folder (--out DIR): data/*.parquet and a README.md dataset card",
           write=_write_hf, folder=True),
)}
DEFAULT_FORMAT = "jsonl"


def format_help() -> str:
    """--format's help line, from the table."""
    return " | ".join(FORMATS) + " [default: from --out]"


def format_for(path: Path, wanted: str | None) -> str:
    """The format to write ``path`` in: --format when given (checked against the table), else the
    one whose suffix ``path`` has, else jsonl."""
    if wanted:
        if wanted not in FORMATS:
            raise UserError(f"unknown --format {wanted!r} (known: {', '.join(FORMATS)})")
        return wanted
    suffix = path.suffix.lower()
    return next((f.name for f in FORMATS.values() if f.suffix and f.suffix == suffix), DEFAULT_FORMAT)


def shuffle_key(seed: int, record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8], "big")


def shuffled(records: Iterable[dict], *, seed: int, count: int, workdir: Path) -> Iterator[dict]:
    """``records`` in a seeded random order, spilled to bucket files so memory stays bounded.

    Each record gets a key from (seed, id); bucket b holds keys in the b-th slice of the key range,
    so reading the buckets in order, each sorted in memory, yields the global key order. Taking the
    first N of that order is a uniform random sample of size N. ``count`` (the records, or a bound on
    them) only sizes the buckets; the order does not depend on it.
    """
    buckets = max(1, -(-count // 4096))
    folder = workdir / "shuffle"
    folder.mkdir(parents=True, exist_ok=True)
    # Spilled as pickles, not JSON lines: a record comes back exactly as it went in, and shuffling
    # 100k records took ~200 ms instead of ~352 ms, profiled. Each bucket is written and read back in
    # this call only, then deleted: no pickle from anywhere else is ever loaded.
    handles = [open(folder / f"{b:05d}.pickle", "wb") for b in range(buckets)]
    try:
        for record in records:
            key = shuffle_key(seed, record["id"])
            handles[key * buckets >> 64].write(pickle.dumps((key, record), pickle.HIGHEST_PROTOCOL))
    finally:
        for fh in handles:
            fh.close()
    for b in range(buckets):
        path = folder / f"{b:05d}.pickle"
        rows = []
        with open(path, "rb") as fh:
            while True:
                try:
                    rows.append(pickle.load(fh))
                except EOFError:
                    break
        rows.sort(key=lambda row: row[0])
        path.unlink()
        for _, record in rows:
            yield record


def write(records: Iterable[dict], path: Path, fmt: str) -> int:
    """Write ``records`` to ``path`` in the format named ``fmt`` atomically; returns how many were written."""
    entry = FORMATS[fmt]
    return (entry.write or _write_text)(records, path, entry)
