"""The model that ships in models/: present, small enough for git, an sgpt model trained on
tiny-shakespeare, the default when the user has none of their own, and as good as its metadata says."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SGPT, run_env
from sgpt_cli.infer.model_lookup import SHIPPED_MODEL_NAME, shipped_model_candidates
from sgpt_cli.infer.onnx_model import OnnxModel

SHIPPED = REPO / "models" / SHIPPED_MODEL_NAME
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# The suite never reads anything outside the checkout nor the network; the shipped model's recorded
# validation loss is checked on the copy of tiny-shakespeare inside the package (or on
# $SGPT_TEST_CORPUS when it names another copy).
CORPUS = Path(os.environ.get("SGPT_TEST_CORPUS", "")) if os.environ.get("SGPT_TEST_CORPUS") else None


def offline_env(home: Path, **extra) -> dict:
    """An environment in which any download would fail at once: every proxy is a closed port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    return run_env(SGPT_HOME=home, http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed,
                   HTTPS_PROXY=closed, no_proxy="", NO_PROXY="", **extra)


def test_the_shipped_model_is_in_the_checkout_and_under_25_mb():
    assert shipped_model_candidates()[0] == SHIPPED
    assert SHIPPED.is_file() and SHIPPED.stat().st_size <= 25 * 1024 * 1024


def test_its_metadata_records_data_loss_training_and_hardware():
    meta = OnnxModel(SHIPPED, device="cpu").meta
    assert meta["sgpt.data_sha256"] == TINY_SHAKESPEARE_SHA256
    assert 0.5 < float(meta["sgpt.val_loss"]) < 1.7
    assert float(meta["sgpt.train_seconds"]) > 0 and meta["sgpt.hardware"]
    assert json.loads(meta["sgpt.train_config"])["n_layer"] == int(meta["sgpt.n_layer"])


def test_complete_uses_it_when_the_user_has_no_model(tmp_path):
    proc = subprocess.run([*SGPT, "complete", "-n", "40", "--seed", "1", "--verbose", "ROMEO:"], cwd=tmp_path,
                          capture_output=True, text=True, env=run_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 40 and str(SHIPPED) in proc.stderr


def test_eval_from_any_folder_offline_reproduces_the_recorded_validation_loss(tmp_path):
    """Defects 7, 8, 10 and 11 at once: `sgpt eval` from a folder that is no checkout, with no
    network, scores the shipped model (whatever export/ holds there) on tiny-shakespeare unpacked
    from the package into $SGPT_HOME/data, and agrees with the figure recorded in the file."""
    work, home = tmp_path / "work", tmp_path / "home"
    (work / "export").mkdir(parents=True)
    (work / "export" / "model.onnx").write_bytes(b"not a model: never picked up unasked")
    args = ["--data", str(CORPUS), "--split", "val"] if CORPUS else []
    proc = subprocess.run([*SGPT, "eval", "--json", *args], capture_output=True, text=True, cwd=work,
                          env=offline_env(home), stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)
    assert measured["model"] == str(SHIPPED) and measured["model_source"] == "shipped"
    assert measured["same_text"] is True and measured["split"] == "val"
    if CORPUS is None:
        written = home / "data" / "tinyshakespeare.txt"
        assert measured["data"] == str(written)
        assert hashlib.sha256(written.read_bytes()).hexdigest() == TINY_SHAKESPEARE_SHA256
    assert sorted(p.name for p in work.iterdir()) == ["export"]  # nothing written into the folder
    claimed = float(OnnxModel(SHIPPED, device="cpu").meta["sgpt.val_loss"])
    assert measured["recorded_val_loss"] == claimed
    # the same protocol; an int8 file's figure moves by a few 1e-5 between CPUs' int8 kernels
    assert abs(measured["recorded_minus_measured"]) < 2e-4, measured


def test_the_readme_paths_of_the_shipped_files_work_from_any_folder(tmp_path, monkeypatch):
    """`--init-from models/shakespeare.pt` and `--model models/shakespeare.onnx`, as the
    README writes them, name the shipped files from a folder that has no models/ of its own."""
    from sgpt_cli.infer.model_lookup import find_model, shipped_or_given

    monkeypatch.chdir(tmp_path)
    assert shipped_or_given("models/shakespeare.pt") == REPO / "models" / "shakespeare.pt"
    assert find_model("models/shakespeare.onnx") == (SHIPPED, "--model")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "shakespeare.pt").write_bytes(b"mine")
    assert shipped_or_given("models/shakespeare.pt") == Path("models/shakespeare.pt")  # yours comes first
    assert shipped_or_given("models/other.pt") == Path("models/other.pt")
