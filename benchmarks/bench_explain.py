"""Whole-process time of `sgpt explain` on a 256-character prompt of the shipped model.

    python benchmarks/bench_explain.py [--model PATH] [--runs N] [--chars 256]

Runs `sgpt explain PROMPT` (the plain view, into a pipe) and `sgpt explain --json PROMPT` N times each,
alternating, after one warm-up run of each, and prints the median and best wall time. The prompt is
the first CHARS characters of the README's Romeo and Juliet lines repeated (every one a character of
tiny-shakespeare). The issue's targets: under 1 s for the view, under 0.5 s for --json, idle machine.
`python -c 'import onnxruntime'` is timed too: the floor no sgpt command can beat.

Run on an idle machine: other processes' CPU use shows up in the wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief,\n\n")
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NO_COLOR")}
ENV["PYTHONPATH"] = str(REPO) + os.pathsep + ENV.get("PYTHONPATH", "")


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          env=ENV, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed: {proc.stderr.decode().strip()}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "shakespeare.onnx"))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--chars", type=int, default=256)
    args = ap.parse_args()
    prompt = (TEXT * (args.chars // len(TEXT) + 1))[:args.chars]
    sgpt = [sys.executable, "-m", "sgpt_cli", "explain", "--model", args.model]
    cases = {"explain (view, piped)": sgpt + [prompt], "explain --json": sgpt + ["--json", prompt],
             "python -c 'import onnxruntime'": [sys.executable, "-c", "import onnxruntime"]}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for argv in cases.values():
        timed(argv)  # warm-up: compiled modules cached, the file in the page cache
    for _ in range(args.runs):
        for name, argv in cases.items():
            times[name].append(timed(argv))
    print(f"{args.chars}-character prompt, {Path(args.model).name}, {args.runs} runs each (alternating)")
    for name, values in times.items():
        print(f"  {name:<32} median {statistics.median(values):.3f} s   best {min(values):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
