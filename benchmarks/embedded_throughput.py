"""Tokens/s of the embedded model through auto-evol's LLM layer, against the machine's own ceiling.

The ceiling is a bare client: the same xllamacpp server called directly, same prompts' shape, same
number of slots and threads, no DSPy. auto-evol's figure goes through Llm.ask -> dspy.LM -> engine
(cache off). Prompt sets alternate between the two so neither profits from the other's KV cache.

    python benchmarks/embedded_throughput.py [--prompts 16] [--max-tokens 96] [--slots 4]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from auto_evol.llm import backends, client as llm


def prompts(tag: str, n: int) -> list[str]:
    return [f"({tag}{i}) Write a short word problem about {i + 3} apples and {2 * i + 5} pears, then solve it."
            for i in range(n)]


def run(fn, batch: list[str], workers: int) -> tuple[int, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        tokens = sum(pool.map(fn, batch))
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()

    backends.configure_cache(None)
    model = backends.build(llm.RoleSettings(max_tokens=args.max_tokens), concurrency=args.slots, cache=False)
    from auto_evol.llm import gguf_engine

    server = next(iter(gguf_engine._engines.values()))[0]._server  # the same in-process server

    def bare(prompt: str) -> int:
        out = server.handle_chat_completions({"messages": [{"role": "user", "content": prompt}],
                                              "max_tokens": args.max_tokens, "temperature": 0.0})
        return out["usage"]["completion_tokens"]

    def ours(prompt: str) -> int:
        return model.ask(prompt).output_tokens

    bare(prompts("warm", 1)[0])
    totals = {"bare": [0, 0.0], "auto-evol": [0, 0.0]}
    for round_, (first, second) in enumerate((("bare", "auto-evol"), ("auto-evol", "bare"))):
        for name in (first, second):
            fn = bare if name == "bare" else ours
            tokens, seconds = run(fn, prompts(f"{name}{round_}", args.prompts), args.slots)
            totals[name][0] += tokens
            totals[name][1] += seconds
    single_tokens, single_seconds = run(ours, prompts("single", 4), 1)
    rate = {k: t / s for k, (t, s) in totals.items()}
    print(f"slots {args.slots}, {2 * args.prompts} prompts per client, max_tokens {args.max_tokens}")
    for name, (tokens, seconds) in totals.items():
        print(f"{name:>10}: {tokens} tokens in {seconds:.1f} s = {rate[name]:.1f} tokens/s")
    print(f"ratio auto-evol / bare = {rate['auto-evol'] / rate['bare']:.3f}")
    print(f"single stream through auto-evol: {single_tokens / single_seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
