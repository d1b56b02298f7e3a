"""The held-out dev set and the training pool it must never overlap.

A registered data set is a folder in dev_sets/ with ``train.jsonl`` and ``dev.jsonl``, already split;
any other file is split here, deterministically by seed, with near-duplicates kept on one side.
Mini-batches walk through the training pool only.
"""
from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..core.errors import UserError
from ..core.resources import shipped_dir
from ..storage.data import Item, hub_name, is_hub, load_items

# Two instructions are near-duplicates when the Jaccard similarity of their word sets is at least this.
# Measured on GSM8K's 7,473 training problems (numbers normalised, see _words): 107 pairs reach 0.6
# (88 groups, 187 problems, the largest 8), 55 reach 0.7, 528 reach 0.5 (and chain into a group of
# 73). Pairs at 0.6-0.7 are still one problem told again (the same rolls of wrapping paper sold to a
# grandmother, an uncle and a neighbour, with new names and numbers); pairs at 0.5-0.6 are mostly short
# problems that only share a frame ("X has 7 more Y than Z. If Z has ..."). Every dev item of the
# gsm_symbolic set gsm8k_seed used to be had a template sibling in its training pool at 0.74 or more
# (median 0.91). At 0.6 a one-word change is caught in any instruction of 4 or more distinct words
# ((n - 1) / (n + 1) >= 0.6), one added word in any of 2 or more.
NEAR_DUPLICATE_JACCARD = 0.6
# Numbers are read as one token "0" (template siblings differ mostly in their numbers) only when an
# instruction has at least this many distinct other words: in "Task 3" or "Question number 7?" the
# number is most of what the instruction says.
NUMBERS_NORMALISED_FROM = 5

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Split:
    name: str
    train: list[Item]
    dev: list[Item]
    notes: tuple[str, ...] = ()   # what was done to the split besides splitting (optimize --decontaminate)


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
        if len(dev) < dev_size:
            raise UserError(f"{spec}: its near-duplicate groups are too large to hold out {dev_size} dev items "
                            f"(only {len(dev)} fit); use a smaller --dev-size or more varied rows")
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


def _words(text: str) -> frozenset[str]:
    """The word set compared for near-duplicates: NFKC, case-folded, ``\\w+`` tokens; every number is
    the token "0" once the text has NUMBERS_NORMALISED_FROM other distinct words."""
    tokens = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    words = {t for t in tokens if not t.isdecimal()}
    if len(words) >= NUMBERS_NORMALISED_FROM:
        return frozenset(words | ({"0"} if len(words) < len(set(tokens)) else set()))
    return frozenset(tokens)


def near_duplicate_groups(texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[int]:
    """A group label per text (the index of its group's first text): texts whose word sets reach
    ``threshold`` Jaccard similarity share a group, and so, transitively, do their near-duplicates.

    Exact and deterministic, not sampled (MinHash/LSH would miss a pair at the threshold now and then):
    an all-pairs set-similarity join with prefix and length filtering (Bayardo et al. 2007). Words are
    ranked rarest first. Two sets x, y with |y| <= |x| can only reach t if they share a word among the
    first |x| - ceil(t |x|) + 1 words of x and the first |y| - ceil(2t / (1 + t) |y|) + 1 words of y, and
    only if |y| >= t |x|; one sparse product of those prefixes names the candidate pairs, the
    element-wise product of their rows counts their common words exactly. Measured on one core (scipy's
    sparse kernels hold the GIL, so a second core would not help): GSM8K's 7,473 training problems in
    0.6 s (1.1 s with the other core busy); 50,000 rows (those problems, their worked solutions, and
    problems with 30% of their words replaced at random: a worst case of shared vocabulary) in 11 s.
    """
    t, sets, node = _nodes(texts, threshold)
    pairs = _similar_pairs(sets, t.numerator, t.denominator)
    graph = sparse.coo_matrix((np.ones(len(pairs[0])), pairs), shape=(len(sets), len(sets)))
    _, component = connected_components(graph, directed=False)
    first: dict[int, int] = {}
    return [first.setdefault(c, i) for i, c in enumerate(component[node].tolist())]


def near_duplicate_pairs(texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of texts whose word sets reach ``threshold`` Jaccard similarity: the
    same exact join as ``near_duplicate_groups``, without the transitive closure (evolve's --dedup
    decides per pair: an evolution near its own seed is no duplicate, near another seed it is)."""
    t, sets, node = _nodes(texts, threshold)
    members: list[list[int]] = [[] for _ in sets]
    for i, n in enumerate(node.tolist()):
        members[n].append(i)
    found: set[tuple[int, int]] = set()
    for group in members:   # identical word sets
        found.update((a, b) for k, a in enumerate(group) for b in group[k + 1:])
    xs, ys = _similar_pairs(sets, t.numerator, t.denominator)
    for x, y in zip(xs.tolist(), ys.tolist()):
        found.update((min(a, b), max(a, b)) for a in members[x] for b in members[y])
    return sorted(found)


def _nodes(texts: list[str], threshold: float) -> tuple[Fraction, list[frozenset[str]], np.ndarray]:
    """The threshold as a fraction (checked), the distinct word sets, and each text's index among them:
    identical word sets (and identical texts without a word) are one node before the join."""
    t = Fraction(threshold).limit_denominator(1000)
    if not 0 < t <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    node_of: dict[object, int] = {}
    sets: list[frozenset[str]] = []
    node = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _words(text)
        key = words if words else ("", text)
        if key not in node_of:
            node_of[key] = len(sets)
            sets.append(words)
        node[i] = node_of[key]
    return t, sets, node


def _similar_pairs(sets: list[frozenset[str]], num: int, den: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of sets with Jaccard similarity >= num / den, as two index arrays."""
    frequency = Counter(w for words in sets for w in words)
    rank = {w: r for r, w in enumerate(sorted(frequency, key=lambda w: (frequency[w], w)))}
    sizes = np.fromiter((len(words) for words in sets), dtype=np.int64, count=len(sets))
    if not len(sets) or not sizes.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    columns = np.fromiter((r for words in sets for r in sorted(rank[w] for w in words)),
                          dtype=np.int64, count=int(indptr[-1]))
    shape = (len(sets), len(rank))
    matrix = sparse.csr_matrix((np.ones(len(columns), np.int32), columns, indptr), shape=shape)
    row = np.repeat(np.arange(len(sets)), sizes)
    position = np.arange(len(columns)) - indptr[:-1][row]

    def prefix(lengths: np.ndarray) -> sparse.csr_matrix:
        keep = position < lengths[row]
        return sparse.csr_matrix((np.ones(int(keep.sum()), np.int32), (row[keep], columns[keep])), shape=shape)

    smallest = -(-num * sizes // den)                                   # ceil(t |x|)
    probe = prefix(sizes - smallest + 1)
    indexed = prefix(sizes - (-(-2 * num * sizes // (num + den))) + 1).T.tocsr()
    later = sizes * (len(sets) + 1) + np.arange(len(sets))              # y before x: smaller, or equal and first
    # rows per block so that one block's candidate list stays near 4 million pairs
    bound = np.cumsum(probe @ np.diff(indexed.indptr))
    found_x, found_y = [], []
    lo = 0
    while lo < len(sets):
        hi = max(lo + 1, int(np.searchsorted(bound, (bound[lo - 1] if lo else 0) + 4_000_000)))
        candidates = (probe[lo:hi] @ indexed).tocoo()
        x = candidates.row.astype(np.int64) + lo
        y = candidates.col.astype(np.int64)
        keep = (later[y] < later[x]) & (sizes[y] >= smallest[x])
        x, y = x[keep], y[keep]
        if len(x):
            common = np.asarray(matrix[x].multiply(matrix[y]).sum(axis=1)).ravel()
            similar = common * den >= num * (sizes[x] + sizes[y] - common)
            found_x.append(x[similar])
            found_y.append(y[similar])
        lo = hi
    if not found_x:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(found_x), np.concatenate(found_y)


def split(items: list[Item], dev_size: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Shuffle near-duplicate groups with ``seed`` and hold out ``dev_size`` items, whole groups only:
    an instruction and its rewrites with other numbers or a changed word never straddle the split."""
    groups: dict[int, list[Item]] = {}
    for item, label in zip(items, near_duplicate_groups([i.instruction for i in items])):
        groups.setdefault(label, []).append(item)
    ordered = list(groups.values())
    random.Random(seed).shuffle(ordered)
    dev: list[Item] = []
    train: list[Item] = []
    for group in ordered:
        (dev if len(dev) + len(group) <= dev_size else train).extend(group)
    return train, dev


def batch(train: list[Item], size: int, seed: int, step: int) -> list[Item]:
    """The mini-batch for optimization step ``step`` (counted from 1): the step-th consecutive slice of
    a seeded permutation of the pool, so no item comes back before the pool is used up, as the
    paper's code walks its data. A pass holds ``len(train) // size`` batches; the next pass draws a
    fresh permutation (the few items left over at a pass's end get their turn there). With the
    paper's 2,000 problems and batches of 10, a pass is 200 steps: a 10-step run sees 100 distinct
    items. The same seed and step always give the same batch."""
    if not 1 <= size <= len(train):
        raise ValueError(f"a mini-batch of {size} from a pool of {len(train)}")
    if step < 1:
        raise ValueError(f"steps are counted from 1, got {step}")
    per_pass = len(train) // size
    pass_number, slot = divmod(step - 1, per_pass)
    order = list(range(len(train)))
    random.Random(f"{seed}:pass{pass_number}").shuffle(order)
    return [train[i] for i in order[slot * size:(slot + 1) * size]]


def dev_fingerprint(dev: list[Item]) -> str:
    """Identifies a dev set by its items, so failure rates are only compared on the same one."""
    digest = hashlib.sha256()
    for item in dev:
        digest.update(f"{item.id}\0{item.instruction}\0".encode("utf-8"))
    return digest.hexdigest()[:16]
