"""Checkpoints: one dict of tensors and plain values, written atomically, read with weights_only.

What it holds: saving and loading, the names of the files beside a checkpoint (NAME.last.pt,
metrics, loss curve, lock), `strip_training_state` (a full checkpoint to a small weights-only one),
and the lock that keeps two trainings off one --out.

`torch.load(weights_only=True)` refuses anything that would run code while unpickling, so a
malicious file fails to load and its payload never executes. The format is versioned; a reader
refuses versions it does not know.

What it does not do: decide when to save (the trainer does).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import pickle
import socket
import zipfile
from pathlib import Path
from typing import Iterator

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


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".lock")


class WriteError(SgptError):
    """A checkpoint could not be written (a full disk, a vanished folder); the old file is intact."""


def save(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        with atomic_path(Path(path)) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch's zip writer reports a failed write as RuntimeError
        if "write" not in str(exc) and "unexpected pos" not in str(exc):
            raise
        raise WriteError(f"cannot write {path}: {_disk_reason(path)}") from None


def _disk_reason(path: Path) -> str:
    """torch says "unexpected pos"; say what it usually means, checked where possible."""
    with contextlib.suppress(OSError):
        st = os.statvfs(Path(path).parent)
        if st.f_bavail * st.f_frsize < 64 << 20:
            return os.strerror(errno.ENOSPC)
    return "the write failed (is the disk full?)"


TRAINING_STATE = ("optimizer", "rng", "rng_ranks")


def strip_training_state(src: Path, dst: Path | None = None) -> Path:
    """Write `src` without optimizer state and random streams (weights, vocabulary, configs and
    val loss stay): what to ship or share, and what `sgpt train --init-from` and `sgpt export` need.

        python -c "from sgpt_cli.checkpoint import strip_training_state as s; s('models/m.pt')"
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    ckpt = load(src)
    save(dst, {k: v for k, v in ckpt.items() if k not in TRAINING_STATE and k not in ("format", "version")})
    return dst


@contextlib.contextmanager
def training_lock(out: Path) -> Iterator[None]:
    """Hold NAME.lock (fcntl) for the whole run, so a second training on the same --out refuses at
    once, naming the first. The lock dies with its process, so a crash never leaves it held."""
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl; no lock
        yield
        return
    path = lock_path(out)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SgptError(_held_message(out, os.pread(fd, 300, 0))) from None
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still held: a waiting run then finds no holder to name
    finally:
        os.close(fd)


def check_unlocked(out: Path) -> None:
    """Refuse early (before any other check or file) when another training holds --out's lock."""
    try:
        import fcntl
    except ImportError:
        return
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise SgptError(_held_message(out, os.pread(fd, 300, 0))) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _held_message(out: Path, holder: bytes) -> str:
    who = holder.decode("utf-8", "replace").strip() or "another process"
    return f"{out} is being trained by another run ({who}); wait for it to end or choose another --out"


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
