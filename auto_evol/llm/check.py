"""The provider check: one tiny call per role before a long run, and what it says in one line each.

A run that meets a refused key, an unreachable server or refused sampling settings in its first
minute costs nothing; one that meets them after an hour of evolution has paid for the hour. So each
role sends one short request with its own sampling settings and a one-field reply schema, and the
answer is read as: reachable, key accepted, structured output supported, sampling accepted. When
the provider refuses the sampling settings and takes them without top_p, the role goes on without
top_p (a notice says so); that covers models no rule in providers.py knows yet.

``auto-evol check`` always calls; optimize, evolve and compare run the same check for provider
models (the DSPy/LiteLLM path) once per model and settings, and keep the verdict in the cache
folder, so a rerun pays for nothing. The embedded model and gguf: files need no check, and
OpenAI-compatible servers named by --api-base are checked by their first real call (a refused schema
steps down there, see client.Llm).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .backends import build
from .client import LLMError, Llm, RoleSettings
from .replies import Field, ReplyFormat

PROBE = "Reply with the single word: ready"
PROBE_FORMAT = ReplyFormat("probe", (Field("reply", "The single word asked for", "Reply:"),))
_CHECKS_FILE = "checks.json"


@dataclass(frozen=True)
class Verdict:
    role: str
    model: str
    reachable: bool
    key_accepted: bool | None       # None: not known (the call never reached the provider)
    structured: bool | None
    sampling: bool | None
    detail: str = ""                # the error or adaptation, in one line
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reachable and self.key_accepted is not False and self.sampling is not False

    def line(self) -> str:
        def word(value, yes="yes", no="no"):
            return "?" if value is None else (yes if value else no)

        return (f"{self.role} {self.model}: reachable {word(self.reachable)}, key accepted {word(self.key_accepted)}, "
                f"structured output {word(self.structured, 'supported', 'not supported')}, sampling parameters "
                f"{word(self.sampling, 'accepted', 'refused')}" + (f" ({self.detail})" if self.detail else ""))


PROBE_TOKENS = 32   # the probe's budget (a reasoning model keeps its own: it refuses less)


def probe(settings: RoleSettings, role: str) -> Verdict:
    """Check one role with one small call (two when the sampling settings are refused); a verdict of
    refused sampling means: run without top_p."""
    from .providers import is_reasoning_model

    small = settings if is_reasoning_model(settings.model) else dataclasses.replace(
        settings, max_tokens=min(settings.max_tokens, PROBE_TOKENS))
    started = time.perf_counter()
    llm = build(small, cache=False)
    try:
        llm.ask(PROBE, reply_format=PROBE_FORMAT)
        return Verdict(role, settings.label, True, True, llm.structured, True, "; ".join(llm.notices),
                       round(time.perf_counter() - started, 2))
    except UserError as exc:
        return Verdict(role, settings.label, True, False, None, None, str(exc))
    except LLMError as exc:
        first = str(exc)
    if settings.top_p is not None:
        try:
            other = build(dataclasses.replace(small, top_p=None), cache=False)
            other.ask(PROBE, reply_format=PROBE_FORMAT)
            return Verdict(role, settings.label, True, True, other.structured, False,
                           f"refused with top_p {settings.top_p:g} ({first}); runs without top_p",
                           round(time.perf_counter() - started, 2))
        except (LLMError, UserError):
            pass
    return Verdict(role, settings.label, False, None, None, None, first)


def _key(settings: RoleSettings) -> str:
    text = json.dumps([settings.model, settings.api_base, settings.temperature, settings.top_p,
                       settings.max_tokens, settings.structured])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_memory: dict[str, dict] = {}


def checked(llm: Llm, role: str, cache_dir: str | None) -> Llm:
    """The start-of-run check of a provider role, once per model and settings (kept in
    ``cache_dir``): a refused key or an unreachable provider stops the run in one line before any
    work; refused sampling settings or schemas adapt the role, with a notice."""
    key = _key(llm.settings)
    path = Path(cache_dir) / _CHECKS_FILE if cache_dir else None
    stored = dict(_memory)
    if path is not None and path.is_file():
        try:
            stored.update(json.loads(path.read_text()))
        except ValueError:
            pass
    verdict = stored.get(key)
    if verdict is None:
        found = probe(llm.settings, role)
        verdict = dataclasses.asdict(found)
        if found.key_accepted is False:
            raise UserError(found.detail or found.line())
        if not found.reachable:
            raise UserError(f"{role} {found.model}: not reachable ({found.detail})")
        _memory[key] = verdict
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            stored[key] = verdict
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=1))
            tmp.replace(path)
    if verdict.get("structured") is False and llm.structured:
        llm.structured = False
        llm.notice("structured output not supported (provider check); free text")
    if verdict.get("sampling") is False and llm.settings.top_p is not None:
        llm.settings = dataclasses.replace(llm.settings, top_p=None)
        llm.notice("sampling refused with top_p (provider check); runs without top_p")
    return llm
