"""The batch fakes speak the wire formats the real ``openai`` and ``anthropic`` SDKs send and parse.

Each test drives a fake with the real SDK client, and ``strict`` validates every object and result line the fake
sent against the SDK's own pydantic models (the SDKs build their models leniently, so a wrong shape would
otherwise pass unnoticed). Warnings are errors here.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys

import anthropic
import openai
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

sys.path.insert(0, os.path.dirname(__file__))
from fake_batch import FakeAnthropicBatch, FakeOpenAIBatch  # noqa: E402
from fake_openai import world  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error")

PROMPTS = {f"q{i}": f"Rewrite (level 1) this: Question number {i}" for i in range(5)}


def strict(fake) -> None:
    """Every JSON the fake answered validates against the SDK's models (not just the lenient construct)."""
    assert fake.sent
    for kind, obj in fake.sent:
        if kind == "batch":
            (Batch if isinstance(fake, FakeOpenAIBatch) else MessageBatch).model_validate(obj)
        elif kind == "batch_list":
            for item in obj["data"]:
                (Batch if isinstance(fake, FakeOpenAIBatch) else MessageBatch).model_validate(item)
        elif kind == "file":
            FileObject.model_validate(obj)
        elif kind in ("output_line", "chat_completion"):
            ChatCompletion.model_validate(obj["response"]["body"] if kind == "output_line" else obj)
        elif kind == "error_line":
            assert set(obj) == {"id", "custom_id", "response", "error"}
            if obj["response"] is None:
                assert set(obj["error"]) == {"code", "message"}
            else:
                assert obj["error"] is None and set(obj["response"]["body"]["error"]) >= {"message", "type"}
        elif kind == "result_line":
            MessageBatchIndividualResponse.model_validate(obj)


# ==== OpenAI ================================================================================================


def jsonl(prompts: dict[str, str], model: str = "gpt-4o-mini", **extra) -> bytes:
    return "".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                                                     {"role": "user", "content": p}], **extra}})
                   + "\n" for cid, p in prompts.items()).encode()


def submit(client: openai.OpenAI, data: bytes) -> Batch:
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(data)
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"run": "test"})


def lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    return {row["custom_id"]: row for row in map(json.loads, client.files.content(file_id).text.splitlines())}


def reply_text(row: dict) -> str:
    return ChatCompletion.model_validate(row["response"]["body"]).choices[0].message.content


def test_openai_batch_runs_to_completion_one_state_per_poll():
    with FakeOpenAIBatch(polls_to_finish=3) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = submit(client, jsonl(PROMPTS))
        assert batch.status == "validating" and batch.metadata == {"run": "test"}
        assert batch.request_counts.total == 5 and batch.output_file_id is None
        statuses = [client.batches.retrieve(batch.id).status for _ in range(4)]
        assert statuses == ["in_progress", "finalizing", "completed", "completed"]
        done = client.batches.retrieve(batch.id)
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
        assert done.error_file_id is None and done.completed_at and done.usage.total_tokens > 0
        out = lines(client, done.output_file_id)
        assert {cid: reply_text(row) for cid, row in out.items()} == {cid: world(p) for cid, p in PROMPTS.items()}
        assert all(row["response"]["status_code"] == 200 and row["error"] is None for row in out.values())
        assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert fake.batches_created == 1 and fake.files_created == 1 and fake.polls == 5
        assert fake.submitted == [list(PROMPTS)] and fake.batches[batch.id].custom_ids == list(PROMPTS)
        assert fake.auth == {"Bearer test"} and fake.chat_calls == 0
        client.files.delete(done.output_file_id)
        assert fake.deleted_files == [done.output_file_id]
        strict(fake)


def test_openai_results_are_not_in_input_order_and_the_reply_sees_the_body():
    seen = []
    with FakeOpenAIBatch(lambda prompt, body: seen.append(body["model"]) or prompt.upper(),
                         polls_to_finish=1) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = submit(client, jsonl({"a": "x", "b": "y"}))
        raw = client.files.content(client.batches.retrieve(batch.id).output_file_id).text
        assert [json.loads(line)["custom_id"] for line in raw.splitlines()] == ["b", "a"]
        assert [reply_text(json.loads(line)) for line in raw.splitlines()] == ["Y", "X"]
        assert seen == ["gpt-4o-mini"] * 2
        strict(fake)


def test_openai_expired_batch_puts_unfinished_requests_in_the_error_file():
    with FakeOpenAIBatch(polls_to_finish=1, expire={"q1", "q3"}) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = client.batches.retrieve(submit(client, jsonl(PROMPTS)).id)
        assert batch.status == "expired" and batch.expired_at
        assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
        assert set(lines(client, batch.output_file_id)) == {"q0", "q2", "q4"}
        errors = lines(client, batch.error_file_id)
        assert set(errors) == {"q1", "q3"}
        assert all(row["response"] is None and row["error"]["code"] == "batch_expired" for row in errors.values())
        # expire=True: the whole batch lapses, nothing answered, no output file.
        fake.expire = True
        lapsed = client.batches.retrieve(submit(client, jsonl(PROMPTS)).id)
        assert lapsed.status == "expired" and lapsed.output_file_id is None
        assert set(lines(client, lapsed.error_file_id)) == set(PROMPTS)
        # a dict expires each id only so many times: a resubmission then completes.
        fake.expire = {"q0": 1}
        first = client.batches.retrieve(submit(client, jsonl({"q0": "hi"})).id)
        second = client.batches.retrieve(submit(client, jsonl({"q0": "hi"})).id)
        assert (first.status, second.status) == ("expired", "completed") and fake.expire == {"q0": 0}
        assert fake.batches_created == 4 and fake.submitted[-2:] == [["q0"], ["q0"]]
        strict(fake)


def test_openai_per_request_failures_go_to_the_error_file():
    with FakeOpenAIBatch(polls_to_finish=1, fail_ids={"q2"}) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = client.batches.retrieve(submit(client, jsonl(PROMPTS)).id)
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 4, 1)
        error = lines(client, batch.error_file_id)["q2"]
        assert error["error"] is None and error["response"]["status_code"] == 500
        assert error["response"]["body"]["error"]["type"] == "server_error"
        assert "q2" not in lines(client, batch.output_file_id)
        # a reasoning model refuses a temperature other than 1, per request, as the live API does.
        refused = client.batches.retrieve(submit(client, jsonl({"r": "hi"}, model="o3-mini", temperature=0)).id)
        row = lines(client, refused.error_file_id)["r"]
        assert refused.output_file_id is None and row["response"]["status_code"] == 400
        strict(fake)


@pytest.mark.parametrize("data, code", [
    (b'{"custom_id": "a", "method": "POST"\n', "invalid_json_line"),
    (jsonl({"a": "x"}) + jsonl({"a": "y"}), "duplicate_custom_id"),
    (jsonl({"a": "x"}) + jsonl({"b": "y"}, model="gpt-4o"), "mismatched_model"),
    (jsonl({"a": "x"}).replace(b"/v1/chat/completions", b"/v1/embeddings"), "invalid_url"),
])
def test_openai_malformed_input_fails_validation(data, code):
    with FakeOpenAIBatch(polls_to_finish=3) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = submit(client, data)
        assert batch.status == "validating"
        failed = client.batches.retrieve(batch.id)
        assert failed.status == "failed" and failed.failed_at and failed.output_file_id is None
        assert failed.errors.data[0].code == code and failed.error_file_id is None
        strict(fake)


def test_openai_fail_batch_and_bad_creates():
    with FakeOpenAIBatch(polls_to_finish=2, fail_batch=True) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        failed = client.batches.retrieve(submit(client, jsonl(PROMPTS)).id)
        assert failed.status == "failed" and failed.errors.data[0].message
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
        other = client.files.create(file=("x.jsonl", jsonl(PROMPTS)), purpose="user_data")
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
        assert fake.batches_created == 1 and fake.files_created == 2
        strict(fake)


def test_openai_cancel_keeps_what_was_done():
    with FakeOpenAIBatch(polls_to_finish=4) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        batch = submit(client, jsonl({f"c{i}": f"Question number {i}" for i in range(4)}))
        assert client.batches.retrieve(batch.id).request_counts.completed == 1     # one poll of four
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        assert cancelling.request_counts.completed == 1
        cancelled = client.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at
        assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (1, 0)
        assert set(lines(client, cancelled.output_file_id)) == {"c0"}
        errors = lines(client, cancelled.error_file_id)
        assert set(errors) == {"c1", "c2", "c3"}
        assert {row["error"]["code"] for row in errors.values()} == {"batch_cancelled"}
        with pytest.raises(openai.BadRequestError):
            client.batches.cancel(batch.id)
        assert fake.cancels == 1
        strict(fake)


def test_openai_zero_polls_structured_replies_and_outage():
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}}
    with FakeOpenAIBatch(polls_to_finish=0, schemas=True) as fake:
        client = openai.OpenAI(base_url=fake.base, api_key="test", max_retries=0)
        data = jsonl({"s": "Rewrite (level 0) this: Question number 4"},
                     response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        batch = submit(client, data)
        assert batch.status == "completed"
        assert json.loads(reply_text(lines(client, batch.output_file_id)["s"])) == {
            "reasoning": "-", "answer": "Question number 4, with a twist?"}
        fake.failing = True
        with pytest.raises(openai.InternalServerError):
            client.batches.retrieve(batch.id)
        fake.failing = False
        assert openai.OpenAI(base_url=fake.base, api_key="test", max_retries=2).batches.retrieve(batch.id).id
        strict(fake)


def test_openai_async_client():
    async def main(fake):
        async with openai.AsyncOpenAI(base_url=fake.base, api_key="test", max_retries=0) as client:
            upload = await client.files.create(file=("b.jsonl", jsonl(PROMPTS)), purpose="batch")
            batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                batch = await client.batches.retrieve(batch.id)
            content = await client.files.content(batch.output_file_id)
            return {json.loads(x)["custom_id"]: reply_text(json.loads(x)) for x in content.text.splitlines()}

    with FakeOpenAIBatch(polls_to_finish=2) as fake:
        assert asyncio.run(main(fake)) == {cid: world(p) for cid, p in PROMPTS.items()}
        strict(fake)


# ==== Anthropic =============================================================================================


def requests(prompts: dict[str, str], **extra) -> list[dict]:
    return [{"custom_id": cid, "params": {"model": "claude-haiku-4-5", "max_tokens": 256,
                                          "messages": [{"role": "user", "content": [{"type": "text", "text": p}]}],
                                          **extra}}
            for cid, p in prompts.items()]


def results(client: anthropic.Anthropic, batch_id: str) -> dict:
    return {row.custom_id: row.result for row in client.messages.batches.results(batch_id)}


def test_anthropic_batch_runs_to_completion():
    with FakeAnthropicBatch(polls_to_finish=2) as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test", max_retries=0)
        batch = client.messages.batches.create(requests=requests(PROMPTS))
        assert batch.processing_status == "in_progress" and batch.id.startswith("msgbatch_")
        assert batch.request_counts.processing == 5 and batch.results_url is None
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)     # one poll of two
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.ended_at and ended.results_url.startswith(fake.root)
        assert ended.request_counts.succeeded == 5 and ended.request_counts.processing == 0
        got = results(client, batch.id)
        assert {cid: r.type for cid, r in got.items()} == dict.fromkeys(PROMPTS, "succeeded")
        assert {cid: r.message.content[0].text for cid, r in got.items()} == {
            cid: world(p) for cid, p in PROMPTS.items()}
        assert [b.id for b in client.messages.batches.list()] == [batch.id]
        assert fake.batches_created == 1 and fake.submitted == [list(PROMPTS)]
        # this SDK sends the key as a Bearer Authorization (older ones as x-api-key: both are accepted)
        assert fake.auth <= {"Bearer test", "test"} and len(fake.auth) == 1 and len(fake.versions) == 1
        assert fake.bodies[0]["max_tokens"] == 256
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        strict(fake)


def test_anthropic_expired_errored_and_resubmitted():
    with FakeAnthropicBatch(polls_to_finish=1, expire={"q1": 1}, fail_ids={"q2"}) as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test", max_retries=0)
        batch = client.messages.batches.retrieve(client.messages.batches.create(requests=requests(PROMPTS)).id)
        counts = batch.request_counts
        assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (3, 1, 1, 0)
        got = results(client, batch.id)
        assert (got["q1"].type, got["q2"].type, got["q0"].type) == ("expired", "errored", "succeeded")
        assert got["q2"].error.error.type == "api_error" and got["q2"].error.type == "error"
        again = client.messages.batches.create(requests=requests({"q1": PROMPTS["q1"]}))
        assert results(client, client.messages.batches.retrieve(again.id).id)["q1"].type == "succeeded"
        fake.expire = True
        lapsed = client.messages.batches.retrieve(client.messages.batches.create(requests=requests(PROMPTS)).id)
        assert lapsed.request_counts.expired == 5
        assert fake.batches_created == 3 and fake.submitted[1] == ["q1"]
        strict(fake)


def test_anthropic_cancel():
    with FakeAnthropicBatch(polls_to_finish=4) as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test", max_retries=0)
        batch = client.messages.batches.create(requests=requests({f"c{i}": f"Question number {i}" for i in range(4)}))
        client.messages.batches.retrieve(batch.id)
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (1, 3)
        assert {cid: r.type for cid, r in results(client, batch.id).items()} == {
            "c0": "succeeded", "c1": "canceled", "c2": "canceled", "c3": "canceled"}
        assert client.messages.batches.cancel(batch.id).processing_status == "ended" and fake.cancels == 1
        strict(fake)


@pytest.mark.parametrize("bad", [
    requests({"has.dot": "x"}), requests({"x" * 65: "x"}), requests({"a": "x"}) + requests({"a": "y"}),
    [{"custom_id": "a", "params": {"model": "claude-haiku-4-5", "messages": []}}], [],
])
def test_anthropic_refuses_malformed_batches(bad):
    with FakeAnthropicBatch() as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test", max_retries=0)
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.create(requests=bad)
        assert fake.batches_created == 0 and fake.rejected == 1


def test_anthropic_fail_batch_structured_and_headers():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    with FakeAnthropicBatch(polls_to_finish=0, schemas=True, fail_batch=True) as fake:
        client = anthropic.Anthropic(base_url=fake.base, api_key="test", max_retries=0,
                                     default_headers={"anthropic-beta": "message-batches-2024-09-24"})
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.create(requests=requests(PROMPTS))
        fake.fail_batch = False
        batch = client.messages.batches.create(requests=requests(
            {"s": "Rewrite (level 0) this: Question number 4"},
            output_config={"format": {"type": "json_schema", "schema": schema}}))
        assert batch.processing_status == "ended"
        assert json.loads(results(client, batch.id)["s"].message.content[0].text) == {
            "answer": "Question number 4, with a twist?"}
        assert fake.betas == {"message-batches-2024-09-24"}
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve("msgbatch_nope")
        strict(fake)


def test_anthropic_async_client():
    async def main(fake):
        async with anthropic.AsyncAnthropic(base_url=fake.base, api_key="test", max_retries=0) as client:
            batch = await client.messages.batches.create(requests=requests(PROMPTS))
            while batch.processing_status != "ended":
                batch = await client.messages.batches.retrieve(batch.id)
            return {row.custom_id: row.result.message.content[0].text
                    async for row in await client.messages.batches.results(batch.id)}

    with FakeAnthropicBatch(polls_to_finish=2) as fake:
        assert asyncio.run(main(fake)) == {cid: world(p) for cid, p in PROMPTS.items()}
        strict(fake)
