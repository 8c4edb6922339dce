"""How long one request within `sgpt serve`'s default limits can hold the event loop (every stream, /health).

    python benchmarks/bench_serve_stall.py [--n 16] [--chars 4096] [--top 20] [--prompts 5] [--distinct 56000]

What it times, in this process, with the server's own functions (no model, no sockets):
  * parse: a completions body of --prompts prompts, each --distinct distinct characters the
    vocabulary lacks (the worst `_known_tail` sees; 0.84 MB with the defaults, under --max-body),
    read as the endpoint reads it (json.loads and the text check on the loop, parse_completion in
    a worker thread) while a ticker on the loop records the longest gap between its 1 ms ticks; and
    the old first-appearance sort (`sorted(..., key=text.index)`) on the same text, for comparison;
  * whole answer: the non-streamed response of --n choices of --chars characters with --top logprob
    alternatives each, written as the server writes it (Reply.response and json_bytes in a worker
    thread) while a ticker on the loop records the longest gap between its 1 ms ticks; and the same
    built on the loop (one json.dumps), the gap it would leave.
A few seconds and ~1 GB of memory with the defaults (the logprobs of 65,536 characters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from sgpt_cli.infer.engine import Event, GenerationStats
from sgpt_cli.infer.logprobs import TokenLogprob
from sgpt_cli.web.openai_api import Limits, Reply, parse_completion
from sgpt_cli.web.limits import json_bytes, unencodable

VOCAB = {c: i for i, c in enumerate("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")}


async def longest_gap(work) -> tuple[float, float]:
    """(seconds `work` took, the longest gap between the loop's 1 ms ticks meanwhile)."""
    gaps = [0.0]
    done = asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work()
    took = time.perf_counter() - t0
    done.set()
    await tick
    return took, gaps[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--chars", type=int, default=4096)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--distinct", type=int, default=56_000)
    a = p.parse_args()

    # three bytes each in UTF-8 (U+0800 on, no surrogates): 5 x 56,000 is 0.84 MB, under --max-body's 1 MiB
    chars = [c for c in map(chr, range(0x800, 0x10000)) if not 0xD800 <= ord(c) < 0xE000]
    prompt = "".join(chars[:a.distinct])
    raw = json.dumps({"prompt": [prompt] * a.prompts, "max_tokens": 1}, ensure_ascii=False).encode()
    body = {}

    async def read():
        body.update(json.loads(raw.decode("utf-8")))  # on the loop, as read_json
        assert unencodable(body) is None
        await asyncio.to_thread(parse_completion, body, "m", VOCAB, 256, Limits())

    took, gap = asyncio.run(longest_gap(read))
    t0 = time.perf_counter()
    for text in body["prompt"]:
        sorted(set(text).difference(VOCAB), key=text.index)
    old_s = time.perf_counter() - t0
    print(f"parse: a {len(raw) / 1e6:.2f} MB body, {a.prompts} x {a.distinct:,} distinct unknown characters: "
          f"{took * 1e3:.0f} ms, the loop's longest gap {gap * 1e3:.0f} ms (the old first-appearance sort "
          f"alone, on the loop: {old_s * 1e3:.0f} ms)")

    parsed = parse_completion({"prompt": "ROMEO:", "n": a.n, "max_tokens": a.chars, "logprobs": a.top}, "m",
                              VOCAB, 256, Limits(max_tokens_limit=max(a.chars, 1)))
    alts = tuple((c, -1.0 - i / 10) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"[:a.top]))
    entry = [TokenLogprob(c, -0.5, alts) for c in "etaoinshrdlu"]
    stats = GenerationStats(prompt_chars=6, chars=a.chars, ttft_s=0.0, seconds=1.0, chars_per_s=1.0,
                            stop_reason="max_tokens")
    reply = Reply(parsed, "m")
    for k in range(a.n):
        lps = tuple(entry[i % len(entry)] for i in range(a.chars))
        reply.add(k, Event(k, "".join(e.token for e in lps), stats, lps))

    size = [0]

    async def threaded():
        size[0] = len(await asyncio.to_thread(lambda: json_bytes(reply.response())))

    async def on_loop():
        json.dumps(reply.response(), ensure_ascii=False).encode("utf-8")

    took, gap = asyncio.run(longest_gap(threaded))
    print(f"whole answer: n={a.n} x {a.chars:,} characters, logprobs {a.top}: {size[0] / 1e6:.1f} MB of JSON in "
          f"{took:.2f} s in a worker thread; the loop's longest gap meanwhile {gap * 1e3:.0f} ms")
    took, gap = asyncio.run(longest_gap(on_loop))
    print(f"  the same built on the loop (as before): {took:.2f} s, the loop's longest gap {gap * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
