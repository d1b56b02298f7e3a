"""Structured replies (schemas from a method's own format, fallback to free text) and the provider rules,
against loopback fakes that speak the OpenAI and Anthropic wire formats and enforce the providers' rules."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auto_evol.llm import backends, client as llm, providers, roles
from auto_evol.core.errors import UserError
from auto_evol.algorithm.method import Method, load
from auto_evol.llm.replies import ANALYSIS, OPTIMIZATION, evolution_format
from auto_evol.algorithm.trajectory import evolve_rounds
from auto_evol.storage.data import Item
from conftest import scripted_llm
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]


def test_the_evolvers_fields_come_from_the_methods_own_format():
    e0 = evolution_format(load("e0").text)
    assert [f.label for f in e0.fields] == ["Methods List", "Plan", "Rewritten Instruction",
                                           "Finally Rewritten Instruction"]
    assert e0.result.key == "finally_rewritten_instruction" and e0.result.header == "Step 4 #Finally Rewritten Instruction#:"
    renamed = ("Rewrite the problem.\nAnswer in this format:\nStep 1 #Ideas#:\nStep 2 #Draft#:\n"
               "Step 3 #Check For Lost Numbers#:\nStep 4 #Final Instruction#:\nStep 5 #Notes#:\n\n#Instruction#:\n")
    fmt = evolution_format(renamed)
    # The final instruction is always last, even when a step follows it; '#Instruction#:' is the input.
    assert [f.key for f in fmt.fields] == ["ideas", "draft", "check_for_lost_numbers", "notes", "final_instruction"]
    assert [f.label for f in evolution_format("Make it harder.").fields] == ["Finally Rewritten Instruction"]
    schema = e0.json_schema(max_tokens=512)
    assert schema["required"] == [f.key for f in e0.fields] and schema["additionalProperties"] is False
    lengths = [schema["properties"][f.key]["maxLength"] for f in e0.fields]
    assert lengths[-1] > sum(lengths[:-1])  # the result gets the room
    assert "maxLength" not in json.dumps(e0.json_schema())  # unbounded for hosted providers


def _world(prompt: str) -> str:
    return "Tom buys 3 apples at $2 each and 2 pears at $1 each. How much does he pay in cents?"


E0_TEXT_REPLY = ("Step 1 #Methods List#:\nadd items\nStep 2 #Plan#:\nadd pears\nStep 3 #Rewritten Instruction#:\n"
                 "Tom buys 3 apples and 2 pears.\nStep 4 #Finally Rewritten Instruction#:\n" + _world("") + "\n")


class TwoWayEngine:
    """Answers in JSON when a schema is asked for, in e0's text format otherwise (the same content)."""

    def __init__(self) -> None:
        self.formats = []

    def complete(self, request):
        from dspy import lm15

        fmt = request.config.response_format
        self.formats.append(fmt)
        if fmt:
            text = json.dumps({"methods_list": "add items", "plan": "add pears",
                               "rewritten_instruction": "Tom buys 3 apples and 2 pears.",
                               "finally_rewritten_instruction": _world("")})
        else:
            text = E0_TEXT_REPLY
        return lm15.Response(id=None, model=request.model, message=lm15.Message.assistant([lm15.TextPart(text)]),
                             finish_reason="stop", usage=lm15.Usage(input_tokens=1, output_tokens=1, total_tokens=2))

    def stream(self, request):
        from dspy import lm15

        return lm15.response_to_events(self.complete(request))


def _llm(engine, structured: bool):
    import dspy

    lm = dspy.LM("test/two-way", engine=engine, cache=False, num_retries=0)
    return llm.Llm(llm.RoleSettings(model="test/two-way"), lm, structured=structured)


def test_structured_and_free_text_replies_give_the_same_evolution():
    engine = TwoWayEngine()
    item = Item("1", "Tom buys 3 apples at $2 each. How much does he pay?")
    e0 = load("e0")
    structured = evolve_rounds(_llm(engine, True), e0, item, rounds=1)
    free = evolve_rounds(_llm(engine, False), e0, item, rounds=1)
    assert engine.formats[0]["type"] == "json_schema" and engine.formats[1] is None
    assert structured == free
    assert structured.stages[-1] == _world("") and structured.stopped is None


def test_the_reply_format_reaches_the_server_and_is_read_back():
    """Through the pooled OpenAI-compatible engine (the --api-base path, also the GGUF engine's body)."""
    with FakeOpenAI(schemas=True) as fake:
        role = backends.build(llm.RoleSettings("openai/m", fake.base, 0.0, None, 512), cache=False)
        method = Method("m", "Rewrite (level 1) this: {instruction}\n#Finally Rewritten Instruction#:\n")
        reply = role.ask(method.render("Question number 5?"), reply_format=evolution_format(method.text))
        body = fake.bodies[-1]
    sent = body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert list(sent["json_schema"]["schema"]["properties"]) == ["finally_rewritten_instruction"]
    assert sent["json_schema"]["schema"]["properties"]["finally_rewritten_instruction"]["maxLength"] > 0
    assert reply.fields == {"finally_rewritten_instruction": "Question number 5, with a twist?"}
    assert reply.text == "#Finally Rewritten Instruction#:\nQuestion number 5, with a twist?\n"


def test_a_refused_schema_falls_back_to_free_text_once_with_one_notice(capsys):
    with FakeOpenAI(refuse_schemas=True) as fake:
        role = backends.build(llm.RoleSettings("openai/m", fake.base, 0.0, None, 256), cache=False)
        fmt = evolution_format("Rewrite (level 1) this: {instruction}")
        first = role.ask("Rewrite (level 1) this: Question number 5?", reply_format=fmt)
        second = role.ask("Rewrite (level 1) this: Question number 4?", reply_format=fmt)
        sent = ["response_format" in b for b in fake.bodies]
    # Refused with bounds, refused without, then free text; the next call goes straight to free text.
    assert sent == [True, True, False, False]
    assert not role.structured and first.fields is None
    assert first.text.startswith("#Finally Rewritten Instruction#: Question number 5")
    assert second.text.startswith("#Finally Rewritten Instruction#: Question number 4")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "structured output refused" in err[0] and "free text" in err[0]
    assert role.notices == [err[0].removeprefix("note: ")]
    with FakeOpenAI(refuse_schemas=True) as fake:
        strict = backends.build(llm.RoleSettings("openai/m", fake.base, 0.0, None, 256, structured="on"), cache=False)
        with pytest.raises(UserError, match="structured output refused"):
            strict.ask("Rewrite (level 1) this: Question number 5?", reply_format=fmt)


def test_off_sends_no_schema():
    with FakeOpenAI(schemas=True) as fake:
        role = backends.build(llm.RoleSettings("openai/m", fake.base, 0.0, None, 256, structured="off"), cache=False)
        role.ask("Rewrite (level 1) this: Question number 5?", reply_format=ANALYSIS)
        assert "response_format" not in fake.bodies[-1]


@pytest.mark.parametrize("model, drops_top_p", [
    ("anthropic/claude-sonnet-4-5", True), ("anthropic/claude-sonnet-4-5-20250929", True),
    ("anthropic/claude-opus-4-1-20250805", True), ("anthropic/claude-opus-4-5", True),
    ("anthropic/claude-haiku-4-5", True), ("anthropic/claude-sonnet-4-6", True), ("anthropic/claude-opus-5", True),
    ("anthropic/claude-3-5-sonnet-20241022", False), ("anthropic/claude-sonnet-4-20250514", False),
    ("anthropic/claude-opus-4-20250514", False), ("openai/gpt-4o", False),
])
def test_models_that_refuse_temperature_with_top_p_keep_the_temperature(model, drops_top_p):
    settings, notices = providers.adapt(llm.OPTIMIZER_DEFAULTS.__class__(model, None, 0.6, 0.95, 2048))
    assert (settings.top_p is None) == drops_top_p and settings.temperature == 0.6
    assert len(notices) == drops_top_p


@pytest.mark.parametrize("model, reasoning", [
    ("openai/o3-mini", True), ("openai/o1", True), ("openai/o4-mini-2025-04-16", True), ("openai/gpt-5", True),
    ("openai/gpt-5-mini", True), ("openai/gpt-5.1", True), ("openai/gpt-5-chat-latest", False),
    ("openai/gpt-4o-mini", False), ("openai/gpt-4.1", False),
])
def test_reasoning_models_take_temperature_one_and_a_large_budget(model, reasoning):
    settings, notices = providers.adapt(llm.RoleSettings(model, None, 0.6, 0.95, 2048))
    if reasoning:
        assert (settings.temperature, settings.top_p, settings.max_tokens) == (1.0, None, providers.REASONING_MIN_TOKENS)
        assert len(notices) == 1 and "temperature 1" in notices[0]
    else:
        assert settings == llm.RoleSettings(model, None, 0.6, 0.95, 2048) and not notices


def test_a_reasoning_model_behind_a_server_that_enforces_the_rule_works_with_the_adapted_settings(capsys):
    with FakeOpenAI() as fake:
        raw = backends.build(llm.RoleSettings("openai/o3-mini", fake.base, 0.6, 0.95, 2048), cache=False, num_retries=0)
        with pytest.raises(llm.LLMError, match="temperature"):
            raw.ask("Rewrite (level 1) this: Question number 5?")
        (role,) = roles.build_roles((llm.RoleSettings("openai/o3-mini", fake.base, 0.6, 0.95, 2048),
                                   "--optimizer-model"), cache_dir=None, concurrency=1)
        role.ask("Rewrite (level 1) this: Question number 5?")
        body = fake.bodies[-1]
    assert body["temperature"] == 1.0 and "top_p" not in body and body["max_tokens"] >= 16000
    assert "reasoning model" in capsys.readouterr().err


class FakeAnthropic:
    """A Messages API server on 127.0.0.1 that enforces the recent models' rule (400 when temperature and
    top_p are both set), answers a JSON schema under output_config.format, and checks the key."""

    def __init__(self, key: str = "sk-ant-test") -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.bodies.append(body)
                if self.headers.get("x-api-key") != key:
                    return self._send(401, {"type": "error", "error": {"type": "authentication_error",
                                                                         "message": "invalid x-api-key"}})
                if "temperature" in body and "top_p" in body:
                    return self._send(400, {"type": "error", "error": {
                        "type": "invalid_request_error",
                        "message": "`temperature` and `top_p` cannot both be specified for this model. "
                                   "Please use only one."}})
                schema = (body.get("output_config") or {}).get("format", {}).get("schema")
                text = json.dumps({k: "ready" for k in schema["properties"]}) if schema else "ready"
                self._send(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                                 "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def anthropic(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    fake = FakeAnthropic()
    yield fake
    fake.close()


def test_the_dspy_provider_path_meets_the_anthropic_rule_and_adapts(anthropic, capsys, tmp_path):
    settings = llm.RoleSettings("anthropic/claude-sonnet-4-5", anthropic.base, 0.6, 0.95, 256)
    raw = backends.build(settings, cache=False, num_retries=0)
    with pytest.raises(llm.LLMError, match="cannot both be specified"):
        raw.ask("hello")
    (role,) = roles.build_roles((settings, "--optimizer-model"), cache_dir=str(tmp_path), concurrency=1)
    reply = role.ask("Name the failed cases.", reply_format=ANALYSIS)
    sent = anthropic.bodies[-1]
    assert sent["temperature"] == 0.6 and "top_p" not in sent
    assert sent["output_config"]["format"]["schema"]["required"] == ["failed_cases", "method_changes"]
    assert reply.fields == {"failed_cases": "ready", "method_changes": "ready"}
    assert "kept temperature 0.6, dropped top_p" in capsys.readouterr().err
    # The start-of-run check is kept per model: a second build makes no probe call.
    calls = len(anthropic.bodies)
    roles.build_roles((settings, "--optimizer-model"), cache_dir=str(tmp_path), concurrency=1)
    assert len(anthropic.bodies) == calls and (tmp_path / "checks.json").is_file()


def _cli(args, env_extra, cwd):
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_check_reports_each_role_in_one_line(anthropic, tmp_path):
    model = "anthropic/claude-sonnet-4-5"
    out = _cli(["check", "--evol-model", model, "--optimizer-model", model, "--api-base", anthropic.base],
               {"ANTHROPIC_API_KEY": "sk-ant-test"}, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == [
        f"evol {model}: reachable yes, key accepted yes, structured output supported, sampling parameters accepted",
        f"optimizer {model}: this model takes temperature or top_p, not both: kept temperature 0.6, dropped top_p 0.95",
        f"optimizer {model}: reachable yes, key accepted yes, structured output supported, sampling parameters accepted",
    ]
    out = _cli(["check", "--evol-model", model, "--optimizer-model", model, "--api-base", anthropic.base],
               {"ANTHROPIC_API_KEY": "sk-ant-wrong"}, tmp_path)
    assert out.returncode == 2 and "key accepted no" in out.stdout and "Traceback" not in out.stderr
    assert "sk-ant-wrong" not in out.stdout + out.stderr
