"""Scripted batch APIs on 127.0.0.1: OpenAI's Files + Batches and Anthropic's Message Batches, on the wire.

Both fakes speak the real formats the ``openai`` and ``anthropic`` SDKs send and parse (see test_fake_batch.py,
which drives them with those SDKs and validates every JSON they sent against the SDKs' strict models). Each is a
threaded http.server in the test process, started and stopped as a context manager, like fake_openai.FakeOpenAI::

    with FakeOpenAIBatch(polls_to_finish=2) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test")        # fake.base ends in /v1
    with FakeAnthropicBatch() as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test")  # fake.base has no /v1

A reply is ``reply(prompt, body)`` (or ``reply(prompt)``) on the last user message's text; the default is
fake_openai.world. A batch advances one state per GET of it (a poll); ``polls_to_finish`` polls end it.

Controls, all constructor keywords and also attributes that a test may change at any time:

* ``polls_to_finish`` (3): the GET that ends a batch. 0 ends it at creation.
* ``expire``: False; True (every batch ends expired, none of its requests answered); or custom ids (a set or list:
  those expire every time they are sent; a dict {custom_id: n}: the first n times, counted down in place).
  A batch holding an id that expires ends expired, its other requests answered.
* ``fail_ids``: custom ids answered with a server error (500 / api_error) instead of a reply; a set or list (every
  time) or a dict {custom_id: n} (the first n times, counted down in place).
* ``fail_batch``: OpenAI, the batch fails validation at its first poll (status "failed", ``errors``, no files);
  Anthropic, the create is refused 400 invalid_request_error. Malformed input fails the same way, as the real
  services validate it.
* ``schemas``: honour a json_schema response format (OpenAI response_format, Anthropic output_config.format) with
  fake_openai.structured_reply.
* ``shuffled`` (True): result files list requests in reverse input order, since neither service promises order.
* ``failing``: answer every HTTP request 500 (Retry-After: 0) until cleared, as an outage does.
* ``lost_creates`` (0): the next N batch creates make their batch but answer 500, as a reply lost on its way
  back (a gateway timeout) does: the client cannot tell whether a batch was made.

Records: ``batches_created``, ``files_created`` (uploads), ``create_posts`` (batch creates asked, retries
included), ``polls``, ``cancels``, ``rejected`` (creates refused),
``submitted`` (the custom ids of each created batch, in creation order), ``batches`` {id: _Batch, with
``.custom_ids``, ``.bodies``, ``.status``...}, ``bodies`` (every request body a batch carried), ``auth`` (the
Authorization / x-api-key values seen), ``headers`` (every request's headers), ``sent`` ([(kind, json)] every
object and result line the fake answered, so tests can validate them against the SDK models).
"""
from __future__ import annotations

import inspect
import itertools
import json
import os
import signal
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for fake_openai, run as a script too
from fake_openai import REASONING, structured_reply, world  # noqa: E402

ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _script(reply: Callable | None) -> Callable[[str, dict], str]:
    if reply is None:
        return lambda prompt, body: world(prompt)
    try:
        positional = [p for p in inspect.signature(reply).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return reply
    if len(positional) == 1 and positional[0].kind != positional[0].VAR_POSITIONAL:
        return lambda prompt, body: reply(prompt)
    return reply


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _last_user(messages: list) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return _text(messages[-1].get("content")) if messages else ""


def _take(ids, custom_id: str) -> bool:
    """Whether ``ids`` (a set/list: always; a dict {id: n}: n more times, counted down in place) holds the id."""
    if isinstance(ids, dict):
        if ids.get(custom_id, 0) <= 0:
            return False
        ids[custom_id] -= 1
        return True
    return not isinstance(ids, bool) and custom_id in (ids or ())


class _Batch:
    """One batch's state; ``polls`` counts GETs of it, ``outcome`` {custom_id: kind} is fixed when it ends."""

    def __init__(self, batch_id: str, custom_ids: list[str], bodies: list[dict], meta: dict) -> None:
        self.id = batch_id
        self.custom_ids = custom_ids
        self.bodies = bodies
        self.meta = meta
        self.created = time.time()
        self.polls = 0
        self.cancel_at: int | None = None      # polls seen when a cancel came
        self.status = ""
        self.stamps: dict[str, float] = {}
        self.outcome: dict[str, str] | None = None   # custom_id -> ok | fail | refused:<msg> | expired | canceled
        self.ended = False
        self.replies: dict[str, dict] = {}   # custom_id -> the chat completion / message, made once


def _seq_id(prefix: str, n: int, width: int = 24) -> str:
    return f"{prefix}{n:0{width}x}"


class _FakeBase:
    """The HTTP machinery and the scripted outcome of each request, shared by both fakes."""

    with_v1 = True

    def __init__(self, reply: Callable | None = None, *, polls_to_finish: int = 3,
                 expire: bool | Iterable[str] | dict = False, fail_ids: Iterable[str] | dict = (),
                 fail_batch: bool = False, schemas: bool = False, shuffled: bool = True) -> None:
        self.reply = _script(reply)
        self.polls_to_finish = polls_to_finish
        self.expire = expire
        self.fail_ids = fail_ids
        self.fail_batch = fail_batch
        self.schemas = schemas
        self.shuffled = shuffled
        self.failing = False
        self.lost_creates = 0
        self.create_posts = 0
        self.batches_created = 0
        self.files_created = 0
        self.polls = 0
        self.cancels = 0
        self.rejected = 0
        self.submitted: list[list[str]] = []
        self.batches: dict[str, _Batch] = {}
        self.bodies: list[dict] = []
        self.auth: set[str] = set()
        self.headers: list[dict[str, str]] = []
        self.sent: list[tuple[str, dict]] = []
        self.lock = threading.RLock()
        self._seq = itertools.count(1)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # else each keep-alive reply waits out a delayed ACK

            def log_message(self, *args) -> None:
                pass

            def _serve(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.headers.append(headers)
                    if outer.failing:
                        status, extra, data = 500, {"Retry-After": "0"}, json.dumps(
                            outer._error_body(500, "The server is down.")).encode()
                    else:
                        creates = method == "POST" and parts.path.rstrip("/").endswith(outer.create_path)
                        outer.create_posts += creates
                        status, extra, data = outer._dispatch(method, parts.path, query, headers, raw)
                        if creates and status == 200 and outer.lost_creates > 0:   # made, but the reply is lost
                            outer.lost_creates -= 1
                            status, extra, data = 500, {"Retry-After": "0"}, json.dumps(
                                outer._error_body(500, "The server had an error processing your request.")).encode()
                self.send_response(status)
                ctype = extra.pop("Content-Type", "application/json")
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client killed mid-reply is expected
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base = self.root + "/v1" if self.with_v1 else self.root
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- shared helpers -------------------------------------------------------------------------------------

    def _poll(self, batch: _Batch):
        """A client polls ``batch``: it moves on as the provider's would (``_advance``), and is shown."""
        batch.polls += 1
        self.polls += 1
        self._advance(batch)
        return self._json(200, self._view(batch), "batch")

    def _json(self, status: int, obj, kind: str | None = None):
        if kind:
            self.sent.append((kind, obj))
        return status, {}, json.dumps(obj).encode()

    def _error(self, status: int, message: str, kind: str = ""):
        return status, {}, json.dumps(self._error_body(status, message, kind)).encode()

    def _decide(self, batch: _Batch, done: int) -> dict[str, str]:
        """Fix each request's outcome at the end: the first ``done`` (in input order) were processed."""
        outcome: dict[str, str] = {}
        expire_all = self.expire is True and batch.cancel_at is None
        for i, (cid, body) in enumerate(zip(batch.custom_ids, batch.bodies)):
            if expire_all or (batch.cancel_at is None and _take(self.expire, cid)):
                outcome[cid] = "expired"
            elif i >= done:
                outcome[cid] = "canceled" if batch.cancel_at is not None else "expired"
            elif _take(self.fail_ids, cid):
                outcome[cid] = "fail"
            else:
                refusal = self._refusal(body)
                outcome[cid] = f"refused:{refusal}" if refusal else "ok"
        return outcome

    def _refusal(self, body: dict) -> str | None:
        return None

    def _order(self, items: list) -> list:
        return list(reversed(items)) if self.shuffled else list(items)

    def _schema(self, body: dict) -> dict | None:
        return None

    def _answer(self, prompt: str, body: dict) -> str:
        text = self.reply(prompt, body)
        schema = self._schema(body) if self.schemas else None
        return structured_reply(text, schema) if schema else text


# ==== OpenAI: Files + Batches ================================================================================


class FakeOpenAIBatch(_FakeBase):
    """OpenAI's Files and Batches API (and /v1/chat/completions, counted in ``chat_calls``, for a client that
    falls back to live calls). Point ``openai.OpenAI(base_url=fake.base, api_key=...)`` at it.

    Routes: POST /v1/files (multipart: file, purpose), GET /v1/files, GET|DELETE /v1/files/{id},
    GET /v1/files/{id}/content; POST|GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel.
    Status per poll (N = polls_to_finish): validating at creation, in_progress, finalizing at poll N-1 (N >= 3),
    then completed / expired / failed at poll N; a cancel answers cancelling and the next poll cancelled.
    ``files`` holds every file {id: (FileObject dict, bytes)}; ``deleted_files`` the ids deleted."""

    endpoints = ("/v1/chat/completions",)
    create_path = "/v1/batches"

    def __init__(self, reply: Callable | None = None, **kwargs) -> None:
        super().__init__(reply, **kwargs)
        self.files: dict[str, tuple[dict, bytes]] = {}
        self.deleted_files: list[str] = []
        self.chat_calls = 0

    def _error_body(self, status: int, message: str, kind: str = "") -> dict:
        kind = kind or {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}.get(
            status, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _dispatch(self, method: str, path: str, query: dict, headers: dict, raw: bytes):
        auth = headers.get("authorization", "")
        self.auth.add(auth)
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return self._error(401, "You didn't provide an API key.")
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            return self._error(404, f"Invalid URL ({method} {path})")
        parts = parts[1:]
        if parts == ["files"] and method == "POST":
            return self._upload(headers, raw)
        if parts == ["files"] and method == "GET":
            return self._json(200, {"object": "list", "has_more": False,
                                    "data": [f for f, _ in reversed(self.files.values())]}, "file_list")
        if len(parts) == 2 and parts[0] == "files":
            if parts[1] not in self.files:
                return self._error(404, f"No such File object: {parts[1]}")
            if method == "DELETE":
                self.files.pop(parts[1])
                self.deleted_files.append(parts[1])
                return self._json(200, {"id": parts[1], "object": "file", "deleted": True}, "file_deleted")
            return self._json(200, self.files[parts[1]][0], "file")
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and method == "GET":
            if parts[1] not in self.files:
                return self._error(404, f"No such File object: {parts[1]}")
            data = self.files[parts[1]][1]
            return 200, {"Content-Type": "application/octet-stream"}, data
        if parts == ["batches"] and method == "POST":
            return self._create(raw)
        if parts == ["batches"] and method == "GET":
            listed = [self._view(b) for b in reversed(self.batches.values())]
            if "after" in query:
                ids = [b["id"] for b in listed]
                listed = listed[ids.index(query["after"]) + 1:] if query["after"] in ids else []
            limit = int(query.get("limit", 20))
            page = {"object": "list", "data": listed[:limit], "has_more": len(listed) > limit,
                    "first_id": listed[0]["id"] if listed else None,
                    "last_id": listed[:limit][-1]["id"] if listed else None}
            return self._json(200, page, "batch_list")
        if len(parts) in (2, 3) and parts[0] == "batches":
            batch = self.batches.get(parts[1])
            if batch is None:
                return self._error(404, f"No batch found with id '{parts[1]}'.")
            if len(parts) == 2 and method == "GET":
                return self._poll(batch)
            if parts[2:] == ["cancel"] and method == "POST":
                if batch.ended or batch.status in ("cancelling",):
                    return self._error(400, f"Cannot cancel a batch with status '{batch.status}'.")
                self.cancels += 1
                batch.cancel_at = batch.polls
                batch.status = "cancelling"
                batch.stamps["cancelling_at"] = time.time()
                return self._json(200, self._view(batch), "batch")
        if parts == ["chat", "completions"] and method == "POST":
            self.chat_calls += 1
            body = json.loads(raw)
            refusal = self._refusal(body)
            if refusal:
                return self._error(400, refusal)
            return self._json(200, self._completion(body), "chat_completion")
        return self._error(404, f"Invalid URL ({method} {path})")

    # ---- files ----

    def _upload(self, headers: dict, raw: bytes):
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._error(400, "Expected a multipart/form-data upload.")
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            return self._error(400, "Missing required parameter: 'file'.")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            return self._error(400, f"Invalid value for 'purpose': {purpose!r}.")
        self.files_created += 1
        filename, data = fields["file"]
        return self._json(200, self._store(data, filename or "upload", purpose), "file")

    def _store(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = _seq_id("file-", next(self._seq), 22)
        now = int(time.time())
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": now, "filename": filename,
               "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": now + 30 * 86400 if purpose.startswith("batch") else None}
        self.files[file_id] = (obj, data)
        return obj

    # ---- batches ----

    def _create(self, raw: bytes):
        body = json.loads(raw or b"{}")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                return self._error(400, f"Missing required parameter: '{key}'.")
        if body["completion_window"] != "24h":
            return self._error(400, "Invalid value for 'completion_window': only '24h' is supported.")
        if body["input_file_id"] not in self.files:
            return self._error(404, f"No such File object: {body['input_file_id']}")
        obj, data = self.files[body["input_file_id"]]
        if obj["purpose"] != "batch":
            return self._error(400, f"The file {obj['id']} has purpose '{obj['purpose']}', it must be 'batch'.")
        custom_ids, bodies, errors = [], [], []
        models = set()
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "line": number, "param": None,
                               "message": "This line is not parseable as valid JSON."})
                continue
            problem = None
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                problem = ("missing_required_parameter", "custom_id", "Missing required parameter: 'custom_id'.")
            elif item.get("method") != "POST":
                problem = ("invalid_value", "method", "The method must be 'POST'.")
            elif item.get("url") != body["endpoint"]:
                problem = ("invalid_url", "url", f"The url {item.get('url')!r} does not match the batch endpoint "
                                                 f"{body['endpoint']!r}.")
            elif not isinstance(item.get("body"), dict) or "model" not in item["body"] or \
                    not isinstance(item["body"].get("messages"), list):
                problem = ("invalid_request", "body", "The body must hold a model and a list of messages.")
            elif item["custom_id"] in custom_ids:
                problem = ("duplicate_custom_id", "custom_id",
                           f"The custom_id {item['custom_id']!r} is duplicated in the input file.")
            if problem:
                errors.append({"code": problem[0], "line": number, "param": problem[1], "message": problem[2]})
                continue
            custom_ids.append(item["custom_id"])
            bodies.append(item["body"])
            models.add(item["body"]["model"])
        if not custom_ids and not errors:
            errors.append({"code": "empty_file", "line": None, "param": None, "message": "The input file is empty."})
        if len(models) > 1:
            errors.append({"code": "mismatched_model", "line": None, "param": "model",
                           "message": f"A batch must use a single model; this file uses {sorted(models)}."})
        if self.fail_batch and not errors:
            errors.append({"code": "invalid_request", "line": 1, "param": None,
                           "message": "The batch failed validation (scripted)."})
        self.batches_created += 1
        batch = _Batch(_seq_id("batch_", next(self._seq)), custom_ids, bodies,
                       {"input_file_id": obj["id"], "endpoint": body["endpoint"],
                        "completion_window": body["completion_window"], "metadata": body.get("metadata"),
                        "model": next(iter(models)) if len(models) == 1 else None, "errors": errors})
        batch.status = "validating"
        self.batches[batch.id] = batch
        self.submitted.append(list(custom_ids))
        self.bodies.extend(bodies)
        self._advance(batch)
        return self._json(200, self._view(batch), "batch")

    def _advance(self, batch: _Batch) -> None:
        if batch.ended:
            return
        now = time.time()
        n = self.polls_to_finish
        if batch.meta["errors"]:
            if batch.polls >= 1 or n == 0:
                batch.status, batch.ended = "failed", True
                batch.stamps["failed_at"] = now
            return
        if batch.cancel_at is not None:
            if batch.polls > batch.cancel_at:
                done = len(batch.custom_ids) * min(batch.cancel_at, n) // max(n, 1)
                batch.outcome = self._decide(batch, done)
                batch.status, batch.ended = "cancelled", True
                batch.stamps["cancelled_at"] = now
                self._write(batch)
            return
        if batch.polls >= n:
            batch.outcome = self._decide(batch, len(batch.custom_ids))
            expired = any(kind == "expired" for kind in batch.outcome.values())
            batch.stamps.setdefault("in_progress_at", now)
            batch.stamps.setdefault("finalizing_at", now)
            batch.status, batch.ended = ("expired", True) if expired else ("completed", True)
            batch.stamps["expired_at" if expired else "completed_at"] = now
            self._write(batch)
        elif batch.polls >= 1:
            batch.status = "finalizing" if n >= 3 and batch.polls == n - 1 else "in_progress"
            batch.stamps.setdefault("in_progress_at", now)
            if batch.status == "finalizing":
                batch.stamps.setdefault("finalizing_at", now)

    def _write(self, batch: _Batch) -> None:
        """The output file (answered requests) and error file (failed, expired, cancelled), each when not empty."""
        out, err = [], []
        for n, (cid, body) in enumerate(zip(batch.custom_ids, batch.bodies)):
            kind = batch.outcome[cid]
            line_id = f"batch_req_{batch.id[-12:]}{n:012x}"
            request_id = f"req_{batch.id[-12:]}{n:020x}"
            if kind == "ok":
                batch.replies[cid] = self._completion(body)
                out.append({"id": line_id, "custom_id": cid, "error": None,
                            "response": {"status_code": 200, "request_id": request_id,
                                         "body": batch.replies[cid]}})
            elif kind == "fail" or kind.startswith("refused:"):
                status, kind_name, message = (500, "server_error", "The server had an error while processing your "
                                              "request. Sorry about that!") if kind == "fail" else \
                    (400, "invalid_request_error", kind.split(":", 1)[1])
                err.append({"id": line_id, "custom_id": cid, "error": None,
                            "response": {"status_code": status, "request_id": request_id,
                                         "body": {"error": {"message": message, "type": kind_name,
                                                            "param": None, "code": None}}}})
            else:
                code, message = ("batch_expired", "This request could not be executed before the completion "
                                 "window expired.") if kind == "expired" else \
                    ("batch_cancelled", "This request was not executed because the batch was cancelled.")
                err.append({"id": line_id, "custom_id": cid, "response": None,
                            "error": {"code": code, "message": message}})
        for line in out:
            self.sent.append(("output_line", line))
        for line in err:
            self.sent.append(("error_line", line))
        dump = lambda lines: "".join(json.dumps(x) + "\n" for x in self._order(lines)).encode()  # noqa: E731
        if out:
            batch.meta["output_file_id"] = self._store(dump(out), f"{batch.id}_output.jsonl", "batch_output")["id"]
        if err:
            batch.meta["error_file_id"] = self._store(dump(err), f"{batch.id}_error.jsonl", "batch_output")["id"]

    def _counts(self, batch: _Batch) -> dict:
        total = len(batch.custom_ids)
        if batch.meta["errors"]:
            return {"total": 0, "completed": 0, "failed": 0}
        if batch.outcome is None:
            polls = batch.polls if batch.cancel_at is None else batch.cancel_at
            done = total * min(polls, self.polls_to_finish) // max(self.polls_to_finish, 1) \
                if batch.status in ("in_progress", "finalizing", "cancelling") else 0
            return {"total": total, "completed": done, "failed": 0}
        completed = sum(kind == "ok" for kind in batch.outcome.values())
        failed = sum(kind == "fail" or kind.startswith("refused:") for kind in batch.outcome.values())
        return {"total": total, "completed": completed, "failed": failed}

    def _view(self, batch: _Batch) -> dict:
        stamps = {k: int(v) for k, v in batch.stamps.items()}
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
        for reply in batch.replies.values():
            usage["input_tokens"] += reply["usage"]["prompt_tokens"]
            usage["output_tokens"] += reply["usage"]["completion_tokens"]
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        errors = batch.meta["errors"] if batch.status == "failed" else None
        return {"id": batch.id, "object": "batch", "endpoint": batch.meta["endpoint"],
                "model": batch.meta["model"], "errors": {"object": "list", "data": errors} if errors else None,
                "input_file_id": batch.meta["input_file_id"], "completion_window": batch.meta["completion_window"],
                "status": batch.status, "output_file_id": batch.meta.get("output_file_id"),
                "error_file_id": batch.meta.get("error_file_id"), "created_at": int(batch.created),
                "in_progress_at": stamps.get("in_progress_at"), "expires_at": int(batch.created) + 86400,
                "finalizing_at": stamps.get("finalizing_at"), "completed_at": stamps.get("completed_at"),
                "failed_at": stamps.get("failed_at"), "expired_at": stamps.get("expired_at"),
                "cancelling_at": stamps.get("cancelling_at"), "cancelled_at": stamps.get("cancelled_at"),
                "request_counts": self._counts(batch), "usage": usage, "metadata": batch.meta["metadata"]}

    # ---- replies ----

    def _refusal(self, body: dict) -> str | None:
        if REASONING.match(body.get("model", "")) and body.get("temperature", 1) != 1:
            return (f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                    f"Only the default (1) value is supported.")
        return None

    def _schema(self, body: dict) -> dict | None:
        fmt = body.get("response_format") or {}
        return fmt["json_schema"]["schema"] if fmt.get("type") == "json_schema" else None

    def _completion(self, body: dict) -> dict:
        prompt = _last_user(body["messages"])
        text = self._answer(prompt, body)
        return {"id": "chatcmpl-" + format(abs(hash((prompt, body.get("model")))) % 16 ** 12, "012x"),
                "object": "chat.completion", "created": int(time.time()), "model": body.get("model", "fake"),
                "system_fingerprint": None, "service_tier": "default",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text, "refusal": None}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                          "total_tokens": len(prompt.split()) + len(text.split())}}


# ==== Anthropic: Message Batches =============================================================================


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


class FakeAnthropicBatch(_FakeBase):
    """Anthropic's Message Batches API. Point ``anthropic.Anthropic(base_url=fake.base, api_key=...)`` at it
    (``fake.base`` has no /v1: the SDK's paths carry it).

    Routes: POST|GET /v1/messages/batches, GET|DELETE /v1/messages/batches/{id},
    POST /v1/messages/batches/{id}/cancel, GET /v1/messages/batches/{id}/results (the batch's absolute
    results_url once ended). Needs x-api-key (or a Bearer Authorization) and anthropic-version, as the service
    does. Status per poll: in_progress until poll N = polls_to_finish, then ended; a cancel answers canceling and
    the next poll ended, the requests not yet processed canceled. ``versions`` and ``betas`` hold the
    anthropic-version / anthropic-beta values seen."""

    with_v1 = False
    create_path = "/v1/messages/batches"

    def __init__(self, reply: Callable | None = None, **kwargs) -> None:
        super().__init__(reply, **kwargs)
        self.versions: set[str] = set()
        self.betas: set[str] = set()

    def _error_body(self, status: int, message: str, kind: str = "") -> dict:
        kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                        429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}

    def _dispatch(self, method: str, path: str, query: dict, headers: dict, raw: bytes):
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        self.auth.add(headers.get("x-api-key") or headers.get("authorization", ""))
        if headers.get("anthropic-beta"):
            self.betas.add(headers["anthropic-beta"])
        if not key:
            return self._error(401, "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        self.versions.add(headers["anthropic-version"])
        parts = path.strip("/").split("/")
        if parts[:3] != ["v1", "messages", "batches"]:
            return self._error(404, f"Not found: {method} {path}")
        parts = parts[3:]
        if not parts and method == "POST":
            return self._create(raw)
        if not parts and method == "GET":
            listed = [self._view(b) for b in reversed(self.batches.values())]
            if "after_id" in query:
                ids = [b["id"] for b in listed]
                listed = listed[ids.index(query["after_id"]) + 1:] if query["after_id"] in ids else []
            limit = int(query.get("limit", 20))
            page = listed[:limit]
            return self._json(200, {"data": page, "has_more": len(listed) > limit,
                                    "first_id": page[0]["id"] if page else None,
                                    "last_id": page[-1]["id"] if page else None}, "batch_list")
        batch = self.batches.get(parts[0])
        if batch is None:
            return self._error(404, f"No message batch found with id '{parts[0]}'.")
        if len(parts) == 1 and method == "GET":
            return self._poll(batch)
        if len(parts) == 1 and method == "DELETE":
            if not batch.ended:
                return self._error(400, "A message batch must finish processing before it can be deleted.")
            self.batches.pop(batch.id)
            return self._json(200, {"id": batch.id, "type": "message_batch_deleted"}, "batch_deleted")
        if parts[1:] == ["cancel"] and method == "POST":
            if not batch.ended and batch.cancel_at is None:
                self.cancels += 1
                batch.cancel_at = batch.polls
                batch.status = "canceling"
                batch.stamps["cancel_initiated_at"] = time.time()
            return self._json(200, self._view(batch), "batch")
        if parts[1:] == ["results"] and method == "GET":
            if not batch.ended:
                return self._error(404, f"Batch {batch.id} has not finished processing; its results are not ready.")
            lines = self._order(self._results(batch))
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            return 200, {"Content-Type": "application/binary"}, data
        return self._error(404, f"Not found: {method} {path}")

    def _create(self, raw: bytes):
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self.rejected += 1
            return self._error(400, "The request body is not valid JSON.")
        requests = body.get("requests")
        problem = None
        if not isinstance(requests, list) or not requests:
            problem = "requests: a non-empty list of requests is required"
        else:
            seen = set()
            for i, item in enumerate(requests):
                cid = item.get("custom_id") if isinstance(item, dict) else None
                params = item.get("params") if isinstance(item, dict) else None
                if not isinstance(cid, str) or not ANTHROPIC_CUSTOM_ID.match(cid):
                    problem = f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                elif cid in seen:
                    problem = f"requests.{i}.custom_id: Duplicate custom_id {cid!r}"
                elif not isinstance(params, dict):
                    problem = f"requests.{i}.params: Field required"
                else:
                    for field, kind in (("model", str), ("max_tokens", int), ("messages", list)):
                        if not isinstance(params.get(field), kind):
                            problem = f"requests.{i}.params.{field}: Field required"
                            break
                if problem:
                    break
                seen.add(cid)
        if problem is None and self.fail_batch:
            problem = "The message batch was refused (scripted)."
        if problem:
            self.rejected += 1
            return self._error(400, problem)
        self.batches_created += 1
        batch = _Batch(_seq_id("msgbatch_", next(self._seq)), [r["custom_id"] for r in requests],
                       [r["params"] for r in requests], {})
        batch.status = "in_progress"
        self.batches[batch.id] = batch
        self.submitted.append(list(batch.custom_ids))
        self.bodies.extend(batch.bodies)
        self._advance(batch)
        return self._json(200, self._view(batch), "batch")

    def _advance(self, batch: _Batch) -> None:
        if batch.ended:
            return
        n = self.polls_to_finish
        if batch.cancel_at is not None:
            if batch.polls > batch.cancel_at:
                done = len(batch.custom_ids) * min(batch.cancel_at, n) // max(n, 1)
                batch.outcome = self._decide(batch, done)
                batch.status, batch.ended = "ended", True
        elif batch.polls >= n:
            batch.outcome = self._decide(batch, len(batch.custom_ids))
            batch.status, batch.ended = "ended", True
        if batch.ended:
            batch.stamps["ended_at"] = time.time()
            for line in self._results(batch):
                self.sent.append(("result_line", line))

    def _results(self, batch: _Batch) -> list[dict]:
        lines = []
        for n, (cid, params) in enumerate(zip(batch.custom_ids, batch.bodies)):
            kind = batch.outcome[cid]
            if kind == "ok":
                if cid not in batch.replies:
                    batch.replies[cid] = self._message(params, f"{batch.id[-12:]}{n:012x}")
                result = {"type": "succeeded", "message": batch.replies[cid]}
            elif kind == "fail":
                result = {"type": "errored", "error": {"type": "error", "request_id": f"req_{batch.id[-12:]}{n:08x}",
                                                       "error": {"type": "api_error",
                                                                 "message": "Internal server error"}}}
            else:
                result = {"type": kind}
            lines.append({"custom_id": cid, "result": result})
        return lines

    def _counts(self, batch: _Batch) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.outcome is None:
            counts["processing"] = len(batch.custom_ids)
            return counts
        for kind in batch.outcome.values():
            counts[{"ok": "succeeded", "fail": "errored"}.get(kind, kind)] += 1
        return counts

    def _view(self, batch: _Batch) -> dict:
        return {"id": batch.id, "type": "message_batch", "processing_status": batch.status,
                "request_counts": self._counts(batch), "ended_at": _rfc3339(batch.stamps.get("ended_at")),
                "created_at": _rfc3339(batch.created), "expires_at": _rfc3339(batch.created + 86400),
                "archived_at": None, "cancel_initiated_at": _rfc3339(batch.stamps.get("cancel_initiated_at")),
                "results_url": f"{self.root}/v1/messages/batches/{batch.id}/results" if batch.ended else None}

    def _schema(self, params: dict) -> dict | None:
        fmt = (params.get("output_config") or {}).get("format") or params.get("output_format") or {}
        return fmt.get("schema") if fmt.get("type") == "json_schema" else None

    def _message(self, params: dict, suffix: str) -> dict:
        prompt = _last_user(params["messages"])
        text = self._answer(prompt, params)
        return {"id": f"msg_{suffix}", "type": "message", "role": "assistant", "model": params["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": len(prompt.split()), "output_tokens": len(text.split()),
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "batch"}}


# --- for tests of the batch path ----------------------------------------------------------------

def interrupt(monkeypatch, *, calls: int, journaled: bool):
    """Ctrl-C (a real SIGINT to this process) at the ``calls``-th batch the provider created: right after its
    id was journaled, or before (the provider made the batch; its id never reached the journal). Returns
    the undo."""
    from auto_evol.llm.batch import batcher as batch_mod

    original = batch_mod.BatchJournal.submitted
    seen = []

    def wrapped(self, *args, **kwargs):
        seen.append(1)
        if len(seen) != calls:
            return original(self, *args, **kwargs)
        if journaled:
            original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(batch_mod.BatchJournal, "submitted", wrapped)
    return lambda: monkeypatch.setattr(batch_mod.BatchJournal, "submitted", original)


if __name__ == "__main__":
    # python tests/fake_batch.py openai|anthropic URL_FILE [POLLS_TO_FINISH]: serve until killed, its base URL written.
    cls = FakeOpenAIBatch if sys.argv[1] == "openai" else FakeAnthropicBatch
    with cls(polls_to_finish=int(sys.argv[3]) if len(sys.argv) > 3 else 3) as fake:
        with open(sys.argv[2], "w") as fh:
            fh.write(fake.base)
        threading.Event().wait()
