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
from sgpt_cli.model_lookup import SHIPPED_MODEL_NAME, shipped_model_candidates
from sgpt_cli.onnx_model import OnnxModel

SHIPPED = REPO / "models" / SHIPPED_MODEL_NAME
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# The suite never reads anything outside the checkout nor the network; to also check the shipped
# model's recorded validation loss, point this at a copy of tiny-shakespeare (opt-in).
CORPUS = Path(os.environ.get("SGPT_TEST_CORPUS", "")) if os.environ.get("SGPT_TEST_CORPUS") else None


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


@pytest.mark.skipif(CORPUS is None, reason="opt-in: set SGPT_TEST_CORPUS to tiny-shakespeare's path")
def test_eval_reproduces_the_validation_loss_in_its_metadata():
    assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == TINY_SHAKESPEARE_SHA256
    proc = subprocess.run([*SGPT, "eval", "--model", str(SHIPPED), "--data", str(CORPUS), "--split", "val",
                           "--json"], capture_output=True, text=True, env=run_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)
    claimed = float(OnnxModel(SHIPPED, device="cpu").meta["sgpt.val_loss"])
    assert abs(measured["loss"] - claimed) < 1e-3, (measured, claimed)
