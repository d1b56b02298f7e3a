"""The MLflow store a project's runs live in: where it is, opening it, and reading runs back.

./mlruns by default (a SQLite database with the artifacts beside it); MLFLOW_TRACKING_URI points
elsewhere (another database, a remote server) unchanged. Reading commands never make a store: only
a run writes one. A fresh SQLite store is created under a lock, one process at a time (two first runs
in one folder once left it half-migrated). Here too: what --resume reads back (an optimize run's
stored options and last checkpoint), the lock a run is worked on under, and the table of past runs.
The run loggers that write into the store are in loggers.py; the UI server is in ui.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from ..core.errors import UserError, first_line
from ..core.secrets import redact
from ..storage import locks

DEFAULT_DIR = Path("mlruns")
SQLITE = "sqlite:///"
KIND_TAG = "auto_evol.kind"
PARENT_TAG = "mlflow.parentRunId"
OPTIMIZE_RUN_TAG = "auto_evol.optimize_run"  # on an optimize run, its steps and their candidates: one filter finds all

# MLflow's usage telemetry is off unless the user turned it on (MLFLOW_DISABLE_TELEMETRY=false): a run
# of auto-evol sends nothing about itself anywhere, and without a network MLflow's telemetry thread
# held every run's exit for ~0.9 s (its config fetch timing out; measured with py-spy). Set before
# MLflow is imported (every import of it in auto-evol comes after this module's).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"{SQLITE}{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store URI, or None for any other store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def artifact_root(uri: str) -> str | None:
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


def _run_file(run_id: str, kind: str, suffix: str) -> Path:
    """A file of the run's own beside the store (``mlruns/KIND/RUN_ID.SUFFIX``), or, for a store that is
    no SQLite file, under the cache dir in a folder per store."""
    from ..llm.backends import DEFAULT_CACHE_DIR

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        raise UserError(f"--resume {run_id!r}: not a run id (auto-evol runs lists them)")
    uri = tracking_uri()
    db = _sqlite_file(uri)
    folder = db.parent / kind if db is not None else Path(DEFAULT_CACHE_DIR) / kind / \
        hashlib.sha256(redact(uri).encode()).hexdigest()[:16]
    return folder / f"{run_id}{suffix}"


def run_lock(run_id: str):
    """The lock an optimize run is held under while a process works on it (its first run, or a
    --resume): a second --resume of the same run refuses at once, naming the holder."""
    return locks.hold(_run_file(run_id, "locks", ".lock"), f"optimize run {run_id}")


def batch_journal(run_id: str) -> Path:
    """The journal of an optimize run's batches (``--batch``), which its --resume attaches to."""
    return _run_file(run_id, "batches", ".jsonl")


def unreachable(uri: str, exc: Exception) -> UserError:
    return UserError(f"tracking store {redact(uri)} cannot be used: {first_line(exc, 200)}")


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    try:
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return mlflow_client.create_experiment(name, artifact_location=artifact_root(uri))
    except UserError:
        raise
    except Exception as exc:
        raise unreachable(uri, exc) from None


def get_run(mlflow_client, run_id: str):
    try:
        return mlflow_client.get_run(run_id)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower() or "No run" in str(exc):
            raise UserError(f"unknown run id {run_id!r} in {redact(tracking_uri())}") from None
        raise unreachable(tracking_uri(), exc) from None


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


def optimize_runs(limit: int = 50) -> list[dict]:
    """Past optimize runs across experiments, newest first, as rows for a table."""
    import datetime as dt

    c = client(create=False)
    try:
        experiments = [e.experiment_id for e in c.search_experiments()]
        runs = c.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = 'optimize'",
                             order_by=["attributes.start_time DESC"], max_results=limit) if experiments else []
    except Exception as exc:
        raise unreachable(tracking_uri(), exc) from None
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
