"""MLflow: every optimize run on record, in ./mlruns by default (SQLite store, artifacts beside it).

MLFLOW_TRACKING_URI points elsewhere (another database, a remote server) unchanged. One experiment
per data set unless named. Per optimize: a parent run (settings, failure rate per step, e0 and e*,
the accepted steps, e* itself, and a checkpoint after every finished step for --resume); a nested
run per step (calls and seconds per phase, the trajectory); under it a nested run per candidate
(failure rate and counts per failure type, length growth, the method, its diff to the parent, the
optimizer's feedback, the dev evaluation table). All three kinds carry the optimize run's id as a tag,
so `auto-evol ui` can open one view on them (see ``ui_link``). Params hold model names and sampling
settings only: never a key, and a server address loses any user:password part. Reading commands never
make a store: only a run writes one.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import time
import tempfile
import urllib.parse
from pathlib import Path

from . import locks, process_group
from .errors import UserError, first_line
from .http_engine import redact

DEFAULT_DIR = Path("mlruns")
SQLITE = "sqlite:///"
KIND_TAG = "auto_evol.kind"
PARENT_TAG = "mlflow.parentRunId"
OPTIMIZE_RUN_TAG = "auto_evol.optimize_run"  # on an optimize run, its steps and their candidates: one filter finds all
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: an experiment tag the MLflow UI reads as a view (filter, columns)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"{SQLITE}{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store URI, or None for any other store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def _artifact_root(uri: str) -> str | None:
    """Where a SQLite store's artifacts go: ``artifacts/`` beside the database (None: the store decides)."""
    db = _sqlite_file(uri)
    return (db.parent / "artifacts").resolve().as_uri() if db is not None else None


def missing_store(uri: str | None = None) -> Path | None:
    """The SQLite file of a store that does not exist yet, or None (it exists, or the store is a server)."""
    db = _sqlite_file(uri or tracking_uri())
    return db if db is not None and not db.exists() else None


def _quiet() -> None:
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def client(uri: str | None = None, *, create: bool = True):
    """An MlflowClient on the project's store; the default store's folder is made only when writing."""
    import mlflow

    _quiet()
    uri = uri or tracking_uri()
    missing = missing_store(uri)
    if missing is not None:
        if not create:
            raise UserError(f"no MLflow store at {missing} (run auto-evol optimize first, or set MLFLOW_TRACKING_URI)")
        missing.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # no bars among our one-line errors
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    db = _sqlite_file(uri)
    if db is None or not create:   # reading commands open an existing store and change nothing in it
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # A fresh SQLite store is created and migrated by the first client that opens it. Two first runs
    # in one folder once raced there and left it half-migrated (every later command failed), so
    # opening the store (tracking and registry tables) happens under a lock, one process at a time.
    with locks.hold(db.with_name(db.name + ".lock"), f"the MLflow store {db}", wait=300):
        found = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            found._get_registry_client().store   # noqa: B018 - opening it creates its tables
        except Exception:  # a registry that cannot open is reported where it is used
            pass
        return found


def run_lock(run_id: str):
    """The lock an optimize run is held under while a process works on it (its first run, or a
    --resume): a second --resume of the same run refuses at once, naming the holder."""
    from .llm import DEFAULT_CACHE_DIR

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        raise UserError(f"--resume {run_id!r}: not a run id (auto-evol runs lists them)")
    uri = tracking_uri()
    db = _sqlite_file(uri)
    folder = db.parent / "locks" if db is not None else Path(DEFAULT_CACHE_DIR) / "locks" / \
        hashlib.sha256(redact(uri).encode()).hexdigest()[:16]
    return locks.hold(folder / f"{run_id}.lock", f"optimize run {run_id}")


def _unreachable(uri: str, exc: Exception) -> UserError:
    return UserError(f"tracking store {redact(uri)} cannot be used: {first_line(exc, 200)}")


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    try:
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return mlflow_client.create_experiment(name, artifact_location=_artifact_root(uri))
    except UserError:
        raise
    except Exception as exc:
        raise _unreachable(uri, exc) from None


def get_run(mlflow_client, run_id: str):
    try:
        return mlflow_client.get_run(run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower() or "No run" in str(exc):
            raise UserError(f"unknown run id {run_id!r} in {redact(tracking_uri())}") from None
        raise _unreachable(tracking_uri(), exc) from None


def _download_json(mlflow_client, run_id: str, path: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_client.download_artifacts(run_id, path, tmp)
        except Exception:
            return None
        return json.loads(Path(local).read_text(encoding="utf-8"))


def load_resume(run_id: str) -> tuple[dict, dict | None]:
    """The stored options of an optimize run and its last checkpoint (None before the first one)."""
    c = client(create=False)
    run = get_run(c, run_id)
    if run.data.tags.get(KIND_TAG) != "optimize":
        raise UserError(f"run {run_id} is not an auto-evol optimize run")
    options = _download_json(c, run_id, "options.json")
    if options is None:
        raise UserError(f"run {run_id} has no stored settings to resume from")
    return options, _download_json(c, run_id, "checkpoint.json")


def trace_llm_calls(tracker) -> None:
    """Record every LLM call as an MLflow trace in the run's experiment (DSPy autolog)."""
    import mlflow
    import mlflow.dspy

    if getattr(tracker, "experiment", None):
        mlflow.set_experiment(experiment_id=tracker.experiment)
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


class NullTracker:
    run_id: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def baseline(self, evaluation) -> None: ...
    def step(self, record) -> None: ...
    def checkpoint(self, state: dict) -> None: ...
    def finish(self, result) -> None: ...


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


class OptimizeTracker(NullTracker):
    def __init__(self, options, split, init) -> None:
        self.uri = tracking_uri()
        self.client = client(self.uri)
        self.experiment = experiment_id(self.client, options.experiment or split.name, self.uri)
        self.options, self.split, self.init = options, split, init
        self.run_id = None

    @classmethod
    def reopen(cls, run_id: str, next_step: int) -> "OptimizeTracker":
        """Log on into an interrupted run; step records from ``next_step`` on were cut short: drop them."""
        tracker = cls.__new__(cls)
        tracker.uri = tracking_uri()
        tracker.client = client(tracker.uri, create=False)
        run = get_run(tracker.client, run_id)
        tracker.experiment = run.info.experiment_id
        tracker.run_id = run_id
        for step_run in tracker._children(run_id):
            if int(step_run.data.tags.get("auto_evol.step", 0)) >= next_step:
                for candidate in tracker._children(step_run.info.run_id):
                    tracker.client.delete_run(candidate.info.run_id)
                tracker.client.delete_run(step_run.info.run_id)
        tracker.client.update_run(run_id, status="RUNNING")
        return tracker

    def _children(self, run_id: str) -> list:
        return self.client.search_runs([self.experiment], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                                       max_results=1000)

    def __enter__(self):
        if self.run_id is not None:  # reopened
            return self
        o = self.options
        try:
            run = self.client.create_run(self.experiment, run_name=f"optimize {self.split.name}",
                                         tags={KIND_TAG: "optimize", "auto_evol.data": self.split.name})
        except Exception as exc:
            raise _unreachable(self.uri, exc) from None
        self.run_id = run.info.run_id
        # Held while this process works on the run: a --resume of it from elsewhere refuses meanwhile.
        self._held = run_lock(self.run_id)
        self._held.__enter__()
        self.client.set_tag(self.run_id, OPTIMIZE_RUN_TAG, self.run_id)
        evol, opt = o.evol_settings(), o.optimizer_settings()
        params = {
            "data": self.split.name, "init_method": self.init.name, "parent_method_hash": self.init.hash,
            "steps": o.steps, "candidates": o.candidates, "batch_size": o.batch_size, "dev_size": o.dev_size,
            "rounds": o.rounds, "patience": o.patience, "seed": o.seed,
            "evol_model": evol.label, "evol_temperature": evol.temperature, "evol_top_p": evol.top_p,
            "evol_max_tokens": evol.max_tokens, "optimizer_model": opt.label,
            "optimizer_temperature": opt.temperature, "optimizer_top_p": opt.top_p,
            "optimizer_max_tokens": opt.max_tokens, "api_base": redact(o.api_base),
        }
        self._params(self.run_id, params)
        stored = dataclasses.asdict(o)
        # A URL's user:password is not stored: --resume asks for the same --api-base again.
        stored["api_base"] = redact(o.api_base) or None
        stored["api_base_credentials"] = redact(o.api_base) != (o.api_base or "")
        if Path(o.data).is_file():
            stored["data"] = str(Path(o.data).resolve())
        stored.pop("resume", None)
        self.client.log_dict(self.run_id, stored, "options.json")
        self.client.log_text(self.run_id, self.init.to_file_text(), f"methods/{self.init.name}.md")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.run_id is not None:
                status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
                self.client.set_terminated(self.run_id, status=status)
        finally:
            held, self._held = getattr(self, "_held", None), None
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
        counts = evaluation.counts()
        self._metrics(self.run_id, {"failure_rate": evaluation.rate}, step=0)
        self._metrics(self.run_id, {"failure_rate_e0": evaluation.rate,
                                    **{f"e0_failures.{k}": v for k, v in counts.items()}})
        self._log_table(self.run_id, _table(evaluation), "baseline/dev_evaluation.json")

    def step(self, record) -> None:
        from .failure import Failure

        incumbent_rate_after = record.rates[record.accepted] if record.accepted is not None else record.incumbent_rate
        self._metrics(self.run_id, {"failure_rate": incumbent_rate_after, "best_candidate_rate": min(record.rates),
                                    "calls": sum(record.calls.values())}, step=record.step)
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
        self._metrics(step_run, {"failure_rate": incumbent_rate_after, "incumbent_rate": record.incumbent_rate,
                                 "best_candidate_rate": min(record.rates), "llm_calls": sum(record.calls.values()),
                                 "accepted": int(record.accepted is not None), **phase_metrics}, step=record.step)
        self._log_table(step_run, _trajectory_table(record), "trajectory.json")
        self.client.log_text(step_run, record.incumbent.text, "incumbent_method.md")
        self.client.set_terminated(step_run)
        for c, rate in zip(record.candidates, record.rates):
            won = record.accepted == c.index
            run_id = self.client.create_run(
                self.experiment, run_name=f"step {record.step} candidate {c.index + 1}",
                tags={PARENT_TAG: step_run, OPTIMIZE_RUN_TAG: self.run_id, KIND_TAG: "candidate",
                      "auto_evol.step": str(record.step),
                      "auto_evol.winner": str(won).lower(), "auto_evol.readable": str(c.readable).lower()},
            ).info.run_id
            self._params(run_id, {"step": record.step, "candidate": c.index + 1, "method_hash": c.method.hash,
                                  "parent_method_hash": record.incumbent.hash, "readable": c.readable})
            metrics = {"failure_rate": rate}
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
        self.client.log_dict(self.run_id, state, "checkpoint.json")

    def finish(self, result) -> None:
        calls = sum(u["calls"] for u in result.usage.values())
        self._metrics(self.run_id, {
            "failure_rate_e0": result.rates[0], "failure_rate_e_star": result.rates[-1], "llm_calls": calls,
            "llm_calls_cached": sum(u["cached"] for u in result.usage.values()),
            "input_tokens": sum(u["input_tokens"] for u in result.usage.values()),
            "output_tokens": sum(u["output_tokens"] for u in result.usage.values()),
            "seconds": result.seconds, "steps_run": len(result.rates) - 1})
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


def optimize_runs(limit: int = 50) -> list[dict]:
    """Past optimize runs across experiments, newest first, as rows for a table."""
    import datetime as dt

    c = client(create=False)
    try:
        experiments = [e.experiment_id for e in c.search_experiments()]
        runs = c.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = 'optimize'",
                             order_by=["attributes.start_time DESC"], max_results=limit) if experiments else []
    except Exception as exc:
        raise _unreachable(tracking_uri(), exc) from None
    rows = []
    for r in runs:
        m, p = r.data.metrics, r.data.params
        e0, e_star = m.get("failure_rate_e0"), m.get("failure_rate_e_star")
        rates = f"{e0:.1%} -> {e_star:.1%}" if e0 is not None and e_star is not None else (
            f"{e0:.1%} -> ?" if e0 is not None else "?")
        rows.append({
            "data": p.get("data", ""), "evol_model": p.get("evol_model", ""),
            "optimizer_model": p.get("optimizer_model", ""), "rates": rates,
            "steps": str(int(m["steps_run"])) if "steps_run" in m else "?",
            "calls": str(int(m["llm_calls"])) if "llm_calls" in m else "?",
            "date": dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
            "status": r.info.status, "run_id": r.info.run_id,
        })
    return rows


# What a user compares across an optimize run's rows, in this order: failure rates (e0 -> e* on the optimize run,
# the handed-on method's on a step, its own on a candidate), LLM calls (cost columns follow when a run logged one),
# the accepted steps, the winning candidates, and the candidates' length growth.
UI_COLUMNS = (("metrics", "failure_rate"), ("metrics", "failure_rate_e0"), ("metrics", "failure_rate_e_star"),
              ("metrics", "llm_calls"), ("tags", "auto_evol.accepted_steps"), ("tags", "auto_evol.winner"),
              ("metrics", "length_growth"))


def _column(group: str, key: str) -> str:
    """A column as the MLflow UI names it in a view (``metrics.`failure_rate```)."""
    return f"{group}.`{key}`"


def _optimize_tree(mlflow_client, run) -> list:
    """An optimize run, its steps and their candidates, each tagged with the optimize run's id (runs recorded
    before that tag existed get it now, so one filter finds them all)."""
    def children(run_id: str) -> list:
        return mlflow_client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                                         max_results=5000)

    steps = children(run.info.run_id)
    tree = [run, *steps, *(c for step in steps for c in children(step.info.run_id))]
    for r in tree:
        if r.data.tags.get(OPTIMIZE_RUN_TAG) != run.info.run_id:
            mlflow_client.set_tag(r.info.run_id, OPTIMIZE_RUN_TAG, run.info.run_id)
    return tree


def ui_link(base_url: str, run_id: str | None = None) -> tuple[str, str]:
    """The UI address to open first, and a line saying what it shows.

    For an optimize run (the latest one unless ``run_id`` names one): its runs page in MLflow's "Model
    training" view (``workflowType=machine_learning``; the default GenAI view lands on an empty traces
    overview), through a shared view that MLflow keeps as the experiment tag
    ``mlflow.sharedViewState.KEY`` and opens from ``viewStateShareKey=KEY``: the filter on the optimize
    run's tag, so the run, its steps and their candidates are rows of their own, in the order they were
    made, with the columns a user compares. Any other run: its own page.
    """
    import datetime as dt

    c = client(create=False)
    try:
        if run_id:
            run = get_run(c, run_id)
        else:
            experiments = [e.experiment_id for e in c.search_experiments()]
            found = c.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = 'optimize'",
                                  order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
            if not found:
                return f"{base_url}/#/experiments", "no optimize run in this store yet: the experiments page"
            run = found[0]
        experiment, rid = run.info.experiment_id, run.info.run_id
        kind = run.data.tags.get(KIND_TAG)
        if kind != "optimize":
            return (f"{base_url}/#/experiments/{experiment}/runs/{rid}",
                    f"run {run.info.run_name or rid} ({kind or 'not an auto-evol run'}): its page")
        tree = _optimize_tree(c, run)
        costs = sorted({k for r in tree for k in r.data.metrics if "cost" in k.lower()})
        columns = [_column(g, k) for g, k in UI_COLUMNS[:4]] + [_column("metrics", k) for k in costs] + \
                  [_column(g, k) for g, k in UI_COLUMNS[4:]]
        # Sorted by the run's start, spelled with backticks: MLflow's UI folds child runs under their parent
        # (collapsed) when sorted by its own "attributes.start_time" key, and lists each run as a row otherwise.
        facets = {"searchFilter": f"tags.`{OPTIMIZE_RUN_TAG}` = '{rid}'", "orderByKey": "attributes.`start_time`",
                  "orderByAsc": True}
        view = {**facets, "selectedColumns": columns, "columnOrder": columns,
                "columnWidths": {col: 150 for col in columns if col.startswith("tags.")}}
        key = f"auto-evol-{rid}"
        query = {"workflowType": "machine_learning"}
        try:
            c.set_experiment_tag(experiment, SHARED_VIEW_TAG + key, json.dumps(view))
            query["viewStateShareKey"] = key
        except Exception:  # a store that takes no experiment tag from us: the same rows, MLflow's default columns
            query.update({k: str(v).lower() if isinstance(v, bool) else v for k, v in facets.items()})
    except UserError:
        raise
    except Exception as exc:
        raise _unreachable(tracking_uri(), exc) from None
    m = run.data.metrics
    rates = (f"failure rate {m['failure_rate_e0']:.1%} -> {m['failure_rate_e_star']:.1%}"
             if "failure_rate_e0" in m and "failure_rate_e_star" in m else f"{run.info.status.lower()}, no e* yet")
    steps = sum(r.data.tags.get(KIND_TAG) == "step" for r in tree)
    candidates = sum(r.data.tags.get(KIND_TAG) == "candidate" for r in tree)
    when = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    what = (f"{'optimize run' if run_id else 'the latest optimize run'} {rid} ({run.data.params.get('data', '?')}, "
            f"{when}, {rates}): its {steps} steps and {candidates} candidates with their failure rates")
    return f"{base_url}/#/experiments/{experiment}/runs?{urllib.parse.urlencode(query)}", what


def serve_ui(port: int, *, open_browser: bool = False, run_id: str | None = None) -> None:
    """Run the MLflow UI (mlflow server) over the project's store, bound to 127.0.0.1; print first the
    address of the latest optimize run's runs (or ``run_id``'s)."""
    import sys

    uri = tracking_uri()
    missing = missing_store(uri)
    if missing is not None:
        raise UserError(f"no MLflow store at {missing} (run auto-evol optimize first, or set MLFLOW_TRACKING_URI)")
    base = f"http://127.0.0.1:{port}"
    link, what = ui_link(base, run_id)
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if _artifact_root(uri):
        command += ["--default-artifact-root", _artifact_root(uri)]
    print(link, flush=True)
    print(f"  {what}", flush=True)
    print(f"MLflow UI on {base} (store {redact(uri)}), starting; Ctrl-C stops it", flush=True)
    # The server imports LiteLLM, which otherwise fetches its model price list from the internet while
    # importing: offline, that hung the server before it ever answered.
    env = {**os.environ}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if open_browser:
        import webbrowser

        webbrowser.open(link)
    # Its own process group, stopped as a whole however this process ends: no server is left behind.
    process_group.run(command, env=env)


def log_evolve(options, result, stats: dict) -> str:
    """One MLflow run per finished evolve: settings, per-round kept / eliminated by reason, lengths,
    calls, tokens, seconds, and the stats as an artifact."""
    c, run_id = _new_run(f"evolve-{Path(options.data).stem}", f"evolve {Path(options.data).name}", "evolve")
    _log_params(c, run_id, {
        "data": options.data, "out": options.out, "rounds": options.rounds, "methods": ",".join(options.methods),
        "seed": options.seed, "sample": options.sample, "judge": options.judge,
        "evol_model": options.evol_settings().label, "answer_model": options.answer_settings().label,
        "evol_temperature": options.evol_temperature, "answer_temperature": options.answer_temperature,
        "answer_top_p": options.answer_top_p, "api_base": redact(options.api_base)})
    _log_metrics(c, run_id, {"records": result.records, "bad_lines": len(result.bad_lines), "seconds": result.seconds,
                             **{f"{role}.{key}": u[key] for role, u in result.calls.items()
                                for key in ("calls", "cached", "errors", "input_tokens", "output_tokens")}})
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
