"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests that need a real HTTP provider.

Run in a thread by tests, or as a process: ``python tests/fake_openai.py PORT_FILE`` writes its port.
It answers like the optimize tests' scripted world, deterministically per prompt, and remembers the
Authorization headers it saw.
"""
from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def world(prompt: str) -> str:
    """Methods carry a level L; question i evolves well when i % 4 <= L. The optimizer adds one level."""
    if prompt.startswith("You are reviewing"):
        return "Case 1 failed: no usable rewrite."
    if prompt.startswith("You improve"):
        level = int(re.search(r"level (\d+)", prompt.split("=== End of current method ===")[0]).group(1))
        return f"Optimized Method:\nRewrite (level {level + 1}) this: {{instruction}}\n"
    if prompt.startswith("Rewrite"):
        level = int(re.search(r"level (\d+)", prompt).group(1))
        i = int(re.search(r"number (\d+)", prompt).group(1))
        if i % 4 <= level:
            return f"#Finally Rewritten Instruction#: Question number {i}, with a twist?"
        return "I would rather not." if i % 2 == 0 else f"#Finally Rewritten Instruction#: Question number {i} [vague]"
    return evolve_world(prompt)


def _number(text: str) -> int:
    return int(re.search(r"number (\d+)", text).group(1))


def evolve_world(prompt: str) -> str:
    """The classic operators, the information-gain judge and answers, with failures fixed per question:
    i % 7 == 3 unreadable, i % 7 == 5 unchanged, i % 11 == 4 copies prompt words, i % 13 == 6 judged
    equal, i % 5 == 2 answered 'sorry' in a few words."""
    if prompt.startswith(("You are making an instruction harder", "You are writing new instructions")):
        instruction = prompt.split("#Instruction#:\n", 1)[1].split("\n\n#Finally Rewritten Instruction#:")[0]
        i = _number(instruction)
        if i % 7 == 3:
            return ""
        if i % 7 == 5:
            return instruction
        if i % 11 == 4:
            return f"In the #Rewritten Prompt#, {instruction}"
        return f"{instruction} Also explain each step."
    if prompt.startswith("Compare two instructions"):
        return "equal" if _number(prompt) % 13 == 6 else "not equal"
    if "[vague]" in prompt:
        return "Sure, which numbers do you mean?"
    if "explain each step" in prompt and _number(prompt) % 5 == 2:
        return "Sorry, I cannot."
    return "The answer is 4, found step by step."


REASONING = re.compile(r"^(o[1-9]|gpt-5)")


def structured_reply(text: str, schema: dict) -> str:
    """A schema-shaped reply: the world's text, its leading marker removed, in the last field."""
    keys = list(schema.get("properties", {}))
    result = re.sub(r"^\s*(?:#Finally Rewritten Instruction#:|Optimized Method:)\s*", "", text)
    return json.dumps({**{k: "-" for k in keys[:-1]}, keys[-1]: result})


class _Server(ThreadingHTTPServer):
    """A listen queue deep enough for a client's first burst (socketserver's default holds 5 connections:
    the rest were reset, and the client saw 'Server disconnected')."""
    request_queue_size = 512
    daemon_threads = True


class FakeOpenAI:
    """``schemas``: honour response_format json_schema (else ignore it, as some servers do);
    ``refuse_schemas``: answer 400 to any request with a response_format. Reasoning model names
    (o1..o9, gpt-5...) get 400 for any temperature other than 1, as OpenAI answers."""

    def __init__(self, latency: float | Callable[[dict], float] = 0.0, *, schemas: bool = False,
                 refuse_schemas: bool = False, basic_auth: str | None = None,
                 reply: Callable[[dict], str] | None = None) -> None:
        """``basic_auth`` ("user:password"): answer 401 to a request without that Basic Authorization,
        as a server behind a password does. Set ``failing`` to answer every request 500 (with
        Retry-After: 0, so a client's retries are quick) until it is cleared. ``latency``: seconds per
        request, or a function of the request's body; ``reply``: the reply's text from the request's
        body instead of ``world`` (the last message's text)."""
        self.latency = latency
        self.reply = reply
        self.failing = False
        self.basic_auth = basic_auth
        self.calls = 0
        self.auth: set[str] = set()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    outer.calls += 1
                    outer.auth.add(self.headers.get("Authorization", ""))
                    outer.bodies.append(body)
                wait = outer.latency(body) if callable(outer.latency) else outer.latency
                if wait:
                    time.sleep(wait)
                if outer.failing or (outer.basic_auth is not None and self.headers.get("Authorization") !=
                                     "Basic " + base64.b64encode(outer.basic_auth.encode()).decode()):
                    status = 500 if outer.failing else 401
                    data = json.dumps({"error": {"message": "upstream is down" if outer.failing else
                                                 "a password is needed"}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 500:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                    return
                refusal = None
                if refuse_schemas and "response_format" in body:
                    refusal = "response_format is not supported by this server"
                elif REASONING.match(body.get("model", "")) and body.get("temperature", 1) != 1:
                    refusal = (f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                               f"model. Only the default (1) value is supported.")
                if refusal:
                    data = json.dumps({"error": {"message": refusal, "type": "invalid_request_error"}}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                prompt = body["messages"][-1]["content"]
                if isinstance(prompt, list):
                    prompt = "".join(part.get("text", "") for part in prompt)
                text = outer.reply(body) if outer.reply is not None else world(prompt)
                fmt = body.get("response_format") or {}
                if schemas and fmt.get("type") == "json_schema":
                    text = structured_reply(text, fmt["json_schema"]["schema"])
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                   "total_tokens": len(prompt.split()) + len(text.split())}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client killed mid-reply is expected
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with FakeOpenAI(latency=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0) as fake:
        with open(sys.argv[1], "w") as fh:
            fh.write(fake.base)
        threading.Event().wait()


def compare_world(prompt: str) -> str:
    """``world`` plus a difficulty judge: 3 + 2 per twist or step request, 'not sure' for every tenth
    question (compare's tests)."""
    if prompt.startswith("Rate how difficult"):
        n = prompt.count("twist") + prompt.count("explain each step")
        return "not sure" if int(re.search(r"number (\d+)", prompt).group(1)) % 10 == 0 else str(min(10, 3 + 2 * n))
    return world(prompt)


_FILLER = ("add a second quantity that must be tracked; ask for the answer in another unit; require each "
           "intermediate result; add a condition on the order of events; ask to check the answer against the "
           "data; include a distractor that must be ignored; make the reader compare two options; ").split()


def e0_world(body: dict) -> str:
    """Replies like an evolver given e0 (``FakeOpenAI(reply=e0_world)``): four steps, a methods list and a
    plan of 60-160 words each and two rewrites of the instruction, a few hundred words in all, their
    lengths fixed per instruction (a hash of it); the information-gain judge answers 'equal' for one
    instruction in 9; answers run 40-240 words, one in 7 a short 'Sorry' (eliminated). Usage is counted
    in words, as FakeOpenAI does."""
    import hashlib

    def digest(text: str) -> int:   # not crc32: its bits follow the text's shared suffixes, phase to phase
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    prompt = body["messages"][-1]["content"]
    if isinstance(prompt, list):
        prompt = "".join(part.get("text", "") for part in prompt)
    if "#Finally Rewritten Instruction#" in prompt and "#Instruction#:" in prompt:
        instruction = prompt.rsplit("#Instruction#:", 1)[1].strip()
        h = digest(instruction)
        listed = " ".join((_FILLER * 8)[: 60 + h % 100])
        plan = " ".join((_FILLER * 8)[: 60 + (h >> 8) % 100])
        extra = " ".join(_FILLER[(h >> 16) % 10: (h >> 16) % 10 + 12])
        return (f"Step 1 #Methods List#:\n{listed}\n\nStep 2 #Plan#:\n{plan}\n\nStep 3 #Rewritten Instruction#:\n"
                f"{instruction} Also {extra}.\n\nStep 4 #Finally Rewritten Instruction#:\n{instruction} Then also {extra}.")
    h = digest(prompt)
    if prompt.startswith("Compare two instructions"):
        return "equal" if h % 9 == 0 else "not equal"
    if h % 7 == 0:
        return "Sorry, I cannot."
    return "The answer follows step by step. " + " ".join((_FILLER * 20)[: 40 + h % 200]) + " So the answer is 4."
