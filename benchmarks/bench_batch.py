"""Batched generation against one-at-a-time, and the chat's streaming speed against `complete`'s.

    python benchmarks/bench_batch.py [--model models/shakespeare.onnx] [--prompts 256] [--chars 200]
        [--sequential 32] [--processes 6] [--repeats 3] [--threads 2] [--no-chat] [--json PATH]

What it times (characters of generated text per wall-clock second; medians of --repeats):
  * batch: --prompts prompts of 20-200 characters (slices of tiny-shakespeare when data/ or
    ../shared has it, else of the model's own text), --chars each, through
    Engine.generate_batch, the code behind `sgpt complete --batch`, at the default --batch-size;
  * sequential: the same prompts one after another in one process (`--batch-size 1`), on the
    first --sequential of them (characters per second do not depend on how many; said so below);
  * processes: one `sgpt complete` process per prompt, on --processes of them;
  * samples: `--num-samples 16` of one prompt against sixteen single runs in one process;
  * batch size: characters/s at batch sizes 1, 4, 16, 64 (64 prompts);
  * chat: `sgpt chat` against `sgpt complete`, 1000 characters each, stdout a pseudo-terminal (colour
    on, as a user sees them), both through their --verbose speed lines.
Ratios are taken within one run, so a busy machine moves them less than the absolute figures.

A model without attention_mask (exported before batching existed) cannot batch rows of different
lengths; for it the script times the same weights re-exported by this sgpt (from NAME.pt beside the
file; else random weights of its shape), and says so. About 3-5 minutes on 2 idle cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgpt_cli.infer.engine import Engine, SamplingParams  # noqa: E402
from sgpt_cli.infer.onnx_model import OnnxModel  # noqa: E402

TEXTS = [ROOT / "data" / "tinyshakespeare.txt", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"]


def prompts_for(model: OnnxModel, n: int, seed: int = 0) -> list[str]:
    """n prompts of 20-200 characters: slices of tiny-shakespeare, else of text the model writes."""
    rng = np.random.default_rng(seed)
    text = next((p.read_text(encoding="utf-8") for p in TEXTS if p.exists()), None)
    if text is None:
        text = "".join(e.text for e in Engine(model).stream("\n", SamplingParams(max_tokens=5000, seed=seed)))
    lengths = rng.integers(20, 201, n)
    starts = rng.integers(0, len(text) - 201, n)
    return [text[s:s + k] for s, k in zip(starts, lengths)]


def run_batch(engine: Engine, prompts: list[str], chars: int, batch_size: int | None, seed: int = 0) -> float:
    """Characters per second for all prompts through generate_batch."""
    reqs = [(p, SamplingParams(max_tokens=chars, seed=seed + i)) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    n = sum(ev.stats.chars for ev in engine.generate_batch(reqs, batch_size) if ev.stats)
    return n / (time.perf_counter() - t0)


def run_singles(engine: Engine, prompts: list[str], chars: int, seed: int = 0) -> float:
    t0 = time.perf_counter()
    n = 0
    for i, p in enumerate(prompts):
        n += sum(len(e.text) for e in engine.stream(p, SamplingParams(max_tokens=chars, seed=seed + i)))
    return n / (time.perf_counter() - t0)


def run_processes(path: Path, prompts: list[str], chars: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    n = 0
    for i, p in enumerate(prompts):
        done = subprocess.run([sys.executable, "-m", "sgpt_cli", "complete", "-n", str(chars), "--seed", str(i),
                               "--model", str(path), "--device", "cpu", p], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, check=True)
        n += len(done.stdout)
    return n / (time.perf_counter() - t0)


def on_a_terminal(args: list[str], stdin: str) -> str:
    """Run `python -m sgpt_cli ARGS` with stdout a pseudo-terminal (drained), stdin a pipe; its stderr."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100", LINES="40", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "sgpt_cli", *args], stdin=subprocess.PIPE, stdout=slave,
                            stderr=subprocess.PIPE, env=env, text=True)
    os.close(slave)

    def drain():
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    _, err = proc.communicate(stdin, timeout=300)
    os.close(master)
    return err


def chat_vs_complete(path: Path, chars: int) -> tuple[float, float]:
    common = ["--model", str(path), "--device", "cpu", "--seed", "1", "--max-tokens", str(chars)]
    err = on_a_terminal(["chat", *common, "--verbose", "--no-history", "--no-one-speech"], "ROMEO:\n")
    chat = float(re.search(r"([\d,]+) characters/s", err).group(1).replace(",", ""))
    err = on_a_terminal(["complete", *common, "--verbose", "ROMEO:"], "")
    complete = float(re.search(r"\((\d+)/s\)", err).group(1))
    return chat, complete


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "shakespeare.onnx")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--chars", type=int, default=200)
    ap.add_argument("--sequential", type=int, default=32, help="prompts timed one after another (a subset)")
    ap.add_argument("--processes", type=int, default=6, help="prompts timed one process each (a subset)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: the engine's default)")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="only: 64 prompts x 200 characters through `sgpt complete --batch`, this code and "
                         "shipped model against CHECKOUT's (a git worktree of an earlier commit)")
    ap.add_argument("--no-chat", action="store_true", help="skip the chat-vs-complete streaming figure")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.against:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from versions import compare

        res = compare(args.against, ("batch",))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return
    t_start = time.perf_counter()
    res: dict = {"cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()[0], "threads": args.threads}
    path = args.model
    with tempfile.TemporaryDirectory() as tmp:
        model = OnnxModel(path, device="cpu", threads=args.threads or None)  # the engine picks sessions by rows
        res["model"] = str(path)
        engine = Engine(model)
        prompts = prompts_for(model, args.prompts)
        from sgpt_cli.term.batch import DEFAULT_BATCH_SIZE

        med = statistics.median
        batch = [run_batch(engine, prompts, args.chars, DEFAULT_BATCH_SIZE) for _ in range(args.repeats)]
        seq = [run_batch(engine, prompts[:args.sequential], args.chars, 1) for _ in range(args.repeats)]
        res.update(batch=med(batch), sequential=med(seq), batch_runs=batch, sequential_runs=seq)
        print(f"--batch ({args.prompts} prompts, --batch-size {DEFAULT_BATCH_SIZE}): {med(batch):,.0f} chars/s; "
              f"--batch-size 1 (first {args.sequential} prompts): {med(seq):,.0f} chars/s: "
              f"{med(batch) / med(seq):.1f}x", flush=True)
        procs = run_processes(path, prompts[:args.processes], args.chars)
        res["processes"] = procs
        print(f"one `sgpt complete` process per prompt (first {args.processes}): {procs:,.0f} chars/s: "
              f"--batch is {med(batch) / procs:.1f}x", flush=True)
        sixteen = [prompts[0]] * 16
        samples = [run_batch(engine, sixteen, args.chars, None) for _ in range(args.repeats)]
        singles = [run_singles(engine, sixteen, args.chars) for _ in range(args.repeats)]
        res.update(samples=med(samples), samples_singles=med(singles))
        print(f"--num-samples 16: {med(samples):,.0f} chars/s; sixteen single runs: {med(singles):,.0f} chars/s: "
              f"{med(samples) / med(singles):.1f}x", flush=True)
        scaling = {}
        for size in (1, 4, 16, 64):
            sub = prompts[:64] if size > 1 else prompts[:args.sequential]
            scaling[size] = med([run_batch(engine, sub, args.chars, size) for _ in range(args.repeats)])
            print(f"  batch size {size:3d}: {scaling[size]:,.0f} chars/s", flush=True)
        res["scaling"] = scaling
        if not args.no_chat:
            chat, complete = zip(*(chat_vs_complete(path, 1000) for _ in range(args.repeats)))
            res.update(chat=med(chat), complete=med(complete))
            print(f"streaming on a terminal, 1000 chars: chat {med(chat):,.0f} chars/s, complete "
                  f"{med(complete):,.0f} chars/s: {100 * med(chat) / med(complete):.0f}%", flush=True)
    res["load_avg_after"] = os.getloadavg()[0]
    res["seconds"] = time.perf_counter() - t_start
    print(f"load average before/after: {res['load_avg_before']:.2f} / {res['load_avg_after']:.2f} on "
          f"{os.cpu_count()} CPUs; {res['seconds']:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
