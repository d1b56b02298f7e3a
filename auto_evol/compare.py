"""Compare evolving methods side by side on the same held-out dev items, with honest statistics.

For every method and dev item, the instruction is evolved ``rounds`` times (a failed round leaves it
as it was, as in Evol-Instruct) and every new stage is answered and judged by F(r). Reported per
method: the round-1 failure rate with a bootstrap interval and its paired difference to a baseline,
counts per failure type, the LLM difficulty judge's score per round, length growth per round, and
diversity of the evolved instructions (embeddings, k-means, silhouette, mean pairwise distance, a
t-SNE map). A report (Markdown + PNG plots) is written and logged to MLflow.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import llm as llm_mod
from . import stats
from .devset import load_split
from .errors import UserError
from .evolve import pick, resolve_methods
from .failure import Failure, answer_failure
from .llm import Llm, RoleSettings
from .runner import Runner
from .trajectory import answer, evolve_once, stage0

DIFFICULTY_PROMPT = """\
Rate how difficult and complex the instruction below is to carry out, on a scale from 1 (trivial) to
10 (very hard). Reply with the number only.

Instruction:
{instruction}
"""
_SCORE = re.compile(r"^\s*(10|[1-9])(?:\.0+)?\s*\.?\s*$")


def difficulty_score(reply: str) -> int | None:
    """The judge's score, or None when the reply is not a bare score (counted, never guessed)."""
    match = _SCORE.match(reply.strip().strip("*"))
    return int(match.group(1)) if match else None


@dataclass
class CompareOptions:
    methods: list[str]
    data: str = "gsm8k_seed"
    instruction_field: str | None = None
    rounds: int = 3
    dev_size: int = 50
    batch_size: int = 1               # only for the dev split of user files
    seed: int = 0
    baseline: str | None = None       # the method the others are compared with; the first when None
    confidence: float = 0.95
    evol_model: str | None = None
    judge_model: str | None = None    # the difficulty judge; the evol model when None
    api_base: str | None = None
    evol_max_tokens: int = 1024
    embeddings: str = "auto"          # auto | tfidf | sentence
    out: str | None = None            # report folder; reports/<data> when None
    concurrency: int = 4
    cache_dir: str | None = llm_mod.DEFAULT_CACHE_DIR
    track: bool = True
    structured: str = "auto"          # JSON-schema replies from the evolver: auto | on | off


@dataclass
class Stage:
    round: int
    instruction: str                  # the instruction after this round (unchanged when it failed)
    evolved: bool
    failure: Failure | None
    difficulty: int | None = None


@dataclass
class MethodReport:
    name: str
    stages: dict[str, list[Stage]] = field(default_factory=dict)   # dev item id -> rounds 1..R

    def flags(self, round_: int, items: list[str]) -> list[bool]:
        return [self.stages[i][round_ - 1].failure is not None for i in items]


class CompareReporter:
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, name: str) -> None: ...


def compare(options: CompareOptions, *, evol: Llm | None = None, judge: Llm | None = None,
            reporter: CompareReporter | None = None) -> dict:
    """Run the comparison; returns the summary that the report shows (also written as summary.json)."""
    reporter = reporter or CompareReporter()
    if len(options.methods) < 1:
        raise UserError("name at least one method with --methods")
    if options.dev_size < stats.MIN_ITEMS:
        raise UserError(f"--dev-size {options.dev_size} is too small for bootstrap intervals "
                        f"(at least {stats.MIN_ITEMS} dev items)")
    if options.rounds < 1:
        raise UserError("--rounds must be at least 1")
    families = {spec: resolve_methods([spec]) for spec in options.methods}
    baseline = options.baseline or options.methods[0]
    if baseline not in families:
        raise UserError(f"--baseline {baseline!r} is not one of --methods")
    split = load_split(options.data, dev_size=options.dev_size, batch_size=options.batch_size, seed=options.seed,
                       instruction_field=options.instruction_field)
    if len(split.dev) < stats.MIN_ITEMS:
        raise UserError(f"the dev set holds {len(split.dev)} items: too few for bootstrap intervals "
                        f"(at least {stats.MIN_ITEMS})")
    embed = embedder(options.embeddings)
    out = Path(options.out or Path("reports") / split.name)
    if evol is None:
        llm_mod.check_structured(options.structured)
        evol_settings = RoleSettings(options.evol_model, options.api_base, 0.0, None, options.evol_max_tokens,
                                     structured=options.structured)
        judge_settings = RoleSettings(options.judge_model or options.evol_model, options.api_base, 0.0, None, 16)
        evol, judge = llm_mod.build_roles((evol_settings, "--evol-model"), (judge_settings, "--judge-model"),
                                          cache_dir=options.cache_dir, concurrency=options.concurrency)
    judge = judge or evol
    started = time.perf_counter()
    dev_ids = [item.id for item in split.dev]
    reports = {spec: MethodReport(spec) for spec in options.methods}
    with ThreadPoolExecutor(options.concurrency) as pool:
        runner = Runner(pool, reporter, (evol, judge) if judge is not evol else (evol,))
        current = {(spec, item.id): stage0(item) for spec in options.methods for item in split.dev}
        for round_ in range(1, options.rounds + 1):
            tasks = [(spec, item) for spec in options.methods for item in split.dev]

            def run_one(task, round_=round_):
                spec, item = task
                method = pick(families[spec], options.seed, item.id, round_)
                before = current[(spec, item.id)]
                evolved, _, failure = evolve_once(evol, method, before)
                if failure is None:
                    text, failure = answer(evol, evolved)
                    failure = failure or answer_failure(text)
                return Stage(round_, evolved or before, evolved is not None, failure)

            for (spec, item), stage in zip(tasks, runner.map(f"round {round_}", run_one, tasks)):
                reports[spec].stages.setdefault(item.id, []).append(stage)
                current[(spec, item.id)] = stage.instruction
        # Difficulty: each seed once, and every instruction a round changed.
        to_score = [("seed", item.id, item.instruction) for item in split.dev] + [
            (spec, item_id, s.instruction) for spec, r in reports.items() for item_id, ss in r.stages.items()
            for s in ss if s.evolved]
        scores = runner.map("difficulty", lambda t: difficulty_score(
            judge.ask(DIFFICULTY_PROMPT.format(instruction=t[2])).text), to_score)
    seed_scores = {item_id: score for (who, item_id, _), score in zip(to_score, scores) if who == "seed"}
    stage_scores = iter(score for (who, _, _), score in zip(to_score, scores) if who != "seed")
    for r in reports.values():
        for ss in r.stages.values():
            for s in ss:
                if s.evolved:
                    s.difficulty = next(stage_scores)
    summary = _summarise(options, split, reports, baseline, seed_scores, embed, dev_ids)
    summary["calls"] = {"evol": evol.usage.snapshot(), **({"judge": judge.usage.snapshot()} if judge is not evol else {})}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    from .report import write_report

    write_report(summary, reports, split, out)
    if options.track:
        from .tracking import log_compare

        summary["run_id"] = log_compare(options, summary, out)
    return summary


def embedder(kind: str):
    """An embedding function (texts -> 2-D array) and its name. TF-IDF always works; a sentence
    model is used when sentence-transformers and a model are installed."""
    if kind not in ("auto", "tfidf", "sentence"):
        raise UserError(f"--embeddings must be auto, tfidf or sentence, got {kind!r}")
    if kind in ("auto", "sentence"):
        try:
            from sentence_transformers import SentenceTransformer  # noqa: F401

            def sentence(texts):
                import os

                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                model = SentenceTransformer("all-MiniLM-L6-v2")
                return model.encode(list(texts), normalize_embeddings=True)

            return sentence, "sentence-transformers all-MiniLM-L6-v2"
        except Exception:
            if kind == "sentence":
                raise UserError("--embeddings sentence needs sentence-transformers and its model installed "
                                "(pip install sentence-transformers); --embeddings tfidf works without") from None

    def tfidf(texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(min_df=1, ngram_range=(1, 2), sublinear_tf=True).fit_transform(list(texts)).toarray()

    return tfidf, "TF-IDF" + (" (fallback: no sentence-embedding model installed)" if kind == "auto" else "")


def _summarise(options, split, reports, baseline, seed_scores, embed, dev_ids) -> dict:
    import numpy as np

    embed_fn, embed_name = embed
    seeds = {item.id: item.instruction for item in split.dev}
    seed_diff = [v for v in seed_scores.values() if v is not None]
    summary: dict = {"data": split.name, "dev_items": len(dev_ids), "rounds": options.rounds, "baseline": baseline,
                     "confidence": options.confidence, "embeddings": embed_name, "methods": {},
                     "seed_difficulty": float(np.mean(seed_diff)) if seed_diff else None,
                     "unscored_difficulty": sum(v is None for v in seed_scores.values())}
    base_flags = reports[baseline].flags(1, dev_ids)
    texts, owners = [seeds[i] for i in dev_ids], ["seeds"] * len(dev_ids)
    for spec, r in reports.items():
        flags = r.flags(1, dev_ids)
        rate = stats.bootstrap_rate(flags, confidence=options.confidence, seed=options.seed)
        diff = stats.paired_difference(flags, base_flags, confidence=options.confidence, seed=options.seed)
        counts = Counter(r.stages[i][0].failure.value for i in dev_ids if r.stages[i][0].failure)
        per_round = []
        for k in range(1, options.rounds + 1):
            stage = [r.stages[i][k - 1] for i in dev_ids]
            scored = [s.difficulty for s in stage if s.evolved and s.difficulty is not None]
            growth = [len(s.instruction.split()) / max(1, len(seeds[i].split())) for i, s in zip(dev_ids, stage)]
            per_round.append({"round": k, "failure_rate": sum(s.failure is not None for s in stage) / len(stage),
                              "difficulty": float(np.mean(scored)) if scored else None,
                              "unscored": sum(s.evolved and s.difficulty is None for s in stage),
                              "length_growth": float(np.mean(growth))})
        evolved = [s.instruction for i in dev_ids for s in r.stages[i] if s.evolved]
        texts += evolved
        owners += [spec] * len(evolved)
        summary["methods"][spec] = {
            "failure_rate": {"estimate": rate.estimate, "low": rate.low, "high": rate.high},
            "difference_to_baseline": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
            "failures": dict(counts), "per_round": per_round, "evolved_instructions": len(evolved)}
    summary["diversity"] = _diversity(texts, owners, embed_fn, options.seed)
    return summary


def _diversity(texts: list[str], owners: list[str], embed_fn, seed: int) -> dict:
    """k-means over seeds and evolved instructions together; per group, mean pairwise cosine distance,
    mean silhouette and clusters covered; a 2-D t-SNE map for the scatter plot."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.manifold import TSNE
    from sklearn.metrics import pairwise_distances, silhouette_samples

    vectors = np.asarray(embed_fn(texts), dtype=float)
    n = len(texts)
    k = max(2, min(20, n // 5))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)
    silhouettes = silhouette_samples(vectors, labels, metric="cosine") if len(set(labels)) > 1 else np.zeros(n)
    distances = pairwise_distances(vectors, metric="cosine")
    groups = {}
    owners_arr = np.array(owners)
    for owner in dict.fromkeys(owners):
        idx = np.flatnonzero(owners_arr == owner)
        sub = distances[np.ix_(idx, idx)]
        pairwise = float(sub[np.triu_indices(len(idx), 1)].mean()) if len(idx) > 1 else None
        groups[owner] = {"count": int(len(idx)), "mean_pairwise_distance": pairwise,
                         "silhouette": float(silhouettes[idx].mean()), "clusters": int(len(set(labels[idx])))}
    perplexity = max(2.0, min(30.0, (n - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="random").fit_transform(vectors)
    return {"k": k, "groups": groups, "tsne": {"x": points[:, 0].tolist(), "y": points[:, 1].tolist(),
                                               "owner": owners}}
