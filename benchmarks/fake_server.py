"""A loopback OpenAI-compatible chat server for benchmarks: fixed latency and an injected fault mix.

    python benchmarks/fake_server.py --port 8931 --latency 0.05 --faults 0.2

Faults, each an equal share of --faults: 429 with Retry-After, 500, a timeout (the reply never comes
within the client's limit), and garbage (a 200 whose body is not JSON, or has empty content). Plain
asyncio streams with keep-alive, so the server costs little next to the client being measured.
Replies follow tests/fake_openai.py's evolve world, so an evolve run through it is meaningful.

A limit, as providers and gateways enforce one (``--limiter``, each decided at a request's arrival;
a request over it is answered at once with 429, or the --refuse-status):

    python benchmarks/fake_server.py --rate 200 --latency 0.05 [--limiter bucket|fixed|sliding] [--retry-after seconds|none]
    python benchmarks/fake_server.py --limiter inflight --max-in-flight 10 --refuse-status 503

- ``bucket`` (the default): a token bucket of --rate requests a second holding at most --burst
  (default rate / 20: 50 ms worth); OpenAI's and most providers' documented shape.
- ``fixed``: at most --rate requests in each whole second of the clock (Redis INCR + EXPIRE
  counters, many API gateways); the window's first requests may come all at once.
- ``sliding``: at most --rate requests in any second (a log of the last second's arrivals: nginx-like
  gateways, Cloudflare, Envoy's local limits).
- ``inflight``: at most --max-in-flight requests being answered at once (a local server's slots,
  a proxy's connection cap).

Retry-After is what real servers send, whole seconds: ``seconds`` (the default) rounds the real wait
up (so "1" at any rate above 1/s, as IONOS's gateway and OpenAI's documented integer header do; an
in-flight cap, which cannot know its wait, sends "1"), ``none`` leaves the header out (nginx's
limit_req, many gateways). Fractional seconds and retry-after-ms are not sent: clients would be
tested against a precision few servers give. Counts go to --stats-file on exit (SIGTERM).
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


class FixedWindow:
    """At most ``rate`` requests in each whole second of the clock."""

    def __init__(self, rate: float) -> None:
        self.rate, self.window, self.count = int(rate), None, 0

    def take(self) -> float:
        now = time.time()
        window = math.floor(now)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count < self.rate:
            self.count += 1
            return 0.0
        return window + 1 - now


class SlidingWindow:
    """At most ``rate`` requests in any second (the log of the last second's admitted arrivals)."""

    def __init__(self, rate: float) -> None:
        from collections import deque

        self.rate, self.log = int(rate), deque()

    def take(self) -> float:
        now = time.monotonic()
        while self.log and self.log[0] <= now - 1.0:
            self.log.popleft()
        if len(self.log) < self.rate:
            self.log.append(now)
            return 0.0
        return self.log[0] + 1.0 - now


class InFlight:
    """At most ``size`` requests being answered at once; ``done`` when one has been answered."""

    def __init__(self, size: int) -> None:
        self.size, self.busy = size, 0

    def take(self) -> float:
        if self.busy < self.size:
            self.busy += 1
            return 0.0
        return 1.0

    def done(self) -> None:
        self.busy -= 1


def limiter(kind: str, rate: float | None, burst: float | None, max_in_flight: int | None):
    """The limiter of ``kind`` (None: no limit)."""
    if kind == "inflight":
        return InFlight(max_in_flight or 10)
    if not rate:
        return None
    if kind == "fixed":
        return FixedWindow(rate)
    if kind == "sliding":
        return SlidingWindow(rate)
    return Bucket(rate, burst if burst is not None else rate / 20)


class Server:
    def __init__(self, latency: float, faults: float, timeout_sleep: float, seed: int,
                 rate: float | None = None, burst: float | None = None, retry_after: str = "seconds",
                 kind: str = "bucket", max_in_flight: int | None = None, refuse_status: int = 429) -> None:
        self.latency, self.faults, self.timeout_sleep = latency, faults, timeout_sleep
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.bucket = limiter(kind, rate, burst, max_in_flight)
        self.retry_after, self.refuse_status = retry_after, refuse_status

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
                    self.count("429")   # every refusal, whatever its status
                    header = f"Retry-After: {math.ceil(wait)}\r\n" if self.retry_after == "seconds" else ""
                    writer.write(_response(self.refuse_status, b'{"error": {"message": "rate limit reached"}}',
                                           header))
                    await writer.drain()
                    continue
                try:
                    if self.latency:
                        await asyncio.sleep(self.latency)
                finally:
                    if hasattr(self.bucket, "done"):
                        self.bucket.done()
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
                stats: Path | None = None, kind: str = "bucket", max_in_flight: int | None = None,
                refuse_status: int = 429) -> None:
    server = Server(latency, faults, timeout_sleep, seed, rate, burst, retry_after, kind, max_in_flight,
                    refuse_status)
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
    parser.add_argument("--limiter", choices=["bucket", "fixed", "sliding", "inflight"], default="bucket",
                        help="the limit's shape (see above) [default: bucket]")
    parser.add_argument("--max-in-flight", type=int, help="requests answered at once under --limiter inflight")
    parser.add_argument("--refuse-status", type=int, choices=[429, 503], default=429,
                        help="the status of a refused request [default: 429]")
    parser.add_argument("--stats-file", type=Path, help="write the counts of replies by kind here on exit")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.latency, args.faults, args.timeout_sleep, args.seed, args.ready_file,
                      args.rate, args.burst, args.retry_after, args.stats_file, args.limiter,
                      args.max_in_flight, args.refuse_status))


if __name__ == "__main__":
    main()
