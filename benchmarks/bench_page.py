"""The play page: its size, its first load on 127.0.0.1, and a page's stream against
bench_serve.py's single client, in the same sitting.

    python benchmarks/bench_page.py [--model models/shakespeare.onnx] [--chars 200] [--rounds 5] [--loads 10]

What it measures, against a real `sgpt serve` on 127.0.0.1 started by this script, in the
distribution's headless Chromium (Selenium; scripts/page_screenshot.py starts both):
  * the page's bytes (index.html, app.js, style.css as served);
  * first load: --loads fresh visits (storage cleared), each the time from navigation start to the
    load event and to the page being ready (the settings read from /v1/sgpt/props); medians;
  * speed: --rounds rounds, each one page run (Generate; "ROMEO:", --chars characters, seed 0, free
    running, heat off: the same request body as bench_serve's) and one bench_serve.clients(url, 1,
    --chars) (httpx, streamed), alternating; characters per second of each as each computes it (all
    the text over the time from sending the request to the stream's end); medians and the ratio.
Run it on an idle machine: other work moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402

from bench_serve import PROMPTS, clients  # noqa: E402
from page_screenshot import page_session, ready, run, until  # noqa: E402


def page_bytes(url: str) -> dict:
    sizes = {}
    for name in ("/", "/page/app.js", "/page/style.css"):
        sizes[name] = len(httpx.get(url + name, timeout=30).content)
    return sizes


def first_loads(driver, url: str, loads: int) -> dict:
    load_ms, ready_ms = [], []
    for _ in range(loads):
        driver.get(url + "/")
        driver.execute_script("localStorage.clear(); sessionStorage.clear();")
        driver.get("about:blank")
        driver.get(url + "/")
        until(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        until(driver, lambda d: d.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd > 0"))
        nav = driver.execute_script("const n = performance.getEntriesByType('navigation')[0];"
                                    "return [n.loadEventEnd, Number(document.body.dataset.readyMs)]")
        load_ms.append(nav[0])
        ready_ms.append(nav[1])
    return {"load_ms": statistics.median(load_ms), "ready_ms": statistics.median(ready_ms),
            "all_ready_ms": [round(x) for x in ready_ms]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shakespeare.onnx")
    ap.add_argument("--chars", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loads", type=int, default=10)
    args = ap.parse_args(argv)
    with page_session(args.model, 1280, 900) as (driver, url):
        sizes = page_bytes(url)
        print(f"page: {sum(sizes.values()):,} bytes ({', '.join(f'{k} {v:,}' for k, v in sizes.items())})")
        loads = first_loads(driver, url, args.loads)
        print(f"first load on {url}: load event {loads['load_ms']:.0f} ms, ready (settings read) "
              f"{loads['ready_ms']:.0f} ms (medians of {args.loads}; each: {loads['all_ready_ms']})")
        page, bench = [], []
        ready(driver, url, PROMPTS[0], seed="0", max_tokens=str(args.chars), one_speech=False)
        run(driver)  # warm-up, both ways: the first request of a session pays for its start
        asyncio.run(clients(url, 1, args.chars))
        for r in range(args.rounds):
            driver.execute_script("const s = document.getElementById('scene'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", PROMPTS[0])
            run(driver)
            page.append(float(driver.execute_script("return document.getElementById('speed').dataset.charsPerS")))
            bench.append(asyncio.run(clients(url, 1, args.chars))["chars_per_s"])
            print(f"round {r + 1}: page {page[-1]:,.0f} chars/s, bench_serve single client {bench[-1]:,.0f} chars/s")
        p, b = statistics.median(page), statistics.median(bench)
        print(f"median: page {p:,.0f} chars/s, bench_serve single client {b:,.0f} chars/s; page / client = {p / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
