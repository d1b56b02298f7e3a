"""A verb's LLM roles: every role checked before any is built, each built once, and the limits they share.

optimize, evolve and compare each name two or three roles (evol, optimizer, answer, judge); roles with
the same settings are one Llm, so their calls share one client, one reply cache and one usage count.
Under ``--concurrency auto`` every role on one OpenAI-compatible server and model passes one adaptive
limit: a server's rate limit is the server's, not a role's. A provider role (the DSPy/LiteLLM path) is
probed once by the provider check (check.py), which itself builds its probes with backends.build;
this module sits above both, so neither needs the other late.
"""
from __future__ import annotations

from . import backends, check, providers
from .client import MAX_ERROR_RATE, Llm, RoleSettings
from .concurrency import AUTO, AdaptiveLimit


def build_roles(*roles: tuple[RoleSettings, str], cache_dir: str | None, concurrency: int | str,
                memory: bool = True, max_error_rate: float = MAX_ERROR_RATE,
                checks_dir: str | None = None) -> list[Llm]:
    """The LLMs of a verb's roles, given as (settings, flag) pairs: every role is checked before any
    is built (a bad model or key fails before any work), the cache is set up once, and roles with
    the same settings share one Llm. Provider checks are kept in ``checks_dir`` (``cache_dir`` when
    None), so a verb that runs without a reply cache still checks each provider once. Under
    ``concurrency="auto"`` the roles on one OpenAI-compatible server and model share one adaptive
    limit (a rate limit is the server's, not a role's)."""
    for settings, flag in roles:
        backends.check(settings, flag)
    backends.configure_cache(cache_dir, memory=memory)
    cache = cache_dir is not None or memory  # with no cache layer at all, DSPy need not compute cache keys
    built: dict[RoleSettings, Llm] = {}
    gates: dict[tuple, AdaptiveLimit] = {}
    for settings, flag in roles:
        if settings not in built:
            adapted, notices = providers.adapt(settings)
            gate = None
            if concurrency == AUTO and backends.openai_compatible_server(adapted):
                gate = gates.setdefault((adapted.api_base, adapted.model), AdaptiveLimit())
            llm = backends.build(adapted, concurrency=concurrency, cache=cache, gate=gate)
            for text in notices:
                llm.notice(text)
            if backends.uses_provider_path(adapted):
                llm = check.checked(llm, flag.lstrip("-").removesuffix("-model"), checks_dir or cache_dir)
            llm.errors.limit = max_error_rate
            built[settings] = llm
    return [built[settings] for settings, _ in roles]
