"""A loopback OpenAI-compatible chat server for benchmarks: fixed latency and an injected fault mix.

    python benchmarks/fake_server.py --port 8931 --latency 0.05 --faults 0.2

Faults, each an equal share of --faults: 429 with Retry-After, 500, a timeout (the reply never comes
within the client's limit), and garbage (a 200 whose body is not JSON, or has empty content). Plain
asyncio streams with keep-alive, so the server costs little next to the client being measured.
Replies follow tests/fake_openai.py's evolve world, so an evolve run through it is meaningful.

A rate limit, as a provider enforces one:

    python benchmarks/fake_server.py --rate 200 --latency 0.05 [--burst 10] [--retry-after seconds|none]

A token bucket of --rate requests per second holding at most --burst (default rate / 20: 50 ms worth)
decides at arrival; a request over it is answered at once with 429. Retry-After is what real servers
send, whole seconds: ``seconds`` (the default) rounds the bucket's real wait up (so "1" at any rate
above 1/s, as IONOS's gateway and OpenAI's documented integer header do), ``none`` leaves the header
out (nginx's limit_req, many gateways). Fractional seconds and retry-after-ms are not sent: clients
would be tested against a precision few servers give. Counts go to --stats-file on exit (SIGTERM).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fake_openai import evolve_world  # noqa: E402


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: keep-alive\r\n\r\n").encode() + body


class Bucket:
    """``rate`` tokens a second, at most ``burst`` kept; a request takes one or is refused."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.at = self.burst, time.monotonic()

    def take(self) -> float:
        """0 when the request may go, else the seconds until a token is there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Server:
    def __init__(self, latency: float, faults: float, timeout_sleep: float, seed: int,
                 rate: float | None = None, burst: float | None = None, retry_after: str = "seconds") -> None:
        self.latency, self.faults, self.timeout_sleep = latency, faults, timeout_sleep
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.bucket = Bucket(rate, burst if burst is not None else rate / 20) if rate else None
        self.retry_after = retry_after

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
                wait = self.bucket.take() if self.bucket is not None else 0.0
                if wait:
                    self.count("429")
                    header = f"Retry-After: {math.ceil(wait)}\r\n" if self.retry_after == "seconds" else ""
                    writer.write(_response(429, b'{"error": {"message": "rate limit reached"}}', header))
                    await writer.drain()
                    continue
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


async def serve(port: int, latency: float, faults: float, timeout_sleep: float, seed: int, ready=None,
                rate: float | None = None, burst: float | None = None, retry_after: str = "seconds",
                stats: Path | None = None) -> None:
    server = Server(latency, faults, timeout_sleep, seed, rate, burst, retry_after)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if ready is not None:
        ready.write_text(str(srv.sockets[0].getsockname()[1]))
    await stop.wait()
    srv.close()   # not waited on: clients may hold keep-alive connections open
    if stats is not None:
        stats.write_text(json.dumps(server.counts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--faults", type=float, default=0.0)
    parser.add_argument("--timeout-sleep", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--rate", type=float, help="requests per second the server takes (token bucket); 429 above")
    parser.add_argument("--burst", type=float, help="tokens the bucket holds at most [default: rate / 20]")
    parser.add_argument("--retry-after", choices=["seconds", "none"], default="seconds",
                        help="a 429's Retry-After: whole seconds, rounded up (default), or none sent")
    parser.add_argument("--stats-file", type=Path, help="write the counts of replies by kind here on exit")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency, args.faults, args.timeout_sleep, args.seed, args.ready_file,
                      args.rate, args.burst, args.retry_after, args.stats_file))


if __name__ == "__main__":
    main()
