"""A lean DSPy engine for OpenAI-compatible chat servers (``--api-base``), for throughput at scale.

DSPy still owns the cache, the retries (honouring Retry-After) and the callbacks; this engine only
makes one attempt over a pooled keep-alive connection (aiohttp for async callers, http.client for
threads) and turns the server's answer into DSPy's response or error types. A 200 whose body is not
a chat completion (a proxy's HTML error page, a body cut short) is taken for a passing server fault
and retried like a 5xx: with 20% injected faults over 2,000 items, failing such replies for good cost
about 10% of the items a call error (`llm_error`).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import threading
import time
import urllib.parse
from email.utils import parsedate_to_datetime

try:   # a dependency of DSPy
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover
    _orjson_dumps = None

from ..core.secrets import split_credentials

MAX_REFUSED = 900.0   # seconds one call may be refused by the server's limit before it counts as failed


def _refused(status: int | None, retry_after: float | None, gate) -> bool:
    """A refusal by the server's limit, not a failure: a 429, or a 503 that names a Retry-After or comes
    while the server answers other calls (a 503 from a server that answers nothing is an outage)."""
    return status == 429 or (status == 503 and (retry_after is not None or
                                                 (gate is not None and gate.answering())))


def _json_bytes(value) -> bytes:
    """A request body as JSON bytes: orjson takes ~2 us where json.dumps (what aiohttp's ``json=``
    calls) took ~21 us per body, profiled. A value orjson refuses (a lone surrogate in a prompt, an
    integer past 64 bits) goes through json as before."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value)
        except TypeError:   # orjson.JSONEncodeError is a TypeError
            pass
    return json.dumps(value).encode()


def openai_body(request) -> dict:
    """A DSPy request as an OpenAI chat-completions body (text messages and sampling settings)."""
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(
            getattr(p, "text", "") for p in request.system)
        messages.append({"role": "system", "content": system})
    messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
    body: dict = {"model": request.model.split("/", 1)[-1], "messages": messages}
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        value = getattr(request.config, name)
        if value is not None:
            body[name] = value
    fmt = request.config.response_format
    if fmt and fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name") or "reply", "schema": fmt["schema"]}
        if "strict" in fmt:
            schema["strict"] = fmt["strict"]
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt:
        body["response_format"] = {"type": fmt["type"]}
    return body


def _retry_after(value: str | float | None) -> float | None:
    """Seconds from a Retry-After value: a number of seconds or an HTTP date (None when neither)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def wait_of(headers) -> float | None:
    """The wait a throttled reply asks for, in seconds: ``retry-after-ms`` (Azure OpenAI's, read first
    as the OpenAI SDK does) or ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return _retry_after(headers.get("Retry-After"))


def _result(status: int, text: str, retry_after: float | None, model: str):
    """The reply of ``status`` as lm15 takes it, or its error; ``retry_after``: the wait asked for, in seconds."""
    from dspy import lm15

    if status == 429:
        raise lm15.RateLimitError(f"429 from the server: {text[:200]}", retry_after=retry_after)
    if status in (401, 403):
        raise lm15.AuthError(f"{status} from the server: {text[:200]}")
    if status >= 500:
        raise lm15.ServerError(f"{status} from the server: {text[:200]}", status=status, retry_after=retry_after)
    if status >= 400:
        raise lm15.InvalidRequestError(f"{status} from the server: {text[:200]}", status=status)
    try:
        data = json.loads(text)
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise lm15.ServerError(f"the server's reply is not a chat completion: {text[:120]!r}", status=status) from None
    # Built directly: lm15's general converter costs more than the whole request on a fast server.
    return lm15.Response(
        id=data.get("id"), model=model, message=lm15.Message.assistant([lm15.TextPart(content)]),
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        usage=lm15.Usage(input_tokens=usage.get("prompt_tokens", 0) or 0,
                         output_tokens=usage.get("completion_tokens", 0) or 0,
                         total_tokens=usage.get("total_tokens", 0) or 0))


class SyncEngine:
    """What every synchronous DSPy engine here shares: streaming is the whole reply as events."""

    def complete(self, request):
        raise NotImplementedError

    def stream(self, request):
        from dspy import lm15

        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class OpenAICompatEngine(SyncEngine):
    """One attempt per call over a per-thread keep-alive connection (for threaded callers)."""

    def __init__(self, base_url: str, key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 connections: int = 64) -> None:
        self.key_env, self.timeout, self.connections = key_env, timeout, connections
        url, self._basic = split_credentials(base_url.rstrip("/") + "/chat/completions")
        self.url = url     # no user:password in it: those travel as a Basic Authorization header
        parts = urllib.parse.urlsplit(url)
        self._https, self._netloc = parts.scheme == "https", parts.netloc
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._local = threading.local()

    def _headers(self) -> dict:
        if self._basic:   # a server behind a proxy that asks for user:password (the address carried them)
            return {"Content-Type": "application/json", "Authorization": f"Basic {self._basic}"}
        key = os.environ.get(self.key_env) or "unused"
        return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    # --- threads (optimize) ---
    def complete(self, request):
        from dspy import lm15

        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._netloc, timeout=self.timeout)
        try:
            conn.request("POST", self._path, body=json.dumps(openai_body(request)), headers=self._headers())
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
        except TimeoutError:
            self._local.conn = None
            conn.close()
            raise lm15.TimeoutError(f"no reply within {self.timeout} s") from None
        except (OSError, http.client.HTTPException) as exc:
            self._local.conn = None
            conn.close()
            raise lm15.TransportError(f"connection failed: {exc}") from None
        return _result(response.status, text, _retry_after(response.getheader("Retry-After")), request.model)


class AsyncOpenAICompatEngine:
    """``limit``: an adaptive gate (concurrency.AdaptiveLimit, ``--concurrency auto``) that every
    attempt passes, DSPy's retries included; it hears each attempt's outcome (a 429 or 503 with its
    Retry-After, a success, anything else)."""

    def __init__(self, sync: OpenAICompatEngine, limit=None) -> None:
        self.sync = sync
        self.limit = limit
        self._sessions: dict[int, object] = {}

    def _session(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:
            # Never fewer connections than the gate may let through.
            connector = aiohttp.TCPConnector(limit=max(self.sync.connections, self.limit.maximum if self.limit else 0))
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.sync.timeout))
            self._sessions[id(loop)] = session
        return session

    async def complete(self, request):
        """One call: its refusals by the server's limit (a 429, or a 503 while the server answers other
        calls or names a Retry-After) are sent again here, each after its Retry-After or a short wait,
        for as long as ``MAX_REFUSED`` seconds: a limit, however tight, delays an item but never fails
        it and never spends one of DSPy's retries (at 5 requests/s, 5 of 100 items once ended as
        llm_error after DSPy's four retries). Any other error goes to DSPy's retries as before."""
        refusals, first_refused = 0, None
        while True:
            status, text, retry_after = await self._attempt(request)
            gate = self.limit
            if not _refused(status, retry_after, gate):
                break
            now = time.monotonic()
            first_refused = now if first_refused is None else first_refused
            if now - first_refused >= MAX_REFUSED:
                break   # refused for a quarter of an hour: DSPy's retries, then the item's llm_error
            refusals += 1
            if retry_after is not None:
                wait = min(retry_after, MAX_REFUSED)
            elif gate is not None:
                wait = gate.retry_wait(refusals) * random.uniform(0.5, 1.5)
            else:   # no gate (a fixed --concurrency): DSPy's own backoff, 1 s doubling, 30 s at most
                wait = min(30.0, 2.0 ** (refusals - 1)) * random.uniform(0.5, 1.5)
            if gate is not None:
                gate.waiting += 1
            try:
                await asyncio.sleep(wait)
            finally:
                if gate is not None:
                    gate.waiting -= 1
        return _result(status, text, retry_after, request.model)

    async def _attempt(self, request) -> tuple[int, str, float | None]:
        """One HTTP attempt through the gate: (status, body, the wait a refusal asked for)."""
        import aiohttp
        from dspy import lm15

        gate = self.limit
        slot = await gate.acquire() if gate is not None else None
        status = retry_after = None
        try:
            # Sent as bytes (``data=``): the Content-Type: application/json that ``json=`` set comes from
            # _headers, which always carries it.
            async with self._session().post(self.sync.url, data=_json_bytes(openai_body(request)),
                                            headers=self.sync._headers()) as r:
                text = await r.text(errors="replace")
                status, retry_after = r.status, wait_of(r.headers)
        except asyncio.TimeoutError:
            raise lm15.TimeoutError(f"no reply within {self.sync.timeout} s") from None
        except aiohttp.ClientError as exc:
            raise lm15.TransportError(f"connection failed: {exc}") from None
        finally:
            if slot is not None:
                if _refused(status, retry_after, gate):
                    gate.throttle(slot, retry_after)
                elif status is not None and status < 300:
                    gate.success(slot)
                else:
                    gate.failure(slot)
        return status, text, retry_after

    async def stream(self, request):
        from dspy import lm15

        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
