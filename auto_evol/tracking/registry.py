"""The MLflow prompt registry as a home for methods: one prompt per data set, a version per run.

``prompts:/NAME/VERSION`` and ``prompts:/NAME@ALIAS`` work wherever a method is taken; the alias
``champion`` marks the best e* seen for a data set on its dev set.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..algorithm import method as method_mod
from ..algorithm.method import Method, text_problem
from ..core.errors import UserError, first_line
from ..core.secrets import redact
from .store import client, missing_store, tracking_uri

PREFIX = "prompts:/"
CHAMPION = "champion"


def prompt_name(data: str) -> str:
    """The registry name of a data set's prompt (MLflow allows letters, digits, '-', '_', '.')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", data).strip("-") or "methods"


def uri(data: str, version: int) -> str:
    return f"{PREFIX}{prompt_name(data)}/{version}"


def is_uri(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def load(spec: str) -> Method:
    """A method from the registry: ``prompts:/NAME/VERSION`` or ``prompts:/NAME@ALIAS``."""
    import mlflow.genai

    missing = missing_store()
    if missing is not None:
        raise UserError(f"{spec}: no prompt registry here: no MLflow store at {missing} (auto-evol optimize "
                        "registers each e* there; or set MLFLOW_TRACKING_URI)")
    client(create=False)
    try:
        prompt = mlflow.genai.load_prompt(spec, link_to_model=False)
    except Exception as exc:
        text = first_line(exc, 200)
        raise UserError(f"{spec}: not found in the prompt registry at {redact(tracking_uri())} ({text})") from None
    if prompt is None:
        raise UserError(f"{spec}: not found in the prompt registry at {redact(tracking_uri())}")
    problem = text_problem(prompt.template)
    if problem:
        raise UserError(f"{spec}: not a method: {problem}")
    tags = dict(prompt.tags or {})
    return Method(name=tags.get("method_name") or f"{prompt.name}-v{prompt.version}", text=prompt.template,
                  parent=tags.get("parent", ""), made_by=f"MLflow prompt {prompt.name} version {prompt.version}")


def resolve(spec: str) -> Method:
    """Any method spec: a registry URI, a name in methods/, or a file path."""
    return load(spec) if is_uri(spec) else method_mod.load(spec)


def resolve_methods(specs: list[str]) -> list[tuple[Method, float]]:
    """evolve's and compare's ``--method NAME[=WEIGHT]`` mix (method.mix), any spec resolved as above."""
    return method_mod.mix(specs, resolve)


def champion(data: str):
    """The data set's champion prompt version, or None."""
    import mlflow.genai

    client()
    try:
        return mlflow.genai.load_prompt(f"{PREFIX}{prompt_name(data)}@{CHAMPION}", link_to_model=False,
                                        allow_missing=True)
    except Exception:
        return None


def register(data: str, method: Method, tags: dict[str, str]) -> int:
    import mlflow.genai

    client()
    version = mlflow.genai.register_prompt(
        name=prompt_name(data), template=method.text,
        commit_message=f"e* of auto-evol optimize on {data}: {method.name}",
        tags={"method_name": method.name, "parent": method.parent, "hash": method.hash, **tags})
    return int(version.version)


def set_champion(data: str, version: int) -> None:
    import mlflow.genai

    mlflow.genai.set_prompt_alias(prompt_name(data), alias=CHAMPION, version=version)


def listing() -> list[dict]:
    """Every prompt version in the registry: name, version, aliases, method name, failure rate. No store
    yet is an empty registry (and none is made)."""
    if missing_store() is not None:
        return []
    import mlflow.genai

    c = client(create=False)
    rows = []
    try:
        for prompt in mlflow.genai.search_prompts():
            versions = c.search_prompt_versions(prompt.name)
            best = champion(prompt.name)
            for v in getattr(versions, "prompt_versions", versions):
                tags = dict(v.tags or {})
                rate = tags.get("failure_rate")
                rows.append({"uri": f"{PREFIX}{prompt.name}/{v.version}", "name": tags.get("method_name", ""),
                             "aliases": CHAMPION if best is not None and best.version == v.version else "",
                             "failure_rate": f"{float(rate):.1%}" if rate else ""})
    except Exception as exc:
        text = first_line(exc, 200)
        raise UserError(f"the prompt registry at {redact(tracking_uri())} cannot be read: {text}") from None
    return rows


def method_files() -> list[dict]:
    """Every method a name finds, as rows: ./methods first, then the methods shipped with auto-evol (e0,
    weak, the classic Evol-Instruct operators). A file that is no method says why instead of hiding the rest."""
    here = (Path.cwd() / "methods").resolve()
    rows = []
    for name in method_mod.available():
        path = method_mod.path_of(name)
        where = f"methods/{path.name}" if path.resolve().parent == here else "shipped"
        try:
            m = method_mod.load(name)
            rows.append({"name": name, "where": where, "parent": m.parent, "hash": m.hash})
        except UserError as exc:
            rows.append({"name": name, "where": where, "parent": f"(not usable: {exc})", "hash": ""})
    return rows


def empty_note() -> str:
    """The line that says the registry holds no method yet, and why."""
    missing = missing_store()
    if missing is not None:
        return (f"prompt registry: empty (no MLflow store at {missing} yet; auto-evol optimize makes it and "
                "registers each e* there)")
    return f"prompt registry at {redact(tracking_uri())}: empty (auto-evol optimize registers each e* there)"


def from_run(run_id: str) -> Method:
    """The e* an optimize run wrote."""
    from .store import get_run

    c = client(create=False)
    run = get_run(c, run_id)
    name = run.data.tags.get("auto_evol.e_star")
    if not name:
        raise UserError(f"run {run_id} has no e* (it did not finish; resume it with --resume {run_id})")
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(run_id, f"e_star/{name}.md", tmp)
        return method_mod.parse(Path(local).read_text(encoding="utf-8"), source=f"run {run_id}", default_name=name)


def export(source: str, to) -> Path:
    """Write a registry version or a run's e* to the method file ``to``; returns its path."""
    to = Path(to)
    found = load(source) if is_uri(source) else from_run(source)
    named = Method(name=to.stem, text=found.text, parent=found.parent or found.name,
                   made_by=f"exported from {source}", extra={**found.extra, "source": found.name})
    written = method_mod.save(named, to.parent)
    if written != to:  # save() names the file after the method; keep the user's suffix
        written.replace(to)
    return to
