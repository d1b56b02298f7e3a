"""The batch endpoints ``--batch`` sends to, one row each of ``PROVIDERS``, and what a batch answers.

OpenAI's Files + Batches API (also any OpenAI-compatible server offering it at --api-base) and
Anthropic's Message Batches: how a request body is made from the role's settings, how a batch is
submitted, polled, read back (``Done`` / ``Failed`` per custom id) and found again after a kill. A new
provider is one class here and one row of ``PROVIDERS``; the batcher and the journal (batcher.py,
journal.py) never look inside a provider.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass

from ...core.errors import UserError, first_line


# --- results -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    cached: bool = False           # already delivered (and counted) once by this process


@dataclass(frozen=True)
class Failed:
    reason: str
    status: int | None = None      # the HTTP status the request got, where one was given
    resubmit: bool = True          # False: the batch may still hold its answer (a rerun attaches again)

    @property
    def retryable(self) -> bool:
        """Expired, cancelled, server errors, a batch that failed: worth another batch. A request refused
        as invalid (400) would be refused again."""
        return self.resubmit and self.status != 400


class RequestFailed(Exception):
    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.reason)
        self.failed = failed


class NotCreated(Exception):
    """A submission that certainly made no batch (its upload failed: a batch needs its file); the
    provider's error is its ``__cause__``."""


def refusal(status: int | None) -> bool:
    """An HTTP status that says the request was refused, so nothing was made: a 4xx other than a 408
    (a timeout, which says nothing of what the server did)."""
    return status is not None and 400 <= status < 500 and status != 408


@dataclass(frozen=True)
class Progress:
    batch: str
    status: str
    done: int
    failed: int
    total: int
    label: str = ""

    def line(self) -> str:
        return (f"batch {self.batch} ({self.label}): {self.done}/{self.total} done"
                + (f", {self.failed} failed" if self.failed else "") + f" ({self.status})")


def stderr_progress(progress: Progress) -> None:
    print(f"note: {progress.line()}", file=sys.stderr, flush=True)


# --- providers ---------------------------------------------------------------------------------------

class _Provider:
    """What every provider of the PROVIDERS table shares: an SDK client made on first use (``client``),
    closed with the batcher."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self._client = None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class OpenAIBatches(_Provider):
    """OpenAI's Files + Batches API (or an OpenAI-compatible server's, at --api-base)."""

    name = "openai"
    limit = 50_000
    endpoint = "/v1/chat/completions"

    def client(self):
        if self._client is None:
            import openai

            from ...core.secrets import split_credentials

            base, basic = (split_credentials(self.settings.api_base) if self.settings.api_base else (None, None))
            key = os.environ.get("OPENAI_API_KEY") or ("unused" if base else None)
            headers = {"Authorization": f"Basic {basic}"} if basic else None
            self._client = openai.AsyncOpenAI(api_key=key, base_url=base, default_headers=headers)
        return self._client

    def body(self, request) -> tuple[dict, bool]:
        """The request's chat-completions body, and whether its reply format was carried."""
        from ..http_engine import openai_body
        from ..providers import is_reasoning_model

        body = openai_body(request)
        if is_reasoning_model(self.settings.model) and "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")   # as LiteLLM sends it online
        return body, True

    async def submit(self, intent: str, requests: list[tuple[str, dict]]) -> str:
        lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": self.endpoint, "body": body},
                                   ensure_ascii=False) + "\n" for cid, body in requests)
        client = self.client()
        try:   # the SDK's retries are harmless here: a file is no batch (a duplicate costs nothing)
            uploaded = await client.files.create(file=(f"auto_evol_{intent}.jsonl", lines.encode()), purpose="batch")
        except Exception as exc:
            raise NotCreated(first_line(exc)) from exc
        # Not retried by the SDK: a create that timed out may have made its batch, and a retry another one.
        # The Batcher looks for it (by the intent in its metadata) before submitting again.
        batch = await client.with_options(max_retries=0).batches.create(
            input_file_id=uploaded.id, endpoint=self.endpoint, completion_window="24h",
            metadata={"auto_evol_intent": intent})
        return batch.id

    async def status(self, batch_id: str) -> tuple[bool, Progress]:
        batch = await self.client().batches.retrieve(batch_id)
        counts = batch.request_counts
        progress = Progress(batch_id, batch.status, getattr(counts, "completed", 0) or 0,
                            getattr(counts, "failed", 0) or 0, getattr(counts, "total", 0) or 0)
        return batch.status in ("completed", "failed", "expired", "cancelled"), progress

    async def results(self, batch_id: str) -> dict[str, Done | Failed]:
        client = self.client()
        batch = await client.batches.retrieve(batch_id)
        found: dict[str, Done | Failed] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for line in content.text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    found[row["custom_id"]] = self._result(row)
        if batch.input_file_id:   # the requests' upload is spent once its batch ended: it would only take
            with contextlib.suppress(Exception):   # up the account's file storage (best effort)
                await client.files.delete(batch.input_file_id)
        if batch.status != "completed" and not found:
            errors = getattr(batch.errors, "data", None) or []
            why = first_line(Exception(errors[0].message)) if errors and errors[0].message else f"batch {batch.status}"
            return {"*": Failed(f"batch {batch.status}: {why}")}   # every request of the batch
        return found

    @staticmethod
    def _result(row: dict) -> Done | Failed:
        error, response = row.get("error"), row.get("response") or {}
        if error:
            return Failed(f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip())
        status, body = response.get("status_code"), response.get("body") or {}
        if status != 200:
            message = ((body.get("error") or {}).get("message") if isinstance(body, dict) else None) or str(body)[:200]
            return Failed(f"{status}: {first_line(Exception(message))}", status)
        try:
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Done(choice["message"].get("content") or "", usage.get("prompt_tokens", 0) or 0,
                        usage.get("completion_tokens", 0) or 0, choice.get("finish_reason") == "length")
        except (KeyError, IndexError, TypeError, AttributeError):
            return Failed(f"the batch's reply is not a chat completion: {str(body)[:120]!r}")

    async def find(self, intent: dict, known: set[str]) -> str | None:
        """The batch an intent made, by the intent's key in its metadata (newest first, back to an
        hour before the intent)."""
        async for batch in self.client().batches.list(limit=100):
            if (batch.metadata or {}).get("auto_evol_intent") == intent["intent"]:
                return batch.id
            if batch.created_at < intent["time"] - 3600:
                return None
        return None


class AnthropicBatches(_Provider):
    """Anthropic's Message Batches API."""

    name = "anthropic"
    limit = 100_000
    SLACK = 60.0   # seconds of clock skew allowed between this machine and the provider

    def client(self):
        if self._client is None:
            import anthropic

            base = self.settings.api_base
            if base:
                base = base.rstrip("/").removesuffix("/v1")
            key = os.environ.get("ANTHROPIC_API_KEY") or ("unused" if base else None)
            self._client = anthropic.AsyncAnthropic(api_key=key, base_url=base or None)
        return self._client

    def body(self, request) -> tuple[dict, bool]:
        """Messages API params; the reply format is not carried (free text), nor is a seed."""
        params: dict = {"model": request.model.split("/", 1)[-1], "max_tokens": request.config.max_tokens,
                        "messages": [{"role": m.role, "content": m.text or ""} for m in request.messages]}
        if request.system is not None:
            params["system"] = request.system if isinstance(request.system, str) else "".join(
                getattr(p, "text", "") for p in request.system)
        for name in ("temperature", "top_p"):
            value = getattr(request.config, name)
            if value is not None:
                params[name] = value
        return params, False

    async def submit(self, intent: str, requests: list[tuple[str, dict]]) -> str:
        # Not retried by the SDK (see OpenAIBatches.submit): the Batcher looks for the batch first.
        batch = await self.client().with_options(max_retries=0).messages.batches.create(
            requests=[{"custom_id": cid, "params": body} for cid, body in requests])
        return batch.id

    async def status(self, batch_id: str) -> tuple[bool, Progress]:
        batch = await self.client().messages.batches.retrieve(batch_id)
        c = batch.request_counts
        failed = c.errored + c.canceled + c.expired
        progress = Progress(batch_id, batch.processing_status, c.succeeded, failed,
                            c.processing + c.succeeded + failed)
        return batch.processing_status == "ended", progress

    async def results(self, batch_id: str) -> dict[str, Done | Failed]:
        found: dict[str, Done | Failed] = {}
        async for row in await self.client().messages.batches.results(batch_id):
            result = row.result
            if result.type == "succeeded":
                message = result.message
                text = "".join(getattr(block, "text", "") for block in message.content if block.type == "text")
                found[row.custom_id] = Done(text, message.usage.input_tokens, message.usage.output_tokens,
                                            message.stop_reason == "max_tokens")
            elif result.type == "errored":
                error = getattr(result.error, "error", None)
                kind = getattr(error, "type", "error")
                status = 400 if kind == "invalid_request_error" else None
                found[row.custom_id] = Failed(f"{kind}: {getattr(error, 'message', '')}", status)
            else:
                found[row.custom_id] = Failed(f"request {result.type}")
        return found

    async def find(self, intent: dict, known: set[str]) -> str | None:
        """No metadata on Anthropic batches: the earliest batch created since the intent (less SLACK)
        with the same number of requests that no journal line names (see the module's docstring)."""
        since, best = intent["time"] - self.SLACK, None
        async for batch in self.client().messages.batches.list(limit=100):
            created = batch.created_at.timestamp()
            if created < since:
                break
            c = batch.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if batch.id not in known and total == len(intent["custom_ids"]):
                if best is None or created <= best[0]:
                    best = (created, batch.id)
        return best[1] if best else None


PROVIDERS = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}


def provider_name(settings) -> str | None:
    """The batch provider of a role's model string, or None when it has no batch endpoint."""
    model = settings.model or ""
    for name in PROVIDERS:
        if model.startswith(f"{name}/"):
            return name
    return None


def check_batchable(settings) -> None:
    if provider_name(settings) is None:
        raise UserError(f"--batch: {settings.label} has no batch endpoint (OpenAI-compatible and Anthropic "
                        f"models do)")
