"""MLflow: one run per optimize, in ./mlruns by default (SQLite store, artifacts beside it).

MLFLOW_TRACKING_URI points elsewhere (another file, a server) unchanged. What is recorded: the run's
settings as params (never a key: only model names and sampling settings), the failure rate per step,
and e* as an artifact.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import UserError

DEFAULT_DIR = Path("mlruns")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def _client(uri: str):
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str) -> str:
    try:
        found = client.get_experiment_by_name(name)
    except Exception as exc:
        raise UserError(f"tracking store {uri} cannot be reached: {str(exc).splitlines()[0][:200]}") from None
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


class NullTracker:
    run_id: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def baseline(self, evaluation) -> None: ...
    def step(self, record) -> None: ...
    def finish(self, result) -> None: ...


class OptimizeTracker(NullTracker):
    def __init__(self, options, split, init) -> None:
        self.uri = tracking_uri()
        self.client = _client(self.uri)
        self.experiment = experiment_id(self.client, split.name, self.uri)
        self.options, self.split, self.init = options, split, init
        self.run_id = None

    def __enter__(self):
        o = self.options
        run = self.client.create_run(self.experiment, run_name=f"optimize {self.split.name}",
                                     tags={"auto_evol.kind": "optimize", "auto_evol.data": self.split.name})
        self.run_id = run.info.run_id
        evol, opt = o.evol_settings(), o.optimizer_settings()
        params = {
            "data": self.split.name, "init_method": self.init.name, "init_method_hash": self.init.hash,
            "steps": o.steps, "candidates": o.candidates, "batch_size": o.batch_size, "dev_size": o.dev_size,
            "rounds": o.rounds, "patience": o.patience, "seed": o.seed,
            "evol_model": evol.label, "evol_temperature": evol.temperature, "evol_top_p": evol.top_p,
            "evol_max_tokens": evol.max_tokens, "optimizer_model": opt.label,
            "optimizer_temperature": opt.temperature, "optimizer_top_p": opt.top_p,
            "optimizer_max_tokens": opt.max_tokens, "api_base": o.api_base or "",
        }
        for key, value in params.items():
            self.client.log_param(self.run_id, key, "" if value is None else value)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is not None:
            status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            self.client.set_terminated(self.run_id, status=status)

    def baseline(self, evaluation) -> None:
        self.client.log_metric(self.run_id, "failure_rate", evaluation.rate, step=0)

    def step(self, record) -> None:
        rate = record.rates[record.accepted] if record.accepted is not None else record.incumbent_rate
        self.client.log_metric(self.run_id, "failure_rate", rate, step=record.step)
        self.client.log_metric(self.run_id, "best_candidate_rate", min(record.rates), step=record.step)
        self.client.log_metric(self.run_id, "calls", sum(record.calls.values()), step=record.step)

    def finish(self, result) -> None:
        self.client.log_metric(self.run_id, "failure_rate_e0", result.initial.rate)
        self.client.log_metric(self.run_id, "failure_rate_e_star", result.rates[-1])
        self.client.set_tag(self.run_id, "auto_evol.e_star", result.best.name)
        self.client.log_text(self.run_id, result.best.to_file_text(), f"e_star/{result.best.name}.md")
