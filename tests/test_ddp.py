"""`sgpt train` under torchrun: two CPU processes with gloo train one model; only rank 0 prints and
writes; each rank draws its own batches; a resumed run picks up every rank's random stream."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import run_env
from sgpt_cli.train import checkpoint, trainer
from sgpt_cli.config import build_train_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "sgpt_cli", "train", "--preset", "tiny", "--eval-iters", "2", "--sample-chars", "8",
           "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=run_env(OMP_NUM_THREADS=1, MASTER_ADDR="127.0.0.1"))


def test_torchrun_with_two_cpu_processes_trains_one_model_and_prints_once(tmp_path, text_file):
    out = tmp_path / "run" / "model.pt"
    proc = torchrun("--data", str(text_file), "--out", str(out), "--max-iters", "20", "--eval-interval", "10",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "sgpt: error" not in proc.stderr

    # rank 0 alone reports: each line once
    assert proc.stdout.count("training ") == 1 and "x2 processes" in proc.stdout
    assert proc.stdout.count("iter     10") == 1 and proc.stdout.count("iter     20") == 1
    assert proc.stdout.count("done: 20 iterations") == 1

    # rank 0 alone writes: one checkpoint, one metrics row per evaluation
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "model.last.pt", "model.loss.png", "model.metrics.jsonl", "model.pt"]
    rows = [json.loads(r) for r in checkpoint.metrics_path(out).read_text().splitlines()]
    assert [r["iter"] for r in rows] == [10, 20]
    ckpt = torch.load(checkpoint.last_path(out), weights_only=True)
    assert ckpt["iter"] == 20 and ckpt["hardware"].endswith("x2")

    # each rank has its own batch stream (seeded by rank), and both are saved
    streams = ckpt["rng_ranks"]
    assert len(streams) == 2 and not torch.equal(streams[0]["batches"], streams[1]["batches"])

    resumed = torchrun("--data", str(text_file), "--out", str(out), "--resume", "--max-iters", "25", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming from iteration 20") == 1
    after = torch.load(checkpoint.last_path(out), weights_only=True)
    assert after["iter"] == 25 and len(after["rng_ranks"]) == 2
    assert [json.loads(r)["iter"] for r in checkpoint.metrics_path(out).read_text().splitlines()] == [10, 20, 25]


def test_each_rank_resumes_its_own_random_stream():
    cfg = build_train_config("tiny", {})
    saved = [{"batches": torch.Generator().manual_seed(100 + r).get_state()} for r in range(2)]
    with torch.random.fork_rng():
        for rank in range(2):
            gen = torch.Generator().manual_seed(cfg.seed + rank)
            trainer._restore_rng({"rng_ranks": saved}, gen, cfg, 40, trainer.Dist(rank, rank, 2))
            assert torch.equal(gen.get_state(), saved[rank]["batches"])
        # more ranks than were saved: the new rank gets a fresh stream of its own, not a copy
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        trainer._restore_rng({"rng_ranks": saved}, gen, cfg, 40, trainer.Dist(2, 2, 3))
        fresh_draws = torch.randint(1000, (8,), generator=gen)
        for state in [s["batches"] for s in saved] + [torch.Generator().manual_seed(cfg.seed + 2).get_state()]:
            other = torch.Generator()
            other.set_state(state)
            assert not torch.equal(fresh_draws, torch.randint(1000, (8,), generator=other))


def test_ctrl_c_under_torchrun_saves_from_rank_0_without_our_traceback(tmp_path, text_file):
    import os
    import signal

    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "sgpt_cli", "train", "--preset", "tiny", "--eval-iters", "2", "--sample-chars", "0",
           "--device", "cpu", "--data", str(text_file), "--out", str(out), "--max-iters", "1000000",
           "--eval-interval", "10"]
    # a session of its own, so the test can do what a terminal's Ctrl-C does: SIGINT to the whole group
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=run_env(OMP_NUM_THREADS=1, MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED=1),
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("iter "):
                break
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = torch.load(checkpoint.last_path(out), weights_only=True)
    assert saved["iter"] >= 10 and len(saved["rng_ranks"]) == 2  # resumable, every rank's stream
    assert f"iteration {saved['iter']} is saved" in stderr and "--resume" in stderr
    # torchrun's agent prints its own traceback (SignalException); none comes from sgpt's code
    assert "sgpt_cli" not in "".join(line for line in stderr.splitlines(True) if line.startswith("  File ")), stderr
    print(stderr)  # shown with -s: what torchrun itself prints, for the README
