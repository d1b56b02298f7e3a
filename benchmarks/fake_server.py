"""A loopback OpenAI-compatible chat server for benchmarks: fixed latency and an injected fault mix.

    python benchmarks/fake_server.py --port 8931 --latency 0.05 --faults 0.2

Faults, each an equal share of --faults: 429 with Retry-After, 500, a timeout (the reply never comes
within the client's limit), and garbage (a 200 whose body is not JSON, or has empty content). Plain
asyncio streams with keep-alive, so the server costs little next to the client being measured.
Replies follow tests/fake_openai.py's evolve world, so an evolve run through it is meaningful.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_openai import evolve_world  # noqa: E402


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: keep-alive\r\n\r\n").encode() + body


class Server:
    def __init__(self, latency: float, faults: float, timeout_sleep: float, seed: int) -> None:
        self.latency, self.faults, self.timeout_sleep = latency, faults, timeout_sleep
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                if self.latency:
                    await asyncio.sleep(self.latency)
                fault = None
                if self.rng.random() < self.faults:
                    fault = self.rng.choice(("429", "500", "timeout", "garbage"))
                    self.count(fault)
                if fault == "429":
                    writer.write(_response(429, b'{"error": {"message": "slow down"}}', "Retry-After: 0\r\n"))
                elif fault == "500":
                    writer.write(_response(500, b'{"error": {"message": "boom"}}'))
                elif fault == "timeout":
                    await asyncio.sleep(self.timeout_sleep)
                    writer.close()
                    return
                elif fault == "garbage":
                    if self.rng.random() < 0.5:
                        writer.write(_response(200, b"<html>not json"))
                    else:
                        writer.write(_response(200, json.dumps(_chat("")).encode()))
                else:
                    self.count("ok")
                    prompt = body["messages"][-1]["content"]
                    if isinstance(prompt, list):
                        prompt = "".join(part.get("text", "") for part in prompt)
                    writer.write(_response(200, json.dumps(_chat(evolve_world(prompt))).encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def _chat(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10}}


async def serve(port: int, latency: float, faults: float, timeout_sleep: float, seed: int, ready=None) -> None:
    server = Server(latency, faults, timeout_sleep, seed)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=1024)
    if ready is not None:
        ready.write_text(str(srv.sockets[0].getsockname()[1]))
    async with srv:
        await srv.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--faults", type=float, default=0.0)
    parser.add_argument("--timeout-sleep", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency, args.faults, args.timeout_sleep, args.seed, args.ready_file))


if __name__ == "__main__":
    main()
