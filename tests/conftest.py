"""Shared test helpers: a scripted LM that runs behind DSPy exactly like a real engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class ScriptedEngine:
    """A DSPy engine whose reply is ``script(prompt)`` for the conversation's last turn; keeps every
    prompt it really saw, every whole conversation, and the response formats asked for."""

    def __init__(self, script: Callable[[str], str]) -> None:
        self.script = script
        self.prompts: list[str] = []
        self.conversations: list[list[tuple[str, str]]] = []
        self.formats: list[dict | None] = []

    def complete(self, request):
        from dspy import lm15

        prompt = request.messages[-1].text or ""
        self.prompts.append(prompt)
        self.conversations.append([(m.role, m.text or "") for m in request.messages])
        self.formats.append(request.config.response_format)
        text = self.script(prompt)
        return lm15.Response(id=None, model=request.model, message=lm15.Message.assistant([lm15.TextPart(text)]),
                             finish_reason="stop", usage=lm15.Usage(input_tokens=len(prompt.split()),
                                                                    output_tokens=len(text.split()),
                                                                    total_tokens=0))

    def stream(self, request):
        from dspy import lm15

        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class AsyncScripted:
    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    async def complete(self, request):
        return self.engine.complete(request)

    async def stream(self, request):
        for event in self.engine.stream(request):
            yield event

    async def aclose(self) -> None:
        pass


def scripted_llm(script: Callable[[str], str], *, temperature: float = 0.0, name: str = "scripted",
                 cache: bool = False):
    """An auto_evol Llm over a scripted engine (DSPy's cache off unless asked for)."""
    import dspy

    from auto_evol.llm import client as llm

    engine = ScriptedEngine(script)
    lm = dspy.LM(f"test/{name}", engine=engine, async_engine=AsyncScripted(engine), cache=cache, num_retries=0)
    return llm.Llm(llm.RoleSettings(model=f"test/{name}", temperature=temperature), lm), engine


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder with MLflow's store inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def project(workdir):
    """A folder for optimize runs: 40 questions (``prompt`` column) and ``init.md``; a test module may
    define its own ``project`` instead."""
    (workdir / "questions.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"}) for i in range(40)))
    (workdir / "init.md").write_text("Rewrite (level 0) this: {instruction}\n")   # fake_openai's world
    return workdir


@pytest.fixture
def compare_project(workdir):
    """60 questions and two methods of known level, for compare."""
    (workdir / "q.jsonl").write_text("\n".join(json.dumps({"id": i, "prompt": f"Question number {i}?"})
                                               for i in range(60)))
    for level in (0, 2):
        (workdir / f"level{level}.md").write_text(f"Rewrite (level {level}) this: {{instruction}}\n")
    return workdir


def cli(args, cwd):
    """``auto-evol ARGS`` in a subprocess, as a user without API keys runs it (the project's own store)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MLFLOW_TRACKING_URI")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return subprocess.run([sys.executable, "-m", "auto_evol", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
