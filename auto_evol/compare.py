"""Compare evolving methods side by side on the same held-out dev items, with honest statistics.

For every method and dev item, the instruction is evolved ``rounds`` times (a failed round leaves it
as it was, as in Evol-Instruct) and every new stage is answered and judged by F(r). Reported per
method: the round-1 failure rate with a bootstrap interval and its paired difference to a baseline,
counts per failure type, the LLM difficulty judge's score per round, length growth per round, and
diversity of the evolved instructions (embeddings, k-means, silhouette, mean pairwise distance, a
t-SNE map). A report (Markdown + PNG plots) is written and logged to MLflow.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .algorithm import stats
from .algorithm.comparison import (CompareSummary, Diversity, GroupDiversity, MethodReport, MethodSummary,
                                   RoundSummary, Stage, TsneMap)
from .algorithm.devset import load_split
from .algorithm.judge import DIFFICULTY_PROMPT, difficulty_score
from .algorithm.method import pick
from .algorithm.runner import Runner
from .algorithm.trajectory import aevolve_and_answer, evolve_and_answer, stage0
from .core.errors import UserError
from .core.observer import Observer, Observers
from .llm import backends
from .llm import client as llm_mod
from .llm import cost as cost_mod
from .llm.client import Llm, RoleSettings
from .llm.roles import build_roles
from .tracking.registry import resolve_methods


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
    cache_dir: str | None = backends.DEFAULT_CACHE_DIR
    track: bool = True
    structured: str = "auto"          # JSON-schema replies from the evolver: auto | on | off
    batch: str | None = None          # all | evol (the rounds) | judge (difficulty): calls to the provider's batch API


def compare(options: CompareOptions, *, evol: Llm | None = None, judge: Llm | None = None,
            observers: Iterable[Observer] | None = None) -> CompareSummary:
    """Run the comparison; returns the summary that the report shows (its to_dict() is summary.json).
    ``observers`` hear the run's events (observer.py); the MLflow logger, which records the
    comparison when ``track`` is on, is added when the list holds none."""
    from .tracking.loggers import CompareLogger

    observers = list(observers or [])
    if not any(isinstance(o, CompareLogger) for o in observers):
        observers.insert(0, CompareLogger())   # first: a console after it reports a run already on record
    if len(options.methods) < 1:
        raise UserError("name at least one method with --methods")
    if options.dev_size < stats.MIN_ITEMS:
        raise UserError(f"--dev-size {options.dev_size} is too small for bootstrap intervals "
                        f"(at least {stats.MIN_ITEMS} dev items)")
    if options.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if options.batch is not None:
        from .llm.batch.batcher import check_mode

        check_mode(options.batch, "compare")
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
    evol_settings = RoleSettings(options.evol_model, options.api_base, 0.0, None, options.evol_max_tokens,
                                 structured=options.structured)
    judge_settings = RoleSettings(options.judge_model or options.evol_model, options.api_base, 0.0, None, 16)
    if options.batch is not None:   # before any call: a batch endpoint for every role --batch names
        from .llm.batch.batcher import check_batchable

        if options.batch in ("all", "evol"):
            check_batchable(evol.settings if evol else evol_settings)
        if options.batch in ("all", "judge"):
            check_batchable((judge or evol).settings if evol else judge_settings)
    if evol is None:
        llm_mod.check_structured(options.structured)
        evol, judge = build_roles((evol_settings, "--evol-model"), (judge_settings, "--judge-model"),
                                          cache_dir=options.cache_dir, concurrency=options.concurrency)
    judge = judge or evol
    batched = _batched(options.batch, evol, judge, out)   # its journal locked before any call
    try:
        with Observers(observers) as heard:
            heard.start(options, split=split, methods=list(options.methods), out=out)
            summary = _run(options, split, families, baseline, embed, out, evol, judge, heard, batched)
            heard.finish(summary)
    finally:
        if options.batch:
            from .llm.batch.batcher import release

            release(*batched)
    return replace(summary, run_id=heard.run_id)


def _batched(mode: str | None, evol: Llm, judge: Llm, out: Path) -> tuple:
    """--batch: (evol, judge) as BatchRoles where the mode batches them, else None; journaled in the
    report folder (``batches.jsonl``), so a rerun into the same --out attaches to what was submitted.
    A BatchRole counts its calls apart (billed at the batch price); the role's usage is the sum."""
    if not mode:
        return None, None
    from .llm.batch import batcher as batch_mod

    journal = batch_mod.BatchJournal(out / "batches.jsonl").open()   # one process per journal: refused here
    wrapped: dict[int, object] = {}

    def wrap(llm):
        if id(llm) not in wrapped:
            wrapped[id(llm)] = batch_mod.BatchRole(llm, journal)
        return wrapped[id(llm)]

    return (wrap(evol) if mode in ("all", "evol") else None), (wrap(judge) if mode in ("all", "judge") else None)


def _run(options: CompareOptions, split, families: dict, baseline: str, embed, out: Path, evol: Llm, judge: Llm,
         heard: Observers, batched: tuple = (None, None)) -> CompareSummary:
    """The comparison itself: the rounds, the difficulty scores, the summary and the report files.
    ``batched``: (evol, judge) as BatchRoles where --batch sends them to batches (None: online); a
    batched phase has all its items in flight at once on an event loop (Runner.amap)."""
    started = time.perf_counter()
    dev_ids = [item.id for item in split.dev]
    reports = {spec: MethodReport(spec) for spec in options.methods}
    batched_evol, batched_judge = batched
    with ThreadPoolExecutor(options.concurrency) as pool:
        wrappers = list({id(b): b for b in batched if b is not None}.values())   # their calls are counted apart
        runner = Runner(pool, heard, ((evol, judge) if judge is not evol else (evol,)) + tuple(wrappers))
        current = {(spec, item.id): stage0(item) for spec in options.methods for item in split.dev}
        for round_ in range(1, options.rounds + 1):
            tasks = [(spec, item) for spec in options.methods for item in split.dev]

            def staged(task, outcome, round_=round_):
                before = current[(task[0], task[1].id)]
                return Stage(round_, outcome.evolved or before, outcome.evolved is not None, outcome.failure)

            def method_of(task, round_=round_):
                return pick(families[task[0]], options.seed, task[1].id, round_)

            def run_one(task):
                return staged(task, evolve_and_answer(evol, method_of(task), current[(task[0], task[1].id)]))

            async def arun_one(task):
                return staged(task, await aevolve_and_answer(batched_evol, method_of(task),
                                                            current[(task[0], task[1].id)]))

            if batched_evol is None:
                stages = runner.map(f"round {round_}", run_one, tasks)
            else:
                stages = runner.amap(f"round {round_}", arun_one, tasks, after=batched_evol.aclose)
            for (spec, item), stage in zip(tasks, stages):
                reports[spec].stages.setdefault(item.id, []).append(stage)
                current[(spec, item.id)] = stage.instruction
        # Difficulty: each seed once, and every instruction a round changed.
        to_score = [("seed", item.id, item.instruction) for item in split.dev] + [
            (spec, item_id, s.instruction) for spec, r in reports.items() for item_id, ss in r.stages.items()
            for s in ss if s.evolved]
        if batched_judge is None:
            scores = runner.map("difficulty", lambda t: difficulty_score(
                judge.ask(DIFFICULTY_PROMPT.format(instruction=t[2])).text), to_score)
        else:
            async def score(t):
                return difficulty_score((await batched_judge.aask(DIFFICULTY_PROMPT.format(instruction=t[2]))).text)

            scores = runner.amap("difficulty", score, to_score, after=batched_judge.aclose)
    seed_scores = {item_id: score for (who, item_id, _), score in zip(to_score, scores) if who == "seed"}
    stage_scores = iter(score for (who, _, _), score in zip(to_score, scores) if who != "seed")
    for r in reports.values():
        for ss in r.stages.values():
            for s in ss:
                if s.evolved:
                    s.difficulty = next(stage_scores)
    roles = {"evol": evol, **({"judge": judge} if judge is not evol else {})}
    # Each role's calls: online (the Llm's usage) plus those its BatchRole sent to batches (its own usage,
    # billed at the batch price).
    sent = {role: cost_mod.add(*(b.usage.snapshot() for b in wrappers if b.llm is llm)) for role, llm in roles.items()}
    calls = {role: cost_mod.add(llm.usage.snapshot(), sent[role]) for role, llm in roles.items()}
    summary = replace(_summarise(options, split, reports, baseline, seed_scores, embed, dev_ids),
                      calls=calls, costs=cost_mod.costs(calls, {"evol": evol.settings, "judge": judge.settings},
                                                        batched=sent),
                      seconds=round(time.perf_counter() - started, 2))
    from .tracking.report import write_report

    write_report(summary, reports, split, out)
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


def _summarise(options, split, reports, baseline, seed_scores, embed, dev_ids) -> CompareSummary:
    import numpy as np

    embed_fn, embed_name = embed
    seeds = {item.id: item.instruction for item in split.dev}
    seed_diff = [v for v in seed_scores.values() if v is not None]
    methods: dict[str, MethodSummary] = {}
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
            per_round.append(RoundSummary(round=k, failure_rate=sum(s.failure is not None for s in stage) / len(stage),
                                          difficulty=float(np.mean(scored)) if scored else None,
                                          unscored=sum(s.evolved and s.difficulty is None for s in stage),
                                          length_growth=float(np.mean(growth))))
        evolved = [s.instruction for i in dev_ids for s in r.stages[i] if s.evolved]
        texts += evolved
        owners += [spec] * len(evolved)
        methods[spec] = MethodSummary(failure_rate=rate, difference_to_baseline=diff, failures=dict(counts),
                                      per_round=tuple(per_round), evolved_instructions=len(evolved))
    return CompareSummary(data=split.name, dev_items=len(dev_ids), rounds=options.rounds, baseline=baseline,
                          confidence=options.confidence, embeddings=embed_name, methods=methods,
                          seed_difficulty=float(np.mean(seed_diff)) if seed_diff else None,
                          unscored_difficulty=sum(v is None for v in seed_scores.values()),
                          diversity=_diversity(texts, owners, embed_fn, options.seed))


def _diversity(texts: list[str], owners: list[str], embed_fn, seed: int) -> Diversity:
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
        groups[owner] = GroupDiversity(count=int(len(idx)), mean_pairwise_distance=pairwise,
                                       silhouette=float(silhouettes[idx].mean()),
                                       clusters=int(len(set(labels[idx]))))
    perplexity = max(2.0, min(30.0, (n - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="random").fit_transform(vectors)
    return Diversity(k=k, groups=groups, tsne=TsneMap(x=tuple(points[:, 0].tolist()), y=tuple(points[:, 1].tolist()),
                                                      owner=tuple(owners)))
