"""This checkout's code and shipped model against another checkout's (an earlier commit), in one run.

    git worktree add /tmp/sgpt-before COMMIT      # the code (and models/shakespeare.onnx) to beat
    python benchmarks/bench_decode.py --against /tmp/sgpt-before
    python benchmarks/bench_batch.py --against /tmp/sgpt-before

Each side runs in its own Python process with its own code (its checkout is the working folder) and its own shipped model,
with its own defaults (threads included): what a user of that version gets. Rounds alternate the
sides (old, new, old, new, ...), so load on a shared machine falls on both; figures are medians and
the ratio is new over old. What is timed:
  * decode: 1000 characters from a one-character prompt in one engine, load excluded (batch 1);
  * batch: `sgpt complete --batch FILE -n 200` on 64 prompts, the whole process;
  * startup: `printf 'ROMEO:' | sgpt complete -n 200 --seed 1`, the whole process.
Both engine APIs are spoken: `Engine.stream` (events) and the older `Engine.generate` (text pieces).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NO_COLOR", "SGPT_MODEL")}

DECODE_WORKER = r"""
import json, sys, time
try:  # an earlier layout (sgpt_cli/engine.py), or this one's
    from sgpt_cli.engine import Engine
    from sgpt_cli.onnx_model import OnnxModel
except ImportError:
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel
from sgpt_cli.settings import SamplingParams
path, chars, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = Engine(OnnxModel(path, device="cpu"))

def run(n, seed):
    params = SamplingParams(max_tokens=n, seed=seed)
    if hasattr(engine, "stream"):
        return sum(len(e.text) for e in engine.stream("\n", params))
    return sum(len(p) for p in engine.generate("\n", params))

run(20, 0)  # warm-up
rates = []
for r in range(repeats):
    t0 = time.perf_counter()
    n = run(chars, r)
    rates.append(n / (time.perf_counter() - t0))
print(json.dumps(rates))
"""


def side_env(root: Path) -> dict:
    return {**ENV, "PYTHONPATH": str(root)}


def model_of(root: Path) -> Path:
    return root / "models" / "shakespeare.onnx"


def decode_rates(root: Path, chars: int, repeats: int) -> list[float]:
    out = subprocess.run([sys.executable, "-c", DECODE_WORKER, str(model_of(root)), str(chars), str(repeats)],
                         capture_output=True, text=True, env=side_env(root), cwd=root, timeout=1200, check=True)
    return json.loads(out.stdout)


def timed(cmd: list[str], root: Path, stdin: bytes) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=side_env(root),
                   cwd=root, timeout=1200, check=True)  # cwd: `python -m` puts it first on sys.path
    return time.perf_counter() - t0


def batch_file(n: int, folder: Path) -> Path:
    """n JSON Lines prompts of 20-200 characters: speaker names and first lines, varied."""
    names = ["ROMEO", "JULIET", "MENENIUS", "First Citizen", "KING RICHARD III", "LADY ANNE", "GLOUCESTER"]
    path = folder / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            line = ("O, " + "what light is this that breaks upon the night " * 5)[:20 + (i * 37) % 180]
            f.write(json.dumps({"id": i, "prompt": f"{names[i % len(names)]}:\n{line}", "seed": i}) + "\n")
    return path


def interleave(old: Path, measure, rounds: int) -> tuple[list[float], list[float]]:
    got: dict[Path, list[float]] = {old: [], NEW: []}
    for _ in range(rounds):
        for root in (old, NEW):
            value = measure(root)
            got[root] += value if isinstance(value, list) else [value]
    return got[old], got[NEW]


def summary(name: str, unit: str, old: list[float], new: list[float], higher_is_better: bool) -> dict:
    a, b = statistics.median(old), statistics.median(new)
    ratio = b / a if higher_is_better else a / b
    print(f"{name:8} before {a:10.3f} {unit:8} now {b:10.3f} {unit:8} -> {ratio:.2f}x "
          f"({len(old)} + {len(new)} measurements, medians)")
    return {"before": a, "now": b, "speedup": ratio, "before_all": old, "now_all": new}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def compare(old: Path, what: tuple[str, ...], rounds: int = 3) -> dict:
    old = Path(old).resolve()
    if not model_of(old).exists():
        raise SystemExit(f"{old} is not an sgpt checkout with models/shakespeare.onnx")
    print(f"before: {old}  now: {NEW}  load average at start: {load_average()}")
    results: dict = {"load_start": load_average()}
    sgpt = [sys.executable, "-m", "sgpt_cli", "complete"]
    if "decode" in what:
        o, n = interleave(old, lambda root: decode_rates(root, 1000, 3), rounds)
        results["decode"] = summary("decode", "chars/s", o, n, True)
    if "batch" in what:
        with tempfile.TemporaryDirectory() as tmp:
            prompts = batch_file(64, Path(tmp))
            o, n = interleave(old, lambda root: timed(sgpt + ["--model", str(model_of(root)), "--batch", str(prompts),
                                                             "-n", "200"], root, b""), rounds)
        results["batch"] = summary("batch", "s", o, n, False)
    if "startup" in what:
        o, n = interleave(old, lambda root: timed(sgpt + ["--model", str(model_of(root)), "-n", "200", "--seed", "1"],
                                                  root, b"ROMEO:"), 5 * rounds)
        results["startup"] = summary("startup", "s", o, n, False)
    results["load_end"] = load_average()
    print(f"load average at the end: {results['load_end']}")
    return results
