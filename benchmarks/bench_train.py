"""Training at equal wall time: our `cpu` preset against the `nanogpt-cpu` baseline.

    python benchmarks/bench_train.py [--data PATH] [--repeats N] [--threads N]

Runs nanoGPT's CPU recipe (preset `nanogpt-cpu`, 2000 iterations) and times it; then runs the
`cpu` preset with `--time-budget` set to that exact time. Both final models are scored on the whole
validation split (non-overlapping windows of their block size, the protocol of `sgpt eval`), besides
the trainer's own 20-batch estimate. With --repeats N > 1 the pair runs N times and medians are
printed. Run it on an otherwise idle machine: both runs share whatever else is running.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgpt_cli import checkpoint, trainer  # noqa: E402
from sgpt_cli.config import build_train_config, model_config_from_dict  # noqa: E402
from sgpt_cli.data import DEFAULT_DATA, read_text, split_text  # noqa: E402
from sgpt_cli.model import GPT  # noqa: E402
from sgpt_cli.tokenizer import CharTokenizer  # noqa: E402


@torch.no_grad()
def full_val_loss(ckpt_path: Path, text: str) -> float:
    ckpt = checkpoint.load(ckpt_path)
    model = GPT(model_config_from_dict(ckpt["model_config"])).eval()
    model.load_state_dict(ckpt["model"])
    ids = torch.from_numpy(CharTokenizer.from_json(ckpt["vocab"]).encode(split_text(text)[1]))
    T = model.cfg.block_size
    n = (len(ids) - 1) // T
    total = 0.0
    for b in range(0, n, 64):
        starts = torch.arange(b, min(b + 64, n)) * T
        win = ids[starts[:, None] + torch.arange(T + 1)]
        logits, _ = model(win[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), win[:, 1:].reshape(-1), reduction="sum").item()
    return total / (n * T)


def run(preset: str, overrides: dict, text: str, sha: str, out: Path) -> dict:
    cfg = build_train_config(preset, {"sample_chars": 0, **overrides})
    t0 = time.perf_counter()
    result = trainer.train(cfg, text, sha, out, device="cpu")
    wall = time.perf_counter() - t0
    return {"preset": preset, "iters": result.iters, "train_seconds": result.elapsed, "wall": wall,
            "est_val": result.best_val_loss, "val": full_val_loss(out, text)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text, sha = read_text(args.data)
    print(f"machine: {trainer.hardware_name('cpu')}; data {args.data} ({len(text):,} chars)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            base = run("nanogpt-cpu", {}, text, sha, Path(tmp) / f"base{r}.pt")
            ours = run("cpu", {"time_budget": base["train_seconds"], "max_iters": 10**9}, text, sha, Path(tmp) / f"cpu{r}.pt")
            rows.append((base, ours))
            for row in (base, ours):
                print(f"  run {r + 1}: {row['preset']:<12} {row['iters']:>6} iters in {row['train_seconds']:6.1f} s"
                      f"  val (full split) {row['val']:.4f}  val (trainer estimate) {row['est_val']:.4f}")
    med = lambda k, i: statistics.median(pair[i][k] for pair in rows)  # noqa: E731
    print(f"\nmedian of {len(rows)} run(s) at equal wall time ({med('train_seconds', 0):.1f} s):")
    print(f"  nanogpt-cpu  val {med('val', 0):.4f}  ({med('iters', 0):.0f} iters)")
    print(f"  cpu          val {med('val', 1):.4f}  ({med('iters', 1):.0f} iters)")
    print(f"  difference   {med('val', 0) - med('val', 1):+.4f} nats/char in favour of cpu"
          f" (perplexity {math.exp(med('val', 0)):.2f} -> {math.exp(med('val', 1)):.2f})")


if __name__ == "__main__":
    main()
