"""Does `--precision auto` pick the faster precision on this machine? `sgpt train` runs of auto,
float32 and bfloat16, interleaved (the order turned each round, so a machine that slows down or warms
up is shared), each with the same time budget; iterations per second of each, and auto's ratio to
the faster of the two (target: 0.95 or more).

    python benchmarks/bench_precision.py                       # 30 s runs, two rounds: ~5 minutes
    python benchmarks/bench_precision.py --budget 3 --repeats 1 --train-args "--n-layer 1 --batch-size 4"  # smoke

Each run is a fresh `sgpt train` process on tiny-shakespeare (or --data) (the cpu preset unless --train-args says
otherwise), in its own folder; auto's runs share one fresh $SGPT_HOME, so the first measures (the
probe, before the run's clock starts) and the second reuses the verdict, as a user's second run does.
Iterations per second are the resumable checkpoint's iterations over its training seconds (the
budget's time: estimates and the final measurement included, the same for all three).
Run on an otherwise idle machine: everything else running shares the cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sgpt_cli.train import checkpoint  # noqa: E402
from sgpt_cli.train.precision import cpu_name  # noqa: E402

KINDS = ("auto", "float32", "bfloat16")


def train(kind: str, budget: float, data: Path | None, folder: Path, home: Path, extra: list[str]) -> dict:
    folder.mkdir(parents=True)
    out = folder / "m.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "SGPT_HOME": str(home)}
    cmd = [sys.executable, "-m", "sgpt_cli", "train", "--precision", kind, "--time-budget", f"{budget:g}",
           "--sample-chars", "0", "--device", "cpu", "--out", str(out), *extra]
    if data is not None:
        cmd += ["--data", str(data.resolve())]
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"sgpt train --precision {kind} failed:\n{done.stderr}")
    last = checkpoint.load(checkpoint.last_path(out))
    why = next((line.strip() for line in done.stdout.splitlines() if line.startswith("  precision ")), "")
    return {"iters": int(last["iter"]), "seconds": float(last["train_seconds"]), "precision": last.get("precision"),
            "why": why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="the text (default: tiny-shakespeare, as `sgpt train` finds or unpacks it)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per run (sgpt train --time-budget)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the three")
    ap.add_argument("--train-args", default="", help="more `sgpt train` flags, one string (a smoke test's small model)")
    args = ap.parse_args()
    extra = shlex.split(args.train_args)
    print(f"machine: {os.cpu_count()} cores, CPU {cpu_name()}; {args.budget:g} s runs, {args.repeats} rounds"
          + (f"; sgpt train {args.train_args}" if extra else ""), flush=True)
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"  # auto's verdicts: measured in its first run, reused in the next
        for r in range(args.repeats):
            order = KINDS[r % 3:] + KINDS[:r % 3]
            for kind in order:
                row = train(kind, args.budget, args.data, Path(tmp) / f"{kind}{r}", home, extra)
                rate = row["iters"] / row["seconds"] if row["seconds"] > 0 else 0.0
                rates[kind].append(rate)
                ran = f" -> {row['precision']}" if kind == "auto" else ""
                print(f"  round {r + 1}: {kind:<8}{ran:<12} {row['iters']:>6} iterations in {row['seconds']:5.1f} s: "
                      f"{rate:6.2f}/s" + (f"  [{row['why']}]" if kind == "auto" and row["why"] else ""), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    faster = max(("float32", "bfloat16"), key=lambda k: med[k])
    ratio = med["auto"] / med[faster] if med[faster] > 0 else float("nan")
    gain = f"; bfloat16/float32 {med['bfloat16'] / med['float32']:.2f}x" if med["float32"] > 0 else ""
    print(f"medians of {args.repeats}: " + ", ".join(f"{k} {med[k]:.2f}/s" for k in KINDS) + gain)
    print(f"auto: {ratio:.3f} of the faster ({faster}); target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
