"""Near-duplicate evolutions (evolve --dedup near): rounds of evolution repeat themselves.

Two seeds that were one problem told twice (GSM8K tells some problems twice) evolved alike, or two
seeds evolved into the same harder problem, give records a fine-tuned model learns twice. Pairs are found with devset.py's
exact similarity join (Jaccard 0.6 of the word sets, numbers read as one token; GSM8K's 7,473
problems in about a second, 50,000 rows in about 11 s), and decided per pair, not per transitive group:

- an evolved record near a seed other than its own is dropped (it repeats data already released);
- of evolved records near one another, one is kept: the later round first (the more evolved), then
  the smaller id;
- an evolved record near its own seed, or near another round of its own seed, is no duplicate: each
  round evolves the last one's record (e0 adds 10 to 20 words, so with word-set Jaccard 0.6 nearly
  every evolution is "near" its parent), Evol-Instruct keeps every round on purpose, and an evolution
  too close to what it came from is the elimination rules' concern (``unchanged``, no information
  gain). Seeds are never dropped.

Pure: texts in, the dropped records and what each repeats out.
"""
from __future__ import annotations

from dataclasses import dataclass

from .devset import NEAR_DUPLICATE_JACCARD, near_duplicate_pairs

NEAR_DUPLICATE = "near_duplicate"   # the reason a dropped record carries in the rejects file


@dataclass(frozen=True)
class Evolved:
    id: str          # the record's id, SEED#ROUND
    seed_id: str
    round: int
    text: str


def near_duplicates(seeds: list[tuple[str, str]], evolved: list[Evolved],
                    threshold: float = NEAR_DUPLICATE_JACCARD) -> dict[str, str]:
    """{dropped record id: the id of the record it repeats} for ``evolved`` against one another and
    ``seeds`` ((seed id, text)); a seed's record id is SEED#0. Records of one seed's lineage never
    count as duplicates of one another."""
    texts = [t for _, t in seeds] + [e.text for e in evolved]
    n = len(seeds)
    near: dict[int, list[int]] = {}
    for a, b in near_duplicate_pairs(texts, threshold):
        if b < n:   # two seeds: not this pass's concern
            continue
        near.setdefault(a, []).append(b)
        near.setdefault(b, []).append(a)
    dropped: dict[str, str] = {}
    kept: set[int] = set()
    order = sorted(range(len(evolved)), key=lambda k: (-evolved[k].round, evolved[k].id))
    for k in order:
        e, node = evolved[k], n + k
        others = near.get(node, ())
        seed = next((seeds[j][0] for j in sorted(others) if j < n and seeds[j][0] != e.seed_id), None)
        if seed is not None:
            dropped[e.id] = f"{seed}#0"
            continue
        twin = next((evolved[j - n].id for j in sorted(others) if j in kept and evolved[j - n].seed_id != e.seed_id),
                    None)
        if twin is not None:
            dropped[e.id] = twin
            continue
        kept.add(node)
    return dropped
