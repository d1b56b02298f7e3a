"""The dataset card of ``evolve --format hf``: the README.md the Hugging Face Hub shows and reads.

People who fine-tune on evolved data publish it on the Hub and judge it by its card: what it was
made from and with, under which license, how much of it was eliminated and why. The YAML header is
what the Hub indexes (license, task categories, size category) and what ``datasets.load_dataset``
reads (``configs``: the Parquet shards under data/); the body is the run's own record (seeds,
models, methods with their text or prompt-registry link, rounds, eliminations per reason, lengths
before and after, cost), so the card alone says how the data came about, with no MLflow store at hand.

Pure text from plain facts (``CardFacts``); evolve gathers them. Secrets never get here: server
addresses come redacted (core.secrets), tokens are never among the facts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# LICENSE file wording -> the Hub's license id; the first match wins (a file names one license).
_LICENSES = (
    (re.compile(r"\bMIT License\b|Permission is hereby granted, free of charge", re.I), "mit"),
    (re.compile(r"Apache License.{0,40}Version 2\.0", re.I | re.S), "apache-2.0"),
    (re.compile(r"Attribution-ShareAlike 4\.0|CC[- ]BY[- ]SA[- ]4\.0", re.I), "cc-by-sa-4.0"),
    (re.compile(r"Attribution-NonCommercial 4\.0|CC[- ]BY[- ]NC[- ]4\.0", re.I), "cc-by-nc-4.0"),
    (re.compile(r"Attribution 4\.0 International|CC[- ]BY[- ]4\.0", re.I), "cc-by-4.0"),
    (re.compile(r"\bCC0\b|Public Domain Dedication", re.I), "cc0-1.0"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 3", re.I), "gpl-3.0"),
    (re.compile(r"BSD 3-Clause|Redistribution and use in source and binary forms", re.I), "bsd-3-clause"),
)
_YAML_LICENSE = re.compile(r"^license:\s*([\w.\-]+)\s*$", re.M)


def license_of(data: str) -> str | None:
    """The seeds' license id when a file says it: a LICENSE file beside the seeds, or a README.md there
    whose YAML header names one (a Hub card). None when nothing does: the card then says so, never guesses."""
    if data.startswith("hf:"):
        return None
    folder = Path(data).parent
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING"):
        path = folder / name
        if path.is_file():
            text = path.read_text(errors="replace")[:20000]
            for pattern, spdx in _LICENSES:
                if pattern.search(text):
                    return spdx
    readme = folder / "README.md"
    if readme.is_file():
        head = readme.read_text(errors="replace")
        if head.startswith("---"):
            header = head.split("---", 2)[1] if head.count("---") >= 2 else ""
            found = _YAML_LICENSE.search(header)
            if found:
                return found.group(1)
    return None


def size_category(n: int) -> str:
    """The Hub's size_categories value for ``n`` records."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < bound:
            return label
    return "n>100M"


@dataclass(frozen=True)
class MethodFact:
    name: str
    hash: str
    weight: float
    text: str
    link: str = ""          # a prompts:/ registry URI when the method came from the registry


@dataclass(frozen=True)
class CardFacts:
    title: str
    records: int
    seeds_source: str
    seeds: int
    evol_model: str
    answer_model: str
    methods: tuple[MethodFact, ...]
    rounds: tuple[dict, ...]            # RoundStats.to_dict() per round
    license: str | None = None
    bad_lines: int = 0
    sample: int | None = None
    seed: int = 0
    judge: bool = True
    cost: dict = field(default_factory=dict)          # EvolveStats.cost
    contamination: dict = field(default_factory=dict)  # {"benchmarks": [...], "ngram": n, "seeds": k, "evolved": k}
    dedup: str = "off"
    tracking_run: str | None = None                   # the MLflow run id, when one was recorded


def _yaml(facts: CardFacts) -> str:
    lines = ["---", f"license: {facts.license or 'other'}", "task_categories:", "- text-generation",
             "- question-answering", "size_categories:", f"- {size_category(facts.records)}",
             "tags:", "- synthetic", "- evol-instruct", "- auto-evol",
             "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: data/train-*",
             "---"]
    return "\n".join(lines)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(facts: CardFacts) -> str:
    """The README.md: YAML header, then how the data was made."""
    out = [_yaml(facts), "", f"# {facts.title}", "",
           f"{facts.records:,} instruction / response records made with "
           f"auto-evol (Auto Evol-Instruct, Zeng et al. 2024; Evol-Instruct, Xu et al. 2023): "
           f"{facts.seeds:,} seed instructions evolved for {len(facts.rounds)} round(s); every round's kept "
           f"evolutions and the seeds, merged in a seeded random order"
           + (f", {facts.sample:,} of them drawn" if facts.sample else "") + ".", ""]
    out += ["## Seeds", "", f"- Source: `{facts.seeds_source}` ({facts.seeds:,} seeds used"
            + (f", {facts.bad_lines:,} rows skipped as unreadable" if facts.bad_lines else "")
            + (f", {facts.contamination['seeds']:,} left out as benchmark items" if facts.contamination.get("seeds")
               else "") + ")",
            "- License: " + (f"`{facts.license}` (from the seeds' license file)" if facts.license else
                             "not known from the seeds: check the source's terms before publishing "
                             "(the header says `other`)"), ""]
    out += ["## Models", "", f"- Evolver (and information-gain judge): `{facts.evol_model}`",
            f"- Answers: `{facts.answer_model}`", "- The models' providers' terms may apply to their outputs.", ""]
    out += ["## Methods", "", "| method | hash | weight |", "| --- | --- | --- |"]
    for m in facts.methods:
        out.append(f"| {_cell(m.link or m.name)} | `{m.hash}` | {m.weight:g} |")
    out.append("")
    for m in facts.methods:
        if m.link:
            out += [f"`{m.name}` is `{m.link}` in the MLflow prompt registry of the run that made it.", ""]
        else:
            out += [f"<details><summary>{m.name} ({m.hash})</summary>", "", "```text", m.text.rstrip(), "```",
                    "", "</details>", ""]
    out += ["## Rounds and eliminations", "",
            "Each round evolves every instruction once; a failed evolution is eliminated (reason below) and "
            "its instruction tried again next round" + (" (the information-gain judge on)" if facts.judge else
                                                       " (no information-gain judge)") + ".", "",
            "| round | kept | eliminated | by reason | mean words before | mean words after |",
            "| --- | --- | --- | --- | --- | --- |"]
    totals: dict[str, int] = {}
    for r in facts.rounds:
        eliminated = r.get("eliminated", {})
        for reason, count in eliminated.items():
            totals[reason] = totals.get(reason, 0) + count
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(eliminated.items(), key=lambda kv: -kv[1])) or "none"
        out.append(f"| {r['round']} | {r['kept']} | {sum(eliminated.values())} | {_cell(reasons)} | "
                   f"{r.get('mean_words_before') if r.get('mean_words_before') is not None else '-'} | "
                   f"{r.get('mean_words_after') if r.get('mean_words_after') is not None else '-'} |")
    out += ["", "Eliminated in all: " + (", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "none") + ".", ""]
    c = facts.contamination
    out += ["## Decontamination", ""]
    if c:
        out += [f"Checked against {', '.join(f'`{b}`' for b in c['benchmarks'])}: an instruction sharing at least "
                f"{c['share']:.0%} of its (or the benchmark item's) {c['ngram']}-grams with one benchmark item, "
                f"after normalisation, was rejected as `contaminated`: {c['seeds']} seed(s) and {c['evolved']} "
                f"evolution(s).", ""]
    else:
        out += ["Not checked against any benchmark (`--decontaminate` not given).", ""]
    out += ["## Deduplication", "",
            ("Near-duplicate evolutions (word-set Jaccard 0.6 or more, with one another or with another seed) "
             "were reduced to one (`near_duplicate` in the table above)." if facts.dedup == "near" else
             "None (`--dedup near` not given): rounds of one seed may be near-duplicates of each other."), ""]
    out += ["## Cost", "", "The calls of the process that wrote this card; calls an earlier process made for the same "
            "work folder (a `--dry-run --pilot`, a run stopped and continued) are not in it.", ""]
    if facts.cost:
        for role, row in facts.cost.items():
            if isinstance(row, dict):
                usd = row.get("cost_usd")
                out.append(f"- {role}: {row.get('calls', 0):,} calls, {row.get('input_tokens', 0):,} tokens in, "
                           f"{row.get('output_tokens', 0):,} out"
                           + (f", {usd:.4f} USD" if isinstance(usd, (int, float)) else
                              f" ({row.get('note') or 'no known price'})"))
        total = facts.cost.get("total_usd")
        if isinstance(total, (int, float)):
            out.append(f"- total: {total:.4f} USD")
    else:
        out.append("Not recorded.")
    out += ["", "## Reproducing", "",
            f"Seed {facts.seed}; the same command with the same seeds, methods and models gives the same draws "
            "(every (item, round) has its own rollout id)."
            + (f" MLflow run `{facts.tracking_run}`." if facts.tracking_run else ""), ""]
    return "\n".join(out)
