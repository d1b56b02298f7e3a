"""A verb's LLM roles: every role checked before any is built, each built once, and the limits they share.

optimize, evolve and compare each name two or three roles (evol, optimizer, answer, judge); roles with
the same settings share one backend (one client, one reply cache) and count their usage apart. Every
role on one server and model passes one limit on its calls in flight: a server's limit is the
server's, not a role's. A provider role (the DSPy/LiteLLM path) is
probed once by the provider check (check.py), which itself builds its probes with backends.build;
this module sits above both, so neither needs the other late.
"""
from __future__ import annotations

from . import backends, check, providers
from .client import MAX_ERROR_RATE, Llm, RoleSettings
from .concurrency import AUTO, GGUF_CALLS, INITIAL, PROVIDER_CALLS, AdaptiveLimit, CallSlots


def build_roles(*roles: tuple[RoleSettings, str], cache_dir: str | None, concurrency: int | str,
                memory: bool = True, max_error_rate: float = MAX_ERROR_RATE,
                checks_dir: str | None = None, burst: int | None = None) -> list[Llm]:
    """The LLMs of a verb's roles, given as (settings, flag) pairs: every role is checked before any
    is built (a bad model or key fails before any work), the cache is set up once, and roles with
    the same settings share one backend (Llm.sibling: one client and cache, each role its own usage,
    so no call is counted twice). Provider checks are kept in ``checks_dir`` (``cache_dir`` when
    None), so a verb that runs without a reply cache still checks each provider once.

    The calls in flight are limited per server and model, whichever role makes them (a server's
    limit is the server's, not a role's): under ``concurrency="auto"`` an OpenAI-compatible server's
    calls pass one adaptive limit (concurrency.AdaptiveLimit), a provider's one CallSlots of
    PROVIDER_CALLS, a GGUF model's one of GGUF_CALLS; a number N is one CallSlots of N. ``burst``: the
    most calls the verb sends at once, when it knows (optimize: a step's m x |D| dev evolutions), where
    an adaptive limit starts instead of at INITIAL: slow start from 8 doubles per round trip, 5 round
    trips to 250 calls, and a run of a few bursts pays them at every start (2.5 s of an optimize run's
    5 s critical path at 500 ms per call, measured); a server that takes fewer refuses the first burst,
    once, and the limit is cut to what it sustains from there."""
    for settings, flag in roles:
        backends.check(settings, flag)
    backends.configure_cache(cache_dir, memory=memory)
    cache = cache_dir is not None or memory  # with no cache layer at all, DSPy need not compute cache keys
    built: dict[RoleSettings, Llm] = {}
    gates: dict[tuple, AdaptiveLimit] = {}
    slots: dict[tuple, CallSlots] = {}
    out = []
    for settings, flag in roles:
        if settings in built:
            out.append(built[settings].sibling())
            continue
        adapted, notices = providers.adapt(settings)
        where = (adapted.api_base, adapted.model)
        gate = None
        if concurrency == AUTO and backends.openai_compatible_server(adapted):
            gate = gates.setdefault(where, AdaptiveLimit(max(INITIAL, burst or 0)))
        llm = backends.build(adapted, concurrency=concurrency, cache=cache, gate=gate)
        if gate is None:
            size = concurrency if concurrency != AUTO else \
                GGUF_CALLS if backends.gguf_path(adapted.model) is not None else PROVIDER_CALLS
            llm.slots = slots.setdefault(where, CallSlots(size))
        for text in notices:
            llm.notice(text)
        if backends.uses_provider_path(adapted):
            llm = check.checked(llm, flag.lstrip("-").removesuffix("-model"), checks_dir or cache_dir)
        built[settings] = llm
        out.append(llm)
    for llm in out:
        llm.errors.limit = max_error_rate
    return out
