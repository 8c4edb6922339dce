"""Which .onnx file a command runs: --model, else $SGPT_MODEL, else ./export/model.onnx, else the
model shipped with sgpt.

What it does not do: open or check the file (sgpt_cli.onnx_model does). It imports neither
onnxruntime nor torch, so every command can call it before deciding what to load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sgpt_cli
from sgpt_cli.errors import SgptError, probe

SHIPPED_MODEL_NAME = "shakespeare.onnx"
EXPORT_DEFAULT = Path("export") / "model.onnx"  # where `sgpt export` writes when given no --out


def shipped_model_candidates() -> list[Path]:
    """Where the shipped model may lie: beside the package in a source checkout, then where a wheel's
    data-files put it (<prefix>/share/sgpt/models)."""
    return [
        Path(sgpt_cli.__file__).resolve().parents[1] / "models" / SHIPPED_MODEL_NAME,
        Path(sys.prefix) / "share" / "sgpt" / "models" / SHIPPED_MODEL_NAME,
    ]


def _given(path: Path, how: str) -> Path:
    if probe(path, f"model file ({how})") is None:
        raise SgptError(f"model file {path} ({how}) does not exist; give an .onnx file from `sgpt export`")
    if path.is_dir():
        raise SgptError(f"model path {path} ({how}) is a folder; give an .onnx file from `sgpt export`")
    return path


def find_model(explicit: str | Path | None) -> tuple[Path, str]:
    """(path, source), source one of "--model", "$SGPT_MODEL", "export/model.onnx", "shipped"."""
    if explicit is not None and str(explicit) != "":
        return _given(Path(explicit).expanduser(), "--model"), "--model"
    env = os.environ.get("SGPT_MODEL", "")
    if env:
        return _given(Path(env).expanduser(), "$SGPT_MODEL"), "$SGPT_MODEL"
    if EXPORT_DEFAULT.is_file():
        return EXPORT_DEFAULT, "export/model.onnx"
    for candidate in shipped_model_candidates():
        if candidate.is_file():
            return candidate, "shipped"
    raise SgptError(
        "no model found: export one with `sgpt export CHECKPOINT` (it writes export/model.onnx), "
        "or pass --model PATH or set $SGPT_MODEL"
    )
