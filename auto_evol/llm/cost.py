"""What LLM calls cost, in US dollars: a role's model string -> a price per token -> usage -> USD.

Prices come from LiteLLM's price table, the offline copy every LiteLLM install ships
(``litellm/model_prices_and_context_window_backup.json``), read lazily as JSON: LiteLLM itself is
never imported (that takes seconds) and nothing is fetched. Its keys are bare model names
("gpt-4o-mini", "claude-sonnet-4-5") or provider-prefixed ones ("groq/...", "gemini/..."); a model
string as auto-evol takes it ("openai/gpt-4o-mini") is found under its own key, or under its bare
name when that entry belongs to the same provider. ``AUTO_EVOL_PRICES=FILE`` names a JSON file of the
same shape whose entries, keyed by the model string exactly as given to auto-evol, come first: for a
model the table lacks, or one on your own server.

- ``embedded`` and ``gguf:PATH`` run in process: local, free (0).
- ``ollama/...``, ``ollama_chat/...``: a local server, free.
- A model on a custom ``--api-base`` has no known price (the name says nothing about what that server
  charges), unless AUTO_EVOL_PRICES names it; ``api.openai.com`` and ``api.anthropic.com`` are the
  providers' own addresses, priced as without --api-base.
- Anything else the table lacks: no known price (None), said as such, never guessed.

Batch prices: the table's ``*_cost_per_token_batches`` fields where it has them, else 50% of the
online price, the discount OpenAI's and Anthropic's batch APIs document; ``Price.batch_source`` says
which. A role's calls are priced by the endpoint each went to: ``role_cost``/``costs`` take the part of a
role's usage that went through a batch API (``batched``; batch.BatchRole counts it apart) and price it
at the batch price, the rest online. Only tokens LLM work was paid for count: usage snapshots
(client.Usage) leave cache hits out. A pure leaf: no MLflow, DSPy or terminal.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

EMBEDDED = "embedded"          # llm.EMBEDDED: the in-process default model (kept here so this leaf imports nothing)
TABLE_FILE = "model_prices_and_context_window_backup.json"
PRICES_ENV = "AUTO_EVOL_PRICES"
BATCH_DISCOUNT = 0.5          # OpenAI's and Anthropic's batch APIs: half the online price
LOCAL_FREE = "local, free"
_LOCAL_PROVIDERS = ("ollama", "ollama_chat")
_OFFICIAL_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}


@dataclass(frozen=True)
class Price:
    """USD per token for one model, online and through a provider's batch API."""
    model: str
    input: float
    output: float
    input_batch: float
    output_batch: float
    source: str               # where the online price comes from
    batch_source: str         # the table's batch fields, or the documented 50% discount

    @property
    def free(self) -> bool:
        return self.input == 0 and self.output == 0

    def per_token(self, batch: bool = False) -> tuple[float, float]:
        return (self.input_batch, self.output_batch) if batch else (self.input, self.output)


@dataclass(frozen=True)
class Cost:
    """What one role's calls cost: the tokens paid for and their price in USD (None: no known price)."""
    role: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    usd: float | None
    note: str = ""            # "local, free" or "no known price for MODEL"; "" for a priced model
    batch_calls: int = 0      # of ``calls`` (and the tokens below of the totals above): those sent through a
    batch_input_tokens: int = 0    # batch API, priced at the batch price (``usd`` is the online part's cost
    batch_output_tokens: int = 0   # plus theirs)

    def describe(self) -> str:
        """'evol: 1,234 in + 567 out tokens, $0.0012' (or the note instead of a price); a role with batched
        calls says how many of its tokens went through a batch API."""
        price = self.note if self.usd is None else usd_text(self.usd) + (f" ({self.note})" if self.note else "")
        batched = (f" ({self.batch_input_tokens:,} in + {self.batch_output_tokens:,} out at the batch price)"
                   if self.batch_calls else "")
        return f"{self.role}: {self.input_tokens:,} in + {self.output_tokens:,} out tokens{batched}, {price}"

    def to_dict(self) -> dict:
        out = {"model": self.model, "calls": self.calls, "input_tokens": self.input_tokens,
               "output_tokens": self.output_tokens,
               "cost_usd": None if self.usd is None else round(self.usd, 6), "note": self.note}
        if self.batch_calls:   # the batched part, at the batch price (already in the totals above)
            out["batch"] = {"calls": self.batch_calls, "input_tokens": self.batch_input_tokens,
                            "output_tokens": self.batch_output_tokens}
        return out


def usd_text(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


@functools.cache
def _table_path() -> Path | None:
    """The price table inside the installed litellm package, found without importing it."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / TABLE_FILE
        if path.is_file():
            return path
    return None


@functools.cache
def _table() -> dict:
    path = _table_path()
    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@functools.cache
def _read_overrides(path: str, mtime: float) -> dict:
    from ..core.errors import UserError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{PRICES_ENV}={path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{PRICES_ENV}={path}: must hold an object of model -> prices")
    return data


def _overrides() -> tuple[dict, str]:
    path = os.environ.get(PRICES_ENV)
    if not path:
        return {}, ""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        from ..core.errors import UserError

        raise UserError(f"{PRICES_ENV}={path}: no such file") from None
    return _read_overrides(path, mtime), f"{PRICES_ENV} ({path})"


@functools.cache
def _version() -> str:
    try:
        from importlib import metadata

        return f"litellm {metadata.version('litellm')}"
    except Exception:   # noqa: BLE001 - only a label
        return "litellm"


def _price(model: str, entry: Mapping, source: str) -> Price | None:
    try:
        online_in, online_out = float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"])
    except (KeyError, TypeError, ValueError):
        return None   # not a priced text model (an image model, a placeholder)
    batch_in, batch_out = entry.get("input_cost_per_token_batches"), entry.get("output_cost_per_token_batches")
    if batch_in is not None and batch_out is not None:
        return Price(model, online_in, online_out, float(batch_in), float(batch_out), source,
                     f"{source}: its batch prices")
    return Price(model, online_in, online_out, online_in * BATCH_DISCOUNT, online_out * BATCH_DISCOUNT, source,
                 f"{BATCH_DISCOUNT:.0%} of the online price (the providers' documented batch discount)")


def _same_provider(provider: str, entry: Mapping) -> bool:
    owner = str(entry.get("litellm_provider") or "")
    return owner == provider or owner.startswith(provider + "-") or owner.endswith("-" + provider)


def _official(api_base: str | None, provider: str) -> bool:
    if not api_base:
        return True
    try:
        host = urlsplit(api_base).hostname or ""
    except ValueError:
        return False
    return host == _OFFICIAL_HOSTS.get(provider)


def lookup(model: str | None, api_base: str | None = None) -> Price | None:
    """The price of a model string as auto-evol takes it; None when no price is known."""
    name = model or EMBEDDED
    overrides, where = _overrides()
    if name in overrides:
        return _price(name, overrides[name], where)
    provider, _, bare = name.partition("/")
    if name == EMBEDDED or name.startswith("gguf:") or provider in _LOCAL_PROVIDERS:
        return Price(name, 0.0, 0.0, 0.0, 0.0, LOCAL_FREE, LOCAL_FREE)
    if not _official(api_base, provider):
        return None
    table = _table()
    source = f"LiteLLM's price table ({_version()})"
    entry = table.get(name)
    if entry is not None:
        return _price(name, entry, f"{source}: {name}")
    if bare:
        entry = table.get(bare)
        if entry is not None and _same_provider(provider, entry):
            return _price(name, entry, f"{source}: {bare}")
    return None


def price_of(settings) -> Price | None:
    """The price of a role (client.RoleSettings, or anything with ``model`` and ``api_base``)."""
    return lookup(settings.model, settings.api_base)


def no_price(model: str | None, api_base: str | None = None) -> str:
    """Why a model has no known price, in one line."""
    from ..core.secrets import redact

    name = model or EMBEDDED
    if api_base and not _official(api_base, name.partition("/")[0]):
        return (f"no known price for {name} on --api-base {redact(api_base)} (name its price in a JSON file "
                f"given as {PRICES_ENV}=FILE)")
    return f"no known price for {name} (not in LiteLLM's price table; {PRICES_ENV}=FILE can name it)"


def require_prices(max_cost: float | None, roles) -> None:
    """A USD cap needs a known price for every role it caps: refused in one line before any call.
    ``roles``: (RoleSettings, flag) pairs."""
    if max_cost is None:
        return
    for settings, flag in roles:
        if price_of(settings) is None:
            from ..core.errors import UserError

            raise UserError(f"--max-cost: {no_price(settings.model, settings.api_base)} ({flag}); "
                            f"a cap cannot be kept without a price")


def cost(usage: Mapping, price: Price, batch: bool = False) -> float:
    """USD for a usage snapshot ({"input_tokens", "output_tokens", ...}, as client.Usage.snapshot gives)."""
    per_in, per_out = price.per_token(batch)
    return float(usage.get("input_tokens", 0) or 0) * per_in + float(usage.get("output_tokens", 0) or 0) * per_out


def add(*usages: Mapping | None) -> dict:
    """The sum of usage snapshots (a role's online and batched counters), key by key."""
    out: dict = {}
    for usage in usages:
        for key, value in (usage or {}).items():
            out[key] = round(out.get(key, 0) + (value or 0), 3)
    return out


def _count(usage: Mapping | None, key: str) -> int:
    return int((usage or {}).get(key, 0) or 0)


def role_cost(role: str, usage: Mapping, price: Price | None, model: str | None,
              batched: Mapping | None = None) -> Cost:
    """``usage``: every call of the role; ``batched``: the part of it sent through a batch API (priced at
    the batch price, the rest online; ``usage`` itself when every call was)."""
    name = model or EMBEDDED
    tokens = (_count(usage, "input_tokens"), _count(usage, "output_tokens"))
    part = {k: _count(batched, k) for k in ("calls", "input_tokens", "output_tokens")}
    split = dict(batch_calls=part["calls"], batch_input_tokens=part["input_tokens"],
                 batch_output_tokens=part["output_tokens"])
    if price is None:
        return Cost(role, name, _count(usage, "calls"), *tokens, None, f"no known price for {name}", **split)
    online = {"input_tokens": tokens[0] - part["input_tokens"], "output_tokens": tokens[1] - part["output_tokens"]}
    return Cost(role, name, _count(usage, "calls"), *tokens, cost(online, price) + cost(part, price, batch=True),
                LOCAL_FREE if price.source == LOCAL_FREE else "", **split)


def costs(usage: Mapping[str, Mapping], roles: Mapping[str, object],
          batched: Mapping[str, Mapping] | None = None) -> dict[str, Cost]:
    """Cost per role: ``usage`` role -> snapshot (all its calls), ``roles`` role -> its RoleSettings (model,
    api_base); ``batched`` role -> the part of its snapshot sent through a batch API."""
    batched = batched or {}
    return {role: role_cost(role, u, price_of(roles[role]), roles[role].model, batched.get(role))
            for role, u in usage.items() if role in roles}


def total(role_costs: Mapping[str, Cost]) -> float | None:
    """The sum over roles; None when any role's price is unknown (a partial sum would understate it)."""
    values = [c.usd for c in role_costs.values()]
    return None if any(v is None for v in values) else sum(values)


def report(role_costs: Mapping[str, Cost]) -> dict:
    """Each role's tokens and USD (Cost.to_dict) and the total, as summary.json and stats.json hold them."""
    return {**{role: c.to_dict() for role, c in role_costs.items()}, "total_usd": total(role_costs)}


def estimate(role_costs: Mapping[str, Cost]) -> tuple[dict[str, dict], float | str]:
    """--dry-run's figures from the costs of estimated usage: per role the model, the usage and the USD
    (rounded; the reason instead where the price is unknown), and the total (a line naming the models
    with no known price instead, as a partial sum would understate it)."""
    rows = {role: {"model": c.model, "calls": c.calls, "input_tokens": c.input_tokens,
                   "output_tokens": c.output_tokens, "cost_usd": round(c.usd, 6) if c.usd is not None else c.note}
            for role, c in role_costs.items()}
    unknown = [c.model for c in role_costs.values() if c.usd is None]
    whole = (f"no known price for {', '.join(dict.fromkeys(unknown))}" if unknown else
             round(sum(c.usd for c in role_costs.values()), 6))
    return rows, whole


def summary(role_costs: Mapping[str, Cost]) -> str:
    """One line for a terminal: each role's tokens and cost, then the total."""
    if not role_costs:
        return "no LLM calls"
    parts = "; ".join(c.describe() for c in role_costs.values())
    whole = total(role_costs)
    unknown = [c.model for c in role_costs.values() if c.usd is None]
    return parts + ("; total " + usd_text(whole) if whole is not None else
                    f"; total unknown (no known price for {', '.join(dict.fromkeys(unknown))})")


def metrics(role_costs: Mapping[str, Cost]) -> dict[str, float]:
    """MLflow metrics: cost.ROLE per priced role and cost_usd, the total, when every role is priced."""
    out = {f"cost.{role}": c.usd for role, c in role_costs.items() if c.usd is not None}
    whole = total(role_costs)
    if whole is not None:
        out["cost_usd"] = whole
    return out


def delta(after: Mapping[str, Mapping], before: Mapping[str, Mapping]) -> dict[str, dict]:
    """Usage per role between two snapshots of the same roles (what a step or a phase spent)."""
    return {role: {k: round(v - before.get(role, {}).get(k, 0), 3) for k, v in counts.items()}
            for role, counts in after.items()}
