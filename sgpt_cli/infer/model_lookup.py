"""Which .onnx file a command runs: --model, else $SGPT_MODEL, else the model shipped with sgpt.

A model you export is never picked up implicitly: `sgpt export` writes export/model.onnx and says
how to use it (`--model export/model.onnx` or `$SGPT_MODEL`), so which model answered is never a
surprise (a freshly exported tiny model used to replace the shipped one silently).

The shipped files (`shakespeare.onnx`, and the weights `shakespeare.pt` for `--init-from`) lie in
the checkout's models/, or where a wheel's data-files put them (<prefix>/share/sgpt/models). A
path the README writes, `models/shakespeare.pt` or `models/shakespeare.onnx`, names the shipped
file from any folder that has no such file of its own (`shipped_or_given`).

What it does not do: open or check the file (sgpt_cli.infer.onnx_model does). It imports neither
onnxruntime nor torch, so every command can call it before deciding what to load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sgpt_cli
from sgpt_cli.errors import SgptError
from sgpt_cli.files import probe

SHIPPED_MODEL_NAME = "shakespeare.onnx"
SHIPPED_WEIGHTS_NAME = "shakespeare.pt"
SHIPPED_NAMES = (SHIPPED_MODEL_NAME, SHIPPED_WEIGHTS_NAME)
EXPORT_DEFAULT = Path("export") / "model.onnx"  # where `sgpt export` writes when given no --out


def shipped_candidates(name: str) -> list[Path]:
    """Where a shipped file may lie: beside the package in a source checkout, then where a wheel's
    data-files put it (<prefix>/share/sgpt/models)."""
    return [
        Path(sgpt_cli.__file__).resolve().parents[1] / "models" / name,
        Path(sys.prefix) / "share" / "sgpt" / "models" / name,
    ]


def shipped_model_candidates() -> list[Path]:
    return shipped_candidates(SHIPPED_MODEL_NAME)


def shipped_file(name: str) -> Path | None:
    return next((c for c in shipped_candidates(name) if c.is_file()), None)


def shipped_or_given(path: str | Path) -> Path:
    """`path`, unless it is `models/shakespeare.pt` or `models/shakespeare.onnx` (as the README
    writes them), relative, and missing here: then the shipped file, wherever sgpt is installed."""
    path = Path(path).expanduser()
    if (not path.is_absolute() and len(path.parts) == 2 and path.parts[0] == "models"
            and path.name in SHIPPED_NAMES and not os.path.lexists(path)):
        return shipped_file(path.name) or path
    return path


def _given(path: Path, how: str) -> Path:
    if probe(path, f"model file ({how})") is None:
        raise SgptError(f"model file {path} ({how}) does not exist; give an .onnx file from `sgpt export`")
    if path.is_dir():
        raise SgptError(f"model path {path} ({how}) is a folder; give an .onnx file from `sgpt export`")
    return path


def find_model(explicit: str | Path | None) -> tuple[Path, str]:
    """(path, source), source one of "--model", "$SGPT_MODEL", "shipped"."""
    if explicit is not None and str(explicit) != "":
        return _given(shipped_or_given(explicit), "--model"), "--model"
    env = os.environ.get("SGPT_MODEL", "")
    if env:
        return _given(shipped_or_given(env), "$SGPT_MODEL"), "$SGPT_MODEL"
    for candidate in shipped_model_candidates():
        if candidate.is_file():
            return candidate, "shipped"
    raise SgptError(
        "no model found: the shipped model is missing from this install; pass --model PATH (an .onnx "
        "file from `sgpt export`) or set $SGPT_MODEL"
    )
