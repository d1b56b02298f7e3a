"""Known provider rules that break the paper's sampling defaults, and how a role is adapted to them.

The paper samples the optimizer at temperature 0.6 with top_p 0.95 and evolves at temperature 0.
Some models refuse those settings outright, so a run that keeps them fails on its first call:
- recent Anthropic models (Opus 4.1 and later, Sonnet and Haiku 4.5 and later) answer HTTP 400 when a
  request sets both temperature and top_p; the temperature is kept, top_p dropped;
- OpenAI reasoning models (the o-series and the gpt-5 family, bar its -chat variants) take only
  temperature 1 and spend part of the token budget on hidden reasoning, so they need a large budget
  (DSPy asks for at least 16,000 tokens); top_p is dropped.
Each rule is a row of RULES: a name, a test on the model string, and the change with its one-line
reason. A rule is applied before any call, with a notice, instead of failing mid-run.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

REASONING_MIN_TOKENS = 16000


def _family(model: str | None) -> str:
    """The model's own name without provider prefixes: 'anthropic/claude-x' -> 'claude-x'."""
    return (model or "").rsplit("/", 1)[-1].casefold()


def _claude_version(model: str | None) -> tuple[str, float] | None:
    """('opus', 4.1) for 'claude-opus-4-1-20250805', ('sonnet', 4.5) for 'claude-sonnet-4-5'."""
    match = re.search(r"claude-(opus|sonnet|haiku)-(\d+)(?:[-.](\d{1,2}))?(?!\d)", _family(model))
    if not match:
        return None
    minor = match.group(3)
    return match.group(1), float(f"{match.group(2)}.{minor or 0}")


def refuses_temperature_with_top_p(model: str | None) -> bool:
    found = _claude_version(model)
    if found is None:
        return False
    tier, version = found
    return version >= (4.1 if tier == "opus" else 4.5)


def is_reasoning_model(model: str | None) -> bool:
    return re.match(r"^(?:o[1-9](?:-(?:mini|nano|pro))?(?:-\d{4}-\d{2}-\d{2})?|gpt-5(?:\.\d+)*(?!-chat)(?:-.*)?)$",
                    _family(model)) is not None


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[str | None], bool]
    adapt: Callable[[object], tuple[dict, str] | None]   # settings -> (changes, reason), or None if nothing to change


def _drop_top_p(settings) -> tuple[dict, str] | None:
    if settings.temperature is None or settings.top_p is None:
        return None
    return {"top_p": None}, (f"this model takes temperature or top_p, not both: kept temperature "
                             f"{settings.temperature:g}, dropped top_p {settings.top_p:g}")


def _reasoning(settings) -> tuple[dict, str] | None:
    changes: dict = {}
    if settings.temperature not in (None, 1.0):
        changes["temperature"] = 1.0
    if settings.top_p is not None:
        changes["top_p"] = None
    if settings.max_tokens < REASONING_MIN_TOKENS:
        changes["max_tokens"] = REASONING_MIN_TOKENS
    if not changes:
        return None
    said = ", ".join(f"{k} {v:g}" if v is not None else f"no {k}" for k, v in changes.items())
    return changes, f"a reasoning model takes only temperature 1 and needs room to think: {said}"


RULES: tuple[Rule, ...] = (
    Rule("temperature-or-top-p", refuses_temperature_with_top_p, _drop_top_p),
    Rule("reasoning-model", is_reasoning_model, _reasoning),
)


def adapt(settings):
    """(settings the provider will take, one notice per rule applied). ``settings`` is a frozen
    dataclass with model, temperature, top_p and max_tokens (client.RoleSettings)."""
    notices = []
    for rule in RULES:
        if rule.applies(settings.model):
            found = rule.adapt(settings)
            if found is not None:
                changes, reason = found
                settings = dataclasses.replace(settings, **changes)
                notices.append(reason)
    return settings, notices
