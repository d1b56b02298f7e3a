"""The run loggers: what an optimize, evolve or compare run leaves in MLflow, as observers of the run.

One experiment per data set unless named. Per optimize: a parent run (settings, failure rate per step,
e0 and e*, the accepted steps, e* itself, and a checkpoint after every finished step for --resume); a
nested run per step (calls and seconds per phase, the trajectory); under it a nested run per candidate
(failure rate and counts per failure type, length growth, the method, its diff to the parent, the
optimizer's feedback, the dev evaluation table). All three kinds carry the optimize run's id as a tag,
so `auto-evol ui` can open one view on them (ui.py). Evolve and compare: one run each when they finish.
Cost (cost.py's prices): ``cost.ROLE`` and ``cost_usd`` (the total, when every role has a known price)
on the optimize run, each step run (that step's calls) and the evolve and compare runs, and ``cost_usd``
on each candidate run (its share of the step's dev evaluation).
Params hold model names and sampling settings only: never a key, and a server address loses any
user:password part. The loggers hear the run's events like any other observer (observer.py): the
algorithm does not know they exist. Where the store is and how it is opened: store.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import time
from pathlib import Path

from ..core.observer import Observer
from ..core.secrets import redact
from ..llm import cost as cost_mod
from . import store
from .store import KIND_TAG, OPTIMIZE_RUN_TAG, PARENT_TAG, client, experiment_id, get_run, run_lock, tracking_uri


def trace_llm_calls(experiment: str | None) -> None:
    """Record every LLM call as an MLflow trace in the run's experiment (DSPy autolog)."""
    import mlflow
    import mlflow.dspy

    if experiment:
        mlflow.set_experiment(experiment_id=experiment)
    mlflow.dspy.autolog(silent=True)


def _log_params(mlflow_client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, "" if v is None else str(v)) for k, v in params.items()])


def _log_metrics(mlflow_client, run_id: str, metrics: dict, step: int = 0) -> None:
    """Log the metrics that have a value, all at ``step``, in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if batch:
        mlflow_client.log_batch(run_id, metrics=batch)


def _new_run(experiment: str, run_name: str, kind: str) -> tuple[object, str]:
    """A client and a fresh run of ``kind`` in the named experiment of the project's store."""
    uri = tracking_uri()
    c = client(uri)
    run = c.create_run(experiment_id(c, experiment, uri), run_name=run_name, tags={KIND_TAG: kind})
    return c, run.info.run_id


def _table(evaluation) -> dict[str, list]:
    rows = evaluation.results
    return {
        "id": [r.item.id for r in rows],
        "original": [r.item.instruction for r in rows],
        "evolved": [r.evolved or "" for r in rows],
        "answer": [r.answer or "" for r in rows],
        "failure": [r.failure.value if r.failure else "" for r in rows],
        "evolver_reply": [r.reply for r in rows],
    }


def _trajectory_table(record) -> dict[str, list]:
    columns: dict[str, list] = {"case": [], "item_id": [], "stage": [], "instruction": [], "stopped": []}
    for case, evo in enumerate(record.trajectory.evolutions, start=1):
        for stage, text in enumerate(evo.stages):
            last = stage == len(evo.stages) - 1
            for key, value in (("case", case), ("item_id", evo.item.id), ("stage", stage), ("instruction", text),
                               ("stopped", evo.stopped.value if last and evo.stopped else "")):
                columns[key].append(value)
    return columns


def stored_options(options) -> dict:
    """An optimize run's settings as options.json keeps them for --resume: a URL's user:password is
    not stored (--resume asks for the same --api-base again), a data file is kept by its full path."""
    stored = dataclasses.asdict(options)
    stored["api_base"] = redact(options.api_base) or None
    stored["api_base_credentials"] = redact(options.api_base) != (options.api_base or "")
    if Path(options.data).is_file():
        stored["data"] = str(Path(options.data).resolve())
    stored.pop("resume", None)
    return stored


class OptimizeLogger(Observer):
    """An optimize run in MLflow: made at ``start`` (or reopened for --resume), filled at each event,
    marked FINISHED / FAILED / KILLED at ``close``. Inert when the options say ``track=False``."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.client = None
        self.experiment: str | None = None
        self._held = None
        self._stopped = False   # stopped at --max-cost: the run is left KILLED, to be resumed

    def start(self, options, *, split=None, init=None, next_step: int = 1, **_) -> None:
        if options.track:
            self.uri = tracking_uri()
            if options.resume:
                self._reopen(options.resume, next_step)
            else:
                self._create(options, split, init)
        if options.trace:   # into the run's experiment; MLflow's default one under --no-track
            trace_llm_calls(self.experiment)

    def _reopen(self, run_id: str, next_step: int) -> None:
        """Log on into an interrupted run; step records from ``next_step`` on were cut short: drop them.
        The run's lock is held by optimize itself (it read the checkpoint under it)."""
        self.client = client(self.uri, create=False)
        run = get_run(self.client, run_id)
        self.experiment = run.info.experiment_id
        self.run_id = run_id
        for step_run in self._children(run_id):
            if int(step_run.data.tags.get("auto_evol.step", 0)) >= next_step:
                for candidate in self._children(step_run.info.run_id):
                    self.client.delete_run(candidate.info.run_id)
                self.client.delete_run(step_run.info.run_id)
        self.client.update_run(run_id, status="RUNNING")

    def _children(self, run_id: str) -> list:
        return self.client.search_runs([self.experiment], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                                       max_results=1000)

    def _create(self, options, split, init) -> None:
        self.client = client(self.uri)
        self.experiment = experiment_id(self.client, options.experiment or split.name, self.uri)
        try:
            run = self.client.create_run(self.experiment, run_name=f"optimize {split.name}",
                                         tags={KIND_TAG: "optimize", "auto_evol.data": split.name})
        except Exception as exc:
            raise store.unreachable(self.uri, exc) from None
        self.run_id = run.info.run_id
        # Held while this process works on the run: a --resume of it from elsewhere refuses meanwhile.
        self._held = run_lock(self.run_id)
        self._held.__enter__()
        self.client.set_tag(self.run_id, OPTIMIZE_RUN_TAG, self.run_id)
        evol, opt = options.evol_settings(), options.optimizer_settings()
        self._params(self.run_id, {
            "data": split.name, "init_method": init.name, "parent_method_hash": init.hash,
            "steps": options.steps, "candidates": options.candidates, "batch_size": options.batch_size,
            "dev_size": options.dev_size, "rounds": options.rounds, "patience": options.patience, "seed": options.seed,
            "evol_model": evol.label, "evol_temperature": evol.temperature, "evol_top_p": evol.top_p,
            "evol_max_tokens": evol.max_tokens, "optimizer_model": opt.label,
            "optimizer_temperature": opt.temperature, "optimizer_top_p": opt.top_p,
            "optimizer_max_tokens": opt.max_tokens, "api_base": redact(options.api_base),
        })
        self.client.log_dict(self.run_id, stored_options(options), "options.json")
        self.client.log_text(self.run_id, init.to_file_text(), f"methods/{init.name}.md")

    def close(self, error: BaseException | None) -> None:
        try:
            if self.run_id is not None:
                status = ("KILLED" if self._stopped else "FINISHED") if error is None else (
                    "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
                self.client.set_terminated(self.run_id, status=status)
        finally:
            held, self._held = self._held, None
            if held is not None:
                held.__exit__(None, None, None)

    def _params(self, run_id: str, params: dict) -> None:
        _log_params(self.client, run_id, params)

    def _metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        _log_metrics(self.client, run_id, metrics, step)

    def _log_table(self, run_id: str, columns: dict, path: str) -> None:
        import mlflow
        import pandas as pd

        mlflow.log_table(pd.DataFrame(columns), artifact_file=path, run_id=run_id)

    def baseline(self, evaluation) -> None:
        if self.run_id is None:
            return
        counts = evaluation.counts()
        self._metrics(self.run_id, {"failure_rate": evaluation.rate}, step=0)
        self._metrics(self.run_id, {"failure_rate_e0": evaluation.rate,
                                    **{f"e0_failures.{k}": v for k, v in counts.items()}})
        self._log_table(self.run_id, _table(evaluation), "baseline/dev_evaluation.json")

    def step(self, record) -> None:
        """The step's line on the parent run, a nested run for the step, one under it per candidate."""
        if self.run_id is None:
            return
        handed_on = record.rates[record.accepted] if record.accepted is not None else record.incumbent_rate
        self._metrics(self.run_id, {"failure_rate": handed_on, "best_candidate_rate": min(record.rates),
                                    "calls": sum(record.calls.values())}, step=record.step)
        step_run = self._step_run(record, handed_on)
        for candidate, rate, spent in zip(record.candidates, record.rates, record.candidate_costs()):
            self._candidate_run(record, step_run, candidate, rate, spent)

    def _step_run(self, record, handed_on: float) -> str:
        step_run = self.client.create_run(
            self.experiment, run_name=f"step {record.step}",
            tags={PARENT_TAG: self.run_id, OPTIMIZE_RUN_TAG: self.run_id, KIND_TAG: "step",
                  "auto_evol.step": str(record.step), "auto_evol.accepted": str(record.accepted is not None).lower()},
        ).info.run_id
        self._params(step_run, {"step": record.step, "incumbent": record.incumbent.name,
                                "parent_method_hash": record.incumbent.hash})
        phase_metrics = {}
        for phase in record.seconds:
            key = phase.replace(" ", "_")
            phase_metrics.update({f"calls.{key}": record.calls.get(phase, 0),
                                  f"cached.{key}": record.cached.get(phase, 0),
                                  f"seconds.{key}": record.seconds[phase]})
        # failure_rate: the rate of the method this step hands on (the parent's failure_rate at this step).
        self._metrics(step_run, {"failure_rate": handed_on, "incumbent_rate": record.incumbent_rate,
                                 "best_candidate_rate": min(record.rates), "llm_calls": sum(record.calls.values()),
                                 "accepted": int(record.accepted is not None), **phase_metrics,
                                 **_token_metrics(record.usage),
                                 **cost_mod.metrics(record.costs), "cost_usd.dev_evaluation": record.dev_cost},
                      step=record.step)
        self._log_table(step_run, _trajectory_table(record), "trajectory.json")
        self.client.log_text(step_run, record.incumbent.text, "incumbent_method.md")
        self.client.set_terminated(step_run)
        return step_run

    def _candidate_run(self, record, step_run: str, c, rate: float, spent: float | None = None) -> None:
        from ..algorithm.failure import Failure

        won = record.accepted == c.index
        run_id = self.client.create_run(
            self.experiment, run_name=f"step {record.step} candidate {c.index + 1}",
            tags={PARENT_TAG: step_run, OPTIMIZE_RUN_TAG: self.run_id, KIND_TAG: "candidate",
                  "auto_evol.step": str(record.step),
                  "auto_evol.winner": str(won).lower(), "auto_evol.readable": str(c.readable).lower()},
        ).info.run_id
        self._params(run_id, {"step": record.step, "candidate": c.index + 1, "method_hash": c.method.hash,
                              "parent_method_hash": record.incumbent.hash, "readable": c.readable})
        # cost_usd: its dev evaluation's share of the step's (StepRecord.candidate_costs says how it is apportioned)
        metrics = {"failure_rate": rate, "cost_usd": spent}
        if c.evaluation is not None:  # None: the incumbent's own text, whose rate it keeps
            counts = c.evaluation.counts()
            metrics.update({"length_growth": c.evaluation.length_growth,
                            "judged_items": len(c.evaluation.results),
                            **{f"failures.{f.value}": counts.get(f.value, 0) for f in Failure}})
        self._metrics(run_id, metrics, step=record.step)
        self.client.log_text(run_id, c.method.to_file_text(), "method.md")
        diff = difflib.unified_diff(record.incumbent.text.splitlines(keepends=True),
                                    c.method.text.splitlines(keepends=True),
                                    fromfile=record.incumbent.name, tofile=c.method.name)
        self.client.log_text(run_id, "".join(diff) or "(same text as the parent)\n", "method.diff")
        self.client.log_text(run_id, c.feedback, "feedback.md")
        self.client.log_text(run_id, c.reply or "(no optimizer reply)", "optimizer_reply.md")
        if c.evaluation is not None:
            self._log_table(run_id, _table(c.evaluation), "dev_evaluation.json")
        self.client.set_terminated(run_id)
        if won:
            self.client.set_tag(self.run_id, f"auto_evol.winner.step{record.step}", run_id)

    def checkpoint(self, state: dict) -> None:
        if self.run_id is not None:
            self.client.log_dict(self.run_id, state, "checkpoint.json")

    def finish(self, result) -> None:
        if self.run_id is None:
            return
        calls = result.calls
        self._metrics(self.run_id, {
            "failure_rate_e0": result.rates[0], "llm_calls": calls,
            "failure_rate_e_star": result.rates[-1] if result.stopped is None else None,
            "llm_calls_cached": sum(u["cached"] for u in result.usage.values()),
            "input_tokens": sum(u["input_tokens"] for u in result.usage.values()),
            "output_tokens": sum(u["output_tokens"] for u in result.usage.values()),
            **_token_metrics(result.usage),
            **cost_mod.metrics(result.costs),
            "seconds": result.seconds, "steps_run": len(result.rates) - 1, "paper_budget_share": result.paper_share})
        if result.stopped is not None:   # --max-cost: no e* yet; --resume reopens the run and goes on
            self._stopped = True
            self.client.set_tag(self.run_id, "auto_evol.stopped", result.stopped)
            return
        self.client.set_tag(self.run_id, "auto_evol.e_star", result.best.name)
        self.client.set_tag(self.run_id, "auto_evol.accepted_steps", ",".join(map(str, result.accepted_steps)))
        self.client.set_tag(self.run_id, "auto_evol.lineage", " -> ".join(result.lineage))
        if result.prompt_uri:
            self.client.set_tag(self.run_id, "auto_evol.prompt", result.prompt_uri)
            self.client.set_tag(self.run_id, "auto_evol.champion", str(result.champion).lower())
        self.client.log_text(self.run_id, result.best.to_file_text(), f"e_star/{result.best.name}.md")
        if result.notices:   # provider adaptations and fallbacks (e.g. a refused schema -> free text)
            self.client.set_tag(self.run_id, "auto_evol.notices", " | ".join(result.notices)[:5000])
            self.client.log_text(self.run_id, "\n".join(result.notices) + "\n", "notices.txt")


def log_evolve(options, result, stats: dict) -> str:
    """One MLflow run per finished evolve: settings, per-round kept / eliminated by reason, lengths,
    calls, tokens, cost, seconds, and the stats as an artifact."""
    c, run_id = _new_run(f"evolve-{Path(options.data).stem}", f"evolve {Path(options.data).name}", "evolve")
    _log_params(c, run_id, {
        "data": options.data, "out": options.out, "rounds": options.rounds, "methods": ",".join(options.methods),
        "seed": options.seed, "sample": options.sample, "judge": options.judge,
        "evol_model": options.evol_settings().label, "answer_model": options.answer_settings().label,
        "evol_temperature": options.evol_temperature, "answer_temperature": options.answer_temperature,
        "answer_top_p": options.answer_top_p, "api_base": redact(options.api_base)})
    _log_metrics(c, run_id, {"records": result.records, "bad_lines": len(result.bad_lines), "seconds": result.seconds,
                             **{f"{role}.{key}": u[key] for role, u in result.calls.items()
                                for key in ("calls", "cached", "errors", "input_tokens", "output_tokens")},
                             **cost_mod.metrics(result.costs)})
    for r in stats["rounds"]:
        _log_metrics(c, run_id, {"kept": r["kept"], "eliminated": sum(r["eliminated"].values()),
                                 **{f"eliminated.{reason}": n for reason, n in r["eliminated"].items()},
                                 "mean_words_before": r["mean_words_before"],
                                 "mean_words_after": r["mean_words_after"]}, step=r["round"])
    c.log_dict(run_id, stats, "stats.json")
    c.set_terminated(run_id)
    return run_id


def log_compare(options, summary: dict, out: Path) -> str:
    """One MLflow run per comparison: per-method metrics, the report, its plots and data."""
    c, run_id = _new_run(summary["data"], f"compare {summary['data']}", "compare")
    _log_params(c, run_id, {
        "methods": ",".join(options.methods), "baseline": summary["baseline"], "rounds": options.rounds,
        "dev_size": summary["dev_items"], "seed": options.seed, "embeddings": summary["embeddings"],
        "evol_model": options.evol_model or "embedded", "api_base": redact(options.api_base)})
    cost = summary.get("cost", {})
    _log_metrics(c, run_id, {**{f"cost.{role}": v.get("cost_usd") for role, v in cost.items() if isinstance(v, dict)},
                             "cost_usd": cost.get("total_usd"),
                             **{f"{role}.{key}": u[key] for role, u in summary.get("calls", {}).items()
                                for key in ("calls", "input_tokens", "output_tokens")}})
    for method, s in summary["methods"].items():
        key = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", Path(method).stem)
        _log_metrics(c, run_id, {f"{key}.failure_rate": s["failure_rate"]["estimate"],
                                 f"{key}.failure_rate_low": s["failure_rate"]["low"],
                                 f"{key}.failure_rate_high": s["failure_rate"]["high"],
                                 f"{key}.difference_to_baseline": s["difference_to_baseline"]["estimate"]})
        for r in s["per_round"]:
            _log_metrics(c, run_id, {f"{key}.difficulty": r["difficulty"], f"{key}.length_growth": r["length_growth"]},
                         step=r["round"])
    c.log_artifacts(run_id, str(out))
    c.set_terminated(run_id)
    return run_id


class EvolveLogger(Observer):
    """A finished evolve in MLflow (one run: see ``log_evolve``); nothing while --max-calls or --max-cost
    leaves it unfinished, or when the options say ``track=False``."""

    def start(self, options, **_) -> None:
        self.options = options

    def finish(self, result) -> None:
        if self.options.track and result.complete:
            self.run_id = log_evolve(self.options, result, result.stats.to_dict())


class CompareLogger(Observer):
    """A comparison in MLflow (one run with the report folder's files: see ``log_compare``). The store is
    opened at the start on a thread of its own (a first run makes and migrates it, ~2 s, and importing
    MLflow takes ~1 s), beside the comparison's calls; ``finish`` waits for it, then logs."""

    def start(self, options, *, out: Path, **_) -> None:
        import threading

        self.options, self.out = options, out
        self.opened: BaseException | None = None
        self.opening = threading.Thread(target=self._open, name="auto-evol-store", daemon=True)
        if options.track:
            self.opening.start()

    def _open(self) -> None:
        try:
            store.client()
        except BaseException as exc:  # noqa: BLE001 - finish() opens it again and raises it there
            self.opened = exc

    def finish(self, summary) -> None:
        if self.options.track:
            self.opening.join()
            self.run_id = log_compare(self.options, summary.to_dict(), self.out)


def _token_metrics(usage: dict[str, dict]) -> dict[str, float]:
    """input_tokens.ROLE and output_tokens.ROLE for each role's usage snapshot."""
    return {f"{key}.{role}": u[key] for role, u in usage.items() for key in ("input_tokens", "output_tokens")}
