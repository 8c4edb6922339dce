"""`sgpt serve` under load: concurrent streaming clients, and what the HTTP layer costs one request.

    python benchmarks/bench_serve.py [--model models/shakespeare.onnx] [--clients 1,4,16,64] [--chars 200]
        [--rows 16] [--rounds 3] [--repeats 3] [--json PATH]

What it measures, against a real `sgpt serve` on 127.0.0.1 (a free port) started by this script:
  * for each number of clients C: C streaming clients at once (httpx, asyncio), each asking for
    --chars characters of its own prompt and seed; aggregate characters per second (all the text
    over the wall time from the first request to the last [DONE]), time to the first character
    and request latency (p50, p99 over the C clients); each count --rounds times, interleaved (1, 4,
    16, 64, 1, 4, ...), and the round with the median aggregate reported (a shared machine's speed
    drifts: one round per count is not a figure);
  * one client's non-streamed --chars characters (the whole HTTP round trip) against the same
    generation in-process (Engine.stream, the code behind `sgpt complete`), medians of --repeats.
Targets (the issue): 16 clients' aggregate at least 2.5x one client's; the HTTP round trip within
1.25x of the in-process generation. Run it on an idle machine: other work moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from sgpt_cli.infer.prompt import read_for_model  # noqa: E402
from sgpt_cli.infer.engine import Engine  # noqa: E402
from sgpt_cli.infer.onnx_model import OnnxModel  # noqa: E402
from sgpt_cli.settings import SamplingParams  # noqa: E402

PROMPTS = ["ROMEO:", "JULIET:\n", "First Citizen:\nBefore we proceed any further, hear me speak.\n", "KING RICHARD III:",
           "MENENIUS:\nWhy", "What, ho!", "HAMLET:\nTo be, or not to be", "\n"]


def start(model: Path, rows: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sgpt_cli", "serve", "--model", str(model), "--port", "0",
                             "--rows", str(rows), "--queue", "10000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    found = re.search(r"(http://\S+)/v1 ", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r} {proc.stderr.read()[:500]!r}")
    url = found.group(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer /health within 60 s")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def one_stream(client: httpx.AsyncClient, url: str, i: int, chars: int) -> tuple[float, float, int]:
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": chars, "seed": i, "stream": True}
    t0 = time.perf_counter()
    first, n = None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                text = json.loads(line[6:])["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - t0
                n += len(text)
    return first or 0.0, time.perf_counter() - t0, n


async def clients(url: str, c: int, chars: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=c + 8)) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, i, chars) for i in range(c)))
        wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    latency = [r[1] for r in results]
    total = sum(r[2] for r in results)
    return {"clients": c, "chars": total, "wall_s": wall, "chars_per_s": total / wall,
            "ttft_p50_ms": 1000 * pct(ttft, 0.5), "ttft_p99_ms": 1000 * pct(ttft, 0.99),
            "latency_p50_s": pct(latency, 0.5), "latency_p99_s": pct(latency, 0.99)}


def median_round(runs: list[dict]) -> dict:
    """The run with the median aggregate, and every run's aggregate beside it."""
    ordered = sorted(runs, key=lambda r: r["chars_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_chars_per_s": [r["chars_per_s"] for r in runs]}


def round_trip(url: str, model: OnnxModel, chars: int, repeats: int) -> dict:
    """One client's non-streamed request against the same generation in-process."""
    prompt = PROMPTS[0]
    http, local = [], []
    engine = Engine(model)
    fed = read_for_model([prompt], model.tokenizer.stoi, model.block_size).fed
    with httpx.Client(timeout=600) as client:
        for k in range(repeats):
            t0 = time.perf_counter()
            r = client.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": chars, "seed": k})
            r.raise_for_status()
            http.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            text = "".join(e.text for e in engine.stream(fed, SamplingParams(max_tokens=chars, seed=k)))
            local.append(time.perf_counter() - t0)
            assert text == r.json()["choices"][0]["text"], "the server's text differs from the in-process run"
    h, m = statistics.median(http), statistics.median(local)
    return {"http_s": h, "in_process_s": m, "ratio": h / m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shakespeare.onnx")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--chars", type=int, default=200)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each client count (the median is reported)")
    ap.add_argument("--repeats", type=int, default=3, help="non-streamed requests, each way (medians)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    proc, url = start(args.model, args.rows)
    try:
        asyncio.run(clients(url, 2, 20))  # warm up: the engine's cache is made on its first step
        rounds = [[asyncio.run(clients(url, c, args.chars)) for c in counts] for _ in range(args.rounds)]
        rows = [median_round([r[k] for r in rounds]) for k in range(len(counts))]
        trip = round_trip(url, OnnxModel(args.model, device="cpu"), args.chars, args.repeats)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    print(f"sgpt serve, {args.model.name}, {args.chars} characters per client, --rows {args.rows}, "
          f"median of {args.rounds} rounds")
    print("| clients | aggregate chars/s | first character p50 / p99 | latency p50 / p99 |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        every = " / ".join(f"{v:,.0f}" for v in r["rounds_chars_per_s"])
        print(f"| {r['clients']} | {r['chars_per_s']:,.0f} ({every}) | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} ms | "
              f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f} s |")
    one = next((r for r in rows if r["clients"] == 1), None)
    sixteen = next((r for r in rows if r["clients"] == 16), None)
    if one and sixteen:
        gain = sixteen["chars_per_s"] / one["chars_per_s"]
        i, j = counts.index(1), counts.index(16)
        each = sorted(r[j]["chars_per_s"] / r[i]["chars_per_s"] for r in rounds)  # within one round: same drift
        print(f"16 clients / 1 client: {gain:.2f}x (target >= 2.5x: {'met' if gain >= 2.5 else 'NOT met'}); "
              f"within each round: {' / '.join(f'{g:.2f}x' for g in each)}")
    print(f"one non-streamed request of {args.chars} characters: {trip['http_s'] * 1000:.0f} ms over HTTP vs "
          f"{trip['in_process_s'] * 1000:.0f} ms in-process: {trip['ratio']:.2f}x "
          f"(target <= 1.25x: {'met' if trip['ratio'] <= 1.25 else 'NOT met'}; median of {args.repeats})")
    if args.json:
        args.json.write_text(json.dumps({"clients": rows, "round_trip": trip}, indent=2) + "\n")


if __name__ == "__main__":
    main()
