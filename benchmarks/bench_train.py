"""Training benchmarks, each a median of repeated runs, all scored on the whole validation split.

    python benchmarks/bench_train.py [--data PATH] [--repeats N] [--threads N]        # cpu vs nanogpt-cpu
    python benchmarks/bench_train.py --optimizers [--budget S] [--repeats N]           # AdamW vs Muon
    python benchmarks/bench_train.py --default-run [--repeats N]                       # `sgpt train`, end to end
    python benchmarks/bench_train.py --all                                             # all three, in order
    python benchmarks/bench_train.py --default-run --set block_size=128 --set batch_size=16  # try a candidate

cpu vs nanogpt-cpu: runs nanoGPT's CPU recipe (preset `nanogpt-cpu`, 2000 iterations), times it, then
runs the `cpu` preset with `--time-budget` set to that exact time (the budget includes the final
measurement and checkpoint, so the comparison is fair to the baseline).

AdamW vs Muon: the `cpu` preset with each optimizer, same budget (default 280 s, the default run's).

The default run: `sgpt train` with no flags at all, in a fresh folder (the text linked in as
data/tinyshakespeare.txt), timed from process start to exit; then `sgpt export` and `sgpt eval` (the
whole validation split, torch-free), as a new user would. Medians of wall time and val loss.

Models are scored on the whole validation split (non-overlapping windows of their block size, the
protocol of `sgpt eval`). Run on an otherwise idle machine: everything else running shares the cores.
`--default-run --repeats 2` takes about 11 minutes on a 2-core machine, `--optimizers` about 10, the
default mode about 4; `--all` (two of each) about 40.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgpt_cli.train import checkpoint, trainer  # noqa: E402
from sgpt_cli.config import build_train_config, model_config_from_dict  # noqa: E402
from sgpt_cli.data import DEFAULT_DATA, ensure_default_data, read_text, split_text  # noqa: E402
from sgpt_cli.train.model import GPT  # noqa: E402
from sgpt_cli.infer.tokenizer import CharTokenizer  # noqa: E402
from sgpt_cli.errors import UsageError  # noqa: E402
from sgpt_cli.settings import FLAG, by_name  # noqa: E402
from sgpt_cli.term.train import OPTIONS  # noqa: E402

TRAIN_SETTINGS = by_name(OPTIONS)  # `sgpt train`'s flags, by field name


def full_val_loss(ckpt_path: Path, text: str) -> float:
    """The checkpoint on the whole validation split, read back from disk (an independent reader)."""
    ckpt = checkpoint.load(ckpt_path)
    model = GPT(model_config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    ids = torch.from_numpy(CharTokenizer.from_json(ckpt["vocab"]).encode(split_text(text)[1]))
    return trainer.whole_split_loss(model, ids)


def run(preset: str, overrides: dict, text: str, sha: str, out: Path) -> dict:
    cfg = build_train_config(preset, {"sample_chars": 0, **overrides})
    t0 = time.perf_counter()
    result = trainer.train(cfg, text, sha, out, device="cpu")
    wall = time.perf_counter() - t0
    return {"preset": preset, "optimizer": cfg.optimizer, "iters": result.iters, "train_seconds": result.elapsed,
            "wall": wall, "est_val": result.best_val_loss, "val": full_val_loss(out, text)}


def show(r: int, row: dict) -> None:
    print(f"  run {r + 1}: {row['preset']:<12} {row['optimizer']:<6} {row['iters']:>6} iters, {row['wall']:6.1f} s wall"
          f"  val (whole split) {row['val']:.4f}  (best estimate {row['est_val']:.4f})", flush=True)


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def cpu_vs_nanogpt(text: str, sha: str, repeats: int, tmp: Path) -> None:
    print("\n== cpu preset vs nanoGPT's CPU recipe at equal wall time ==", flush=True)
    base, ours = [], []
    for r in range(repeats):
        base.append(run("nanogpt-cpu", {}, text, sha, tmp / f"base{r}.pt"))
        show(r, base[-1])
        ours.append(run("cpu", {"time_budget": base[-1]["wall"]}, text, sha, tmp / f"cpu{r}.pt"))
        show(r, ours[-1])
    b, o = median(base, "val"), median(ours, "val")
    print(f"median of {repeats}: nanogpt-cpu {b:.4f} ({median(base, 'iters'):.0f} iters, {median(base, 'wall'):.1f} s)"
          f"  cpu {o:.4f} ({median(ours, 'iters'):.0f} iters): {b - o:+.4f} nats/char in favour of cpu"
          f" (perplexity {math.exp(b):.2f} -> {math.exp(o):.2f}); target: cpu <= 1.75")


def optimizers(text: str, sha: str, repeats: int, budget: float, tmp: Path, extra: dict) -> None:
    print(f"\n== AdamW vs Muon, cpu preset, {budget:g} s each (the budget includes the final measurement) ==",
          flush=True)
    rows: dict[str, list[dict]] = {"adamw": [], "muon": []}
    for r in range(repeats):
        for opt in rows:
            rows[opt].append(run("cpu", {**extra, "optimizer": opt, "time_budget": budget}, text, sha,
                                 tmp / f"{opt}{r}.pt"))
            show(r, rows[opt][-1])
    for opt, rs in rows.items():
        print(f"median of {repeats}: {opt:<6} val {median(rs, 'val'):.4f}  ({median(rs, 'iters'):.0f} iters)")


def sgpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "sgpt_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def _flag(key: str, value) -> str:
    """`sgpt train`'s spelling of a --set value: the setting's own flag (a switch takes no value)."""
    on, _, off = TRAIN_SETTINGS[key].flags[0].partition("/")
    return (on if value else off) if isinstance(value, bool) else f"{on}={value}"


def default_run(data: Path, repeats: int, tmp: Path, extra: dict) -> None:
    flags = [_flag(k, v) for k, v in extra.items()]
    print(f"\n== `sgpt train {' '.join(flags)}`, end to end (process start to exit), then export + eval ==", flush=True)
    rows = []
    for r in range(repeats):
        folder = tmp / f"default{r}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "tinyshakespeare.txt").symlink_to(data.resolve())
        t0 = time.perf_counter()
        trained = sgpt("train", *flags, cwd=folder)
        wall = time.perf_counter() - t0
        if trained.returncode != 0:
            sys.exit(f"sgpt train failed:\n{trained.stderr}")
        exported = sgpt("export", "--out", "export/bench.onnx", cwd=folder)
        if exported.returncode != 0:
            sys.exit(f"sgpt export failed:\n{exported.stderr}")
        # --model: sgpt never picks an export unasked (without it, eval scores the shipped model)
        evaluated = sgpt("eval", "--json", "--model", "export/bench.onnx", cwd=folder)
        if evaluated.returncode != 0:
            sys.exit(f"sgpt eval failed:\n{evaluated.stderr}")
        result = json.loads(evaluated.stdout)
        summary = next(line for line in trained.stdout.splitlines() if "iterations in" in line)
        rows.append({"wall": wall, "val": result["loss"], "chars": result["chars_scored"]})
        print(f"  run {r + 1}: {wall:6.1f} s wall, eval {result['loss']:.4f} on {result['chars_scored']:,} characters"
              f"  [{summary.strip()}]", flush=True)
    print(f"median of {repeats}: {median(rows, 'wall'):.1f} s wall, val {median(rows, 'val'):.4f} nats/char"
          f" (targets: <= 300 s, <= 1.47)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 1; --all: 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in this process (0 = torch's default)")
    ap.add_argument("--optimizers", action="store_true", help="AdamW vs Muon at equal wall time")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds per run for --optimizers (the default run's budget)")
    ap.add_argument("--default-run", action="store_true", help="`sgpt train` with no flags, end to end")
    ap.add_argument("--all", action="store_true", help="the default run, AdamW vs Muon, then cpu vs nanogpt-cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a candidate: override a cpu-preset field in --default-run and --optimizers")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.all else 1)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in TRAIN_SETTINGS:
            sys.exit(f"--set {key}: no such training setting (see sgpt train --help)")
        try:  # as `sgpt train` reads its flag: a bool from on/off, true/false, yes/no, 1/0
            extra[key] = TRAIN_SETTINGS[key].parse(value, FLAG)
        except UsageError as exc:
            sys.exit(str(exc))
    if args.data == DEFAULT_DATA:  # a fresh clone has no data/: unpack sgpt's own copy, as `sgpt train` does
        ensure_default_data(args.data)
    text, sha = read_text(args.data)
    print(f"machine: {os.cpu_count()} cores, {trainer.hardware_name('cpu')}; data {args.data} ({len(text):,} chars)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.default_run or args.all:
            default_run(args.data, repeats, Path(tmp), extra)
        if args.optimizers or args.all:
            optimizers(text, sha, repeats, args.budget, Path(tmp), extra)
        if args.all or not (args.optimizers or args.default_run):
            cpu_vs_nanogpt(text, sha, repeats, Path(tmp))


if __name__ == "__main__":
    main()
