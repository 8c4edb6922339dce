"""Start-up and memory of `sgpt complete`, the whole process, as a shell pipeline runs it.

    python benchmarks/bench_startup.py [--model PATH] [--runs N] [--tokens 200] [--rebuild]

Runs `printf 'ROMEO:' | sgpt complete -n 200 --seed 1` and `... -n 0` (start-up alone: import, load
the model, exit) N times each, after one warm-up run, and prints the median and best wall time and
the peak resident memory (from wait4's rusage, per process). Floors are timed too: `python -c pass`
and `python -c 'import onnxruntime'` (numpy included), which no sgpt command can beat; the rest of
`-n 0` is loading the model, and `-n 200` minus `-n 0` is generation.

Without --model it builds a ~10.7M-parameter model with random weights, nanoGPT's shakespeare_char
shape (6 layers, 6 heads, 384 wide, 256 context, 65 characters), exports it with `sgpt export` and
keeps it in the temp folder for later runs (--rebuild makes it again). Random weights are as fast to
run as trained ones. Run on an idle machine: other processes' CPU use shows up in the wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tiny-shakespeare's 65 characters, in vocabulary (sorted) order
SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEFAULT_MODEL = Path(tempfile.gettempdir()) / "sgpt-bench" / "random-10m.onnx"
# as a user's shell runs it: compiled modules cached (some sandboxes set PYTHONDONTWRITEBYTECODE),
# no colour settings inherited from the caller
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NO_COLOR")}


def build_random_model(out: Path) -> int:
    """Checkpoint with trainer.state()'s keys around a freshly initialised GPT, exported to `out`."""
    sys.path.insert(0, str(REPO))
    import dataclasses
    import json

    import torch

    from sgpt_cli.train import checkpoint
    from sgpt_cli.config import ModelConfig, TrainConfig
    from sgpt_cli.train.onnx_export import export
    from sgpt_cli.train.model import GPT

    torch.manual_seed(0)
    mcfg = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=len(SHAKESPEARE_VOCAB))
    model = GPT(mcfg)
    ckpt_path = out.with_suffix(".pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(ckpt_path, {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(mcfg),
        "train_config": dataclasses.asdict(TrainConfig(preset="gpu")),
        "vocab": json.dumps(list(SHAKESPEARE_VOCAB)),
        "iter": 0, "val_loss": None, "best_val_loss": None,
        "optimizer": {}, "rng": None, "rng_ranks": [], "train_seconds": 0.0,
        "data_sha256": "", "hardware": "none (random weights for benchmarks)",
    })
    export(ckpt_path, out)
    ckpt_path.unlink()
    return model.num_params()


def sgpt_command() -> list[str]:
    """The installed console script beside this Python (what users run), else `python -m sgpt_cli`."""
    script = Path(sys.executable).with_name("sgpt")
    if script.exists():
        return [str(script)]
    found = shutil.which("sgpt")
    return [found] if found else [sys.executable, "-m", "sgpt_cli"]


def run_once(cmd: list[str], stdin: bytes) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one process fed `stdin` through a pipe."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdin.write(stdin)
    proc.stdin.close()
    proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone, unlike RUSAGE_CHILDREN
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return wall, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


def measure(name: str, cmd: list[str], stdin: bytes, runs: int) -> None:
    run_once(cmd, stdin)  # warm-up: page cache, .pyc files
    walls, rss = [], []
    for _ in range(runs):
        wall, mb, _ = run_once(cmd, stdin)
        walls.append(wall)
        rss.append(mb)
    print(f"{name:<34} median {statistics.median(walls):6.3f} s   best {min(walls):6.3f} s   "
          f"peak RSS {max(rss):6.1f} MB   ({runs} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help=f"ONNX model to run [default: a random ~10M model at {DEFAULT_MODEL}]")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per command [default: 10]")
    ap.add_argument("--tokens", type=int, default=200, help="characters to generate [default: 200]")
    ap.add_argument("--rebuild", action="store_true", help="build the random model again")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        print(f"  {build_random_model(args.build_only) / 1e6:.2f}M parameters")
        return

    model = args.model
    if model is None:
        model = DEFAULT_MODEL
        if args.rebuild or not model.exists():
            print(f"building a random-weight model at {model} ...", flush=True)
            # in a child: a child's peak RSS starts from its parent's at fork, so this process must
            # never hold torch and the model, or every timed process would report that peak
            subprocess.run([sys.executable, __file__, "--build-only", str(model)], check=True)
            print(f"  {model.stat().st_size / 1e6:.1f} MB")
    if not model.exists():
        sys.exit(f"model {model} does not exist")

    sgpt = sgpt_command()
    print(f"sgpt: {' '.join(sgpt)}\nmodel: {model} ({model.stat().st_size / 1e6:.1f} MB)\n"
          f"cpus: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.2f}")
    # the floors: Python itself, then Python with the libraries any ONNX Runtime program loads
    measure("python -c pass", [sys.executable, "-c", "pass"], b"", args.runs)
    measure("python -c 'import onnxruntime'", [sys.executable, "-c", "import onnxruntime"], b"", args.runs)
    measure("sgpt --version (Typer)", sgpt + ["--version"], b"", args.runs)
    for n in (0, args.tokens):
        cmd = sgpt + ["complete", "-n", str(n), "--seed", "1", "--model", str(model)]
        measure(f"printf 'ROMEO:' | sgpt complete -n {n}", cmd, b"ROMEO:", args.runs)


if __name__ == "__main__":
    main()
