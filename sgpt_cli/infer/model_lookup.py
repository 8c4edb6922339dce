"""Which .onnx file a command runs: --model, else $SGPT_MODEL, else the model shipped with sgpt; and
the one way every command opens it (`open_model`: the file found, loaded, checked, an Engine over it).

A model you export is never picked up implicitly: `sgpt export` writes export/NAME.onnx (named after the checkpoint) and says
how to use it (`--model export/model.onnx` or `$SGPT_MODEL`), so which model answered is never a
surprise (picking up a fresh export unasked would replace the shipped model silently).

The shipped files (`shakespeare.onnx`, and the weights `shakespeare.pt` for `--init-from`) lie in
the checkout's models/, or where a wheel's data-files put them (<prefix>/share/sgpt/models). A
path the README writes, `models/shakespeare.pt` or `models/shakespeare.onnx`, names the shipped
file from any folder that has no such file of its own (`shipped_or_given`).

What it does not do: check the file (sgpt_cli.infer.onnx_model does). It imports neither onnxruntime
nor torch until `open_model` is called, so every command can look a model up before deciding what to
load.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sgpt_cli
from sgpt_cli.errors import SgptError
from sgpt_cli.files import probe

SHIPPED_MODEL_NAME = "shakespeare.onnx"
SHIPPED_WEIGHTS_NAME = "shakespeare.pt"
SHIPPED_NAMES = (SHIPPED_MODEL_NAME, SHIPPED_WEIGHTS_NAME)


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


@dataclass
class OpenModel:
    """A model ready to run: the engine over it, which file it is and how it was chosen."""

    engine: Any  # sgpt_cli.infer.engine.Engine (imported when a model is opened, not with this module)
    path: Path
    source: str  # "--model", "$SGPT_MODEL" or "shipped"
    load_s: float  # seconds to find, check and load it

    @property
    def model(self):
        return self.engine.model


def open_model(choice: str | Path | None, device: str = "auto", threads: int | None = None) -> OpenModel:
    """The model `choice` names (`find_model`'s order: --model, else $SGPT_MODEL, else the shipped
    one), loaded on `device` with `threads` (None: the default), an Engine over it."""
    from sgpt_cli.settings import DEVICE

    DEVICE.check(device)
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel

    t0 = time.perf_counter()
    path, source = find_model(choice)
    engine = Engine(OnnxModel(path, device=device, threads=threads))
    return OpenModel(engine, path, source, time.perf_counter() - t0)
