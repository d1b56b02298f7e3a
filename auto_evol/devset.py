"""The held-out dev set and the training pool it must never overlap.

A registered data set is a folder in dev_sets/ with ``train.jsonl`` and ``dev.jsonl``, already split;
any other file is split here, deterministically by seed. Mini-batches come only from the training pool.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from .data import Item, hub_name, is_hub, load_items
from .errors import UserError
from .resources import shipped_dir


@dataclass(frozen=True)
class Split:
    name: str
    train: list[Item]
    dev: list[Item]


def registered() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in (Path.cwd() / "dev_sets", shipped_dir("dev_sets")):
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if (folder / "train.jsonl").is_file() and (folder / "dev.jsonl").is_file():
                    found.setdefault(folder.name, folder)
    return found


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or Path(spec).suffix != "" or Path(spec).exists()


def load_split(spec: str, *, dev_size: int, batch_size: int, seed: int,
               instruction_field: str | None = None) -> Split:
    """The training pool and dev set for ``--data``: a registered name, a file path or ``hf:NAME...``."""
    if is_hub(spec) or _looks_like_path(spec):
        items = load_items(spec, instruction_field)
        if len(items) < dev_size + batch_size:
            raise UserError(f"{spec}: {len(items)} rows are too few for a dev set of {dev_size} "
                            f"plus a mini-batch of {batch_size}")
        train, dev = split(items, dev_size, seed)
        name = hub_name(spec) if is_hub(spec) else Path(spec).stem
        source = spec
    else:
        known = registered()
        if spec not in known:
            names = ", ".join(known) or "none"
            raise UserError(f"unknown data set {spec!r} (registered: {names}; or give a file path)")
        folder = known[spec]
        train = load_items(folder / "train.jsonl", instruction_field)
        shipped_dev = load_items(folder / "dev.jsonl", instruction_field)
        if dev_size > len(shipped_dev):
            raise UserError(f"{folder / 'dev.jsonl'}: holds {len(shipped_dev)} dev items, "
                            f"{dev_size} asked for with --dev-size")
        dev = shipped_dev[:dev_size]
        name, source = spec, str(folder)
    if dev_size < 1 or batch_size < 1:
        raise UserError("--dev-size and --batch-size must be at least 1")
    if len(train) < batch_size:
        raise UserError(f"{source}: {len(train) + len(dev)} rows are too few for a dev set of {dev_size} "
                        f"plus a mini-batch of {batch_size}")
    return Split(name=name, train=train, dev=dev)


def split(items: list[Item], dev_size: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Shuffle with ``seed`` and hold out ``dev_size`` items; identical instructions never straddle."""
    by_text: dict[str, list[Item]] = {}
    for item in items:
        by_text.setdefault(item.instruction, []).append(item)
    groups = list(by_text.values())
    random.Random(seed).shuffle(groups)
    dev: list[Item] = []
    train: list[Item] = []
    for group in groups:
        (dev if len(dev) + len(group) <= dev_size else train).extend(group)
    return train, dev


def batch(train: list[Item], size: int, seed: int, step: int) -> list[Item]:
    """The mini-batch for one optimization step: the same seed and step always give the same batch."""
    return random.Random(f"{seed}:{step}").sample(train, size)


def dev_fingerprint(dev: list[Item]) -> str:
    """Identifies a dev set by its items, so failure rates are only compared on the same one."""
    digest = hashlib.sha256()
    for item in dev:
        digest.update(f"{item.id}\0{item.instruction}\0".encode("utf-8"))
    return digest.hexdigest()[:16]
