"""Checkpoints: one dict of tensors and plain values, written atomically, read with weights_only.

`torch.load(weights_only=True)` refuses anything that would run code while unpickling, so a
malicious file fails to load and its payload never executes. The format is versioned; a reader
refuses versions it does not know.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from sgpt_cli.errors import SgptError, atomic_path, first_line, probe

FORMAT = "sgpt-checkpoint"
VERSION = 1


def last_path(out: Path) -> Path:
    """Where the latest (not necessarily best) resumable state lives, beside the best checkpoint."""
    out = Path(out)
    return out.with_name(out.stem + ".last" + (out.suffix or ".pt"))


def metrics_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".metrics.jsonl")


def curve_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".loss.png")


def save(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if probe(path, "checkpoint") is None:
        raise SgptError(f"checkpoint {path} does not exist; train one with `sgpt train --out {path}`")
    if path.is_dir():
        raise SgptError(f"checkpoint path {path} is a folder; give a .pt file from `sgpt train`")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        raise SgptError(
            f"{path} is not a readable sgpt checkpoint (not a PyTorch file, or cut short); "
            "give a .pt file written by `sgpt train`"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise SgptError(
            f"refused to load {path}: it holds objects that could run code (not a plain sgpt checkpoint)"
        ) from None
    except Exception as exc:  # zip errors, truncation, garbage: torch raises many kinds
        raise SgptError(f"{path} is not a readable sgpt checkpoint ({first_line(exc, 120)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SgptError(f"{path} is not an sgpt checkpoint; give a .pt file written by `sgpt train`")
    if ckpt.get("version") != VERSION:
        raise SgptError(
            f"{path} is sgpt checkpoint format {ckpt.get('version')!r}; this sgpt reads format "
            f"{VERSION}: upgrade sgpt or retrain"
        )
    for key in ("model", "model_config", "vocab"):
        if key not in ckpt:
            raise SgptError(f"{path} is an incomplete sgpt checkpoint (no {key!r}); retrain it")
    return ckpt


def vocab_from(ckpt: dict) -> list[str]:
    return json.loads(ckpt["vocab"])
