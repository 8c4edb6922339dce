"""Shared fixtures: one tiny trained checkpoint and its ONNX export, built once per test run.

Tests never touch the user's real home: SGPT_HOME points into a temporary folder for every test.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background by a non-interactive shell (`cmd &`, `nohup ... &`) inherits
# SIGINT ignored, and so would every child it starts: the Ctrl-C tests' signals would do nothing.
# A caught signal is reset to its default in an exec'd child, so catching it here gives the children
# the default (Python's KeyboardInterrupt), as a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
PLAY = Path(__file__).resolve().parent / "data" / "play.txt"  # made by tests/data/make_play.py


def short_text(n_chars: int = 40_000) -> str:
    """The tests' own play script (every character of tiny-shakespeare's alphabet; never the corpus,
    and never anything outside this checkout: the suite runs in a clone with nothing beside it)."""
    return PLAY.read_text(encoding="utf-8")[:n_chars]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "sgpt-home"
    monkeypatch.setenv("SGPT_HOME", str(home))
    monkeypatch.delenv("SGPT_MODEL", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return home


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(short_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, text_file) -> Path:
    """A 2-layer, 32-wide model trained for a few dozen steps: seconds on a laptop."""
    import torch

    from sgpt_cli.train import trainer

    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation
    from sgpt_cli.config import build_train_config
    from sgpt_cli.data import read_text

    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    cfg = build_train_config("tiny", {"max_iters": 40, "eval_interval": 20, "sample_chars": 0})
    text, sha = read_text(text_file)
    trainer.train(cfg, text, sha, out, device="cpu")
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_ckpt) -> Path:
    from sgpt_cli.train.onnx_export import export

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export(tiny_ckpt, out)
    return out


@pytest.fixture(scope="session")
def wide_onnx(tmp_path_factory, text_file) -> Path:
    """Random weights with a window of 112 (not a multiple of the engine's SPAN_STEP): what the tiny
    model's window of 32 cannot show, a cache span that grows 32, 64, 96, 112; and grouped-query
    attention, where the tiny model has a key/value head per query head. Exported (and so
    verified against PyTorch) by `sgpt export`'s own function."""
    import dataclasses

    import torch

    from sgpt_cli.config import ModelConfig, TrainConfig
    from sgpt_cli.infer.tokenizer import CharTokenizer
    from sgpt_cli.train import checkpoint
    from sgpt_cli.train.onnx_export import export
    from sgpt_cli.train.model import GPT

    torch.manual_seed(0)
    chars = sorted(set(text_file.read_text(encoding="utf-8")))
    # grouped-query attention (4 query heads, 2 key/value heads): the tiny model covers one per head
    cfg = ModelConfig(vocab_size=len(chars), block_size=112, n_layer=2, n_head=4, n_embd=32, n_kv_head=2)
    folder = tmp_path_factory.mktemp("wide")
    checkpoint.save(folder / "wide.pt", {
        "model": GPT(cfg).state_dict(), "model_config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(TrainConfig()), "vocab": CharTokenizer(chars).to_json(),
        "iter": 0, "val_loss": None, "data_sha256": "", "train_seconds": 0.0, "hardware": "random weights"})
    export(folder / "wide.pt", folder / "wide.onnx")
    return folder / "wide.onnx"


def run_env(**extra) -> dict:
    """Environment for a subprocess running sgpt from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


SGPT = [sys.executable, "-m", "sgpt_cli"]


# training tests: a few quick evaluations, no samples; every run takes well under a second of compute
FAST = {"eval_iters": 2, "sample_chars": 0}
FAST_FLAGS = ["--preset", "tiny", "--eval-iters", "2", "--sample-chars", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on a busy 2-core machine are many times slower than one at these sizes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
