"""`auto-evol ui`: the MLflow UI over the project's store, opened on the run a user wants to see.

The link it prints first lands on an optimize run's runs page with its steps and candidates as rows
and the columns a user compares (see ``ui_link``); the server runs in its own process group so that
however this process ends, no server is left behind (process_group.py).
"""
from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

from ..core.errors import UserError
from ..core.secrets import redact
from . import process_group, store
from .store import KIND_TAG, OPTIMIZE_RUN_TAG, PARENT_TAG, client, get_run, missing_store, tracking_uri

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: an experiment tag the MLflow UI reads as a view (filter, columns)


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
        raise store.unreachable(tracking_uri(), exc) from None
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
    if store.artifact_root(uri):
        command += ["--default-artifact-root", store.artifact_root(uri)]
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
