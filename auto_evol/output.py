"""Evolved records out: a seeded shuffle that never holds the whole dataset, and the file formats
fine-tuning tools read (JSONL with provenance, Alpaca JSON, ShareGPT, OpenAI chat JSONL, Parquet)."""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .checkpoint import atomic_write
from .data import with_input
from .errors import UserError

FORMATS = ("jsonl", "alpaca", "sharegpt", "openai", "parquet")
PROVENANCE = ("id", "seed_id", "round", "method", "method_hash", "parent_instruction", "evol_model", "answer_model")


def format_for(path: Path, wanted: str | None) -> str:
    if wanted:
        if wanted not in FORMATS:
            raise UserError(f"unknown --format {wanted!r} (known: {', '.join(FORMATS)})")
        return wanted
    return "parquet" if path.suffix.lower() == ".parquet" else "jsonl"


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
    handles = [open(folder / f"{b:05d}.jsonl", "w", encoding="utf-8") for b in range(buckets)]
    try:
        for record in records:
            key = shuffle_key(seed, record["id"])
            handles[key * buckets >> 64].write(json.dumps([key, record], ensure_ascii=False) + "\n")
    finally:
        for fh in handles:
            fh.close()
    for b in range(buckets):
        path = folder / f"{b:05d}.jsonl"
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        rows.sort(key=lambda row: row[0])
        path.unlink()
        for _, record in rows:
            yield record


def provenance(record: dict) -> dict:
    return {k: record.get(k) for k in PROVENANCE}


def write(records: Iterable[dict], path: Path, fmt: str) -> int:
    """Write ``records`` to ``path`` in ``fmt`` atomically; returns how many were written."""
    count = 0
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = ("instruction", "input", "output", *PROVENANCE)
        schema = pa.schema([(c, pa.int64() if c == "round" else pa.string()) for c in columns])
        with atomic_write(path, mode=None) as tmp:
            writer = pq.ParquetWriter(tmp, schema)
            batch: list[dict] = []
            for record in records:
                batch.append({c: record.get(c) if c != "input" else record.get("input", "") for c in columns})
                count += 1
                if len(batch) >= 2048:
                    writer.write_table(pa.Table.from_pylist(batch, schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema))
            writer.close()
        return count
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(atomic_write(path))
        # OpenAI's chat format allows only 'messages' per line: provenance goes to a sidecar file.
        side = stack.enter_context(atomic_write(path.with_name(path.stem + ".provenance.jsonl"))) \
            if fmt == "openai" else None
        if fmt == "alpaca":
            fh.write("[\n")
        for record in records:
            base = {"instruction": record["instruction"], "input": record.get("input", ""),
                    "output": record.get("output", "")}
            if fmt == "jsonl":
                row = {**base, **provenance(record)}
            elif fmt == "alpaca":
                row = {**base, "provenance": provenance(record)}
            elif fmt == "sharegpt":
                row = {"id": record["id"], "conversations": [{"from": "human", "value": with_input(record["instruction"], record.get("input"))},
                                                             {"from": "gpt", "value": base["output"]}],
                       "provenance": provenance(record)}
            else:
                row = {"messages": [{"role": "user", "content": with_input(record["instruction"], record.get("input"))},
                                    {"role": "assistant", "content": base["output"]}]}
                side.write(json.dumps({"line": count + 1, **provenance(record)}, ensure_ascii=False) + "\n")
            text = json.dumps(row, ensure_ascii=False)
            fh.write((",\n" if count else "") + text if fmt == "alpaca" else text + "\n")
            count += 1
        if fmt == "alpaca":
            fh.write("\n]\n")
    return count
