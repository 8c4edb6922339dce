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
import stat
import zipfile
from pathlib import Path
from typing import Iterator

import torch

from sgpt_cli.errors import SgptError, first_line, library_warnings_silenced, shown

from sgpt_cli.files import atomic_path, kind_of, probe

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

        python -c "from sgpt_cli.train.checkpoint import strip_training_state as s; s('models/m.pt')"
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
    st = probe(path, "checkpoint")
    if st is None:
        raise SgptError(f"checkpoint {shown(path)} does not exist; train one with `sgpt train --out {shown(path)}`")
    if stat.S_ISDIR(st.st_mode):
        raise SgptError(f"checkpoint path {shown(path)} is a folder; give a .pt file from `sgpt train`")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the zip check forever, a device never end
        raise SgptError(f"checkpoint path {shown(path)} is {kind_of(st.st_mode)}, not a regular file; give a .pt "
                        "file from `sgpt train`")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        raise SgptError(
            f"{path} is not a readable sgpt checkpoint (not a PyTorch file, or cut short); "
            "give a .pt file written by `sgpt train`"
        )
    try:
        with library_warnings_silenced():  # torch 2.14+ warns on a sparse tensor: check_contents refuses it
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
    check_contents(ckpt, path)
    return ckpt


# --- what every reader may take for granted: one check, in `load` --------------------------------

NUMBERS = ("val_loss", "val_loss_estimate", "best_val_loss", "train_seconds")  # floats a reader uses


def check_contents(ckpt: dict, path: Path) -> None:
    """SgptError in one line unless the checkpoint holds what export, `train --init-from` and
    `train --resume` all use without further checks: a model config that builds a valid model, a
    vocabulary of characters that fits it, weights that are dense tensors of exactly the shapes and
    dtypes that model has (a sparse, int64, float16 or complex64 weight is refused, never converted),
    and, when it holds training state, an iteration count, numbers and an optimizer state of the
    right kinds. Shapes are compared on the meta device: no memory for a config that claims much."""
    from sgpt_cli.config import model_config_from_dict, train_config_from_dict
    from sgpt_cli.infer.tokenizer import CharTokenizer

    name = shown(path)

    def damaged(what: str) -> SgptError:
        return SgptError(f"{name} does not hold a model this sgpt can build ({what}); retrain it with `sgpt train`")

    if not isinstance(ckpt["model_config"], dict):
        raise damaged("its model_config is not a table of settings")
    try:
        mcfg = model_config_from_dict(ckpt["model_config"])
        mcfg.validate()
    except (TypeError, ValueError, SgptError) as exc:
        raise damaged(f"its model_config: {first_line(exc, 100)}") from None
    try:
        vocab = CharTokenizer.from_json(ckpt["vocab"])
    except SgptError as exc:
        raise damaged(str(exc)) from None
    if vocab.vocab_size != mcfg.vocab_size:
        raise damaged(f"{vocab.vocab_size} characters in the vocabulary, {mcfg.vocab_size} in the model")
    try:
        check_weights(mcfg, ckpt["model"])
    except ValueError as exc:
        raise damaged(str(exc)) from None
    def damaged_state(what: str) -> SgptError:
        return SgptError(f"{name} holds a damaged training record ({what}); give a checkpoint written by "
                         "`sgpt train`, or start over with --force")

    damaged = damaged_state  # the rest is the training record beside the model
    if "iter" in ckpt and (isinstance(ckpt["iter"], bool) or not isinstance(ckpt["iter"], int) or ckpt["iter"] < 0):
        raise damaged(f"its iteration count is {_cut(ckpt['iter'])}, not a whole number")
    for key in NUMBERS:
        value = ckpt.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise damaged(f"its {key} is {_cut(value)}, not a number")
    if "train_config" in ckpt:
        try:
            if not isinstance(ckpt["train_config"], dict):
                raise TypeError("not a table of settings")
            train_config_from_dict(ckpt["train_config"]).validate()
        except (TypeError, ValueError, SgptError) as exc:
            raise damaged(f"its train_config: {first_line(exc, 100)}") from None
    if "optimizer" in ckpt:
        check_optimizer(ckpt["optimizer"], damaged)


def _cut(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_weights(mcfg, state) -> None:
    """ValueError unless `state` has exactly the tensors of GPT(mcfg): names, shapes and dtypes,
    dense (strided) ones only. (export's own shape check says the same; this one is every reader's.)"""
    from sgpt_cli.train.model import GPT

    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError("its weights are not a state dict")
    # the claim against what is stored, before anything is built: the config's limits (ModelConfig.validate)
    # bound the build, and a file claiming more blocks or another width than it holds is refused here
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if len(blocks) != mcfg.n_layer:
        raise ValueError(f"the config claims {mcfg.n_layer:,} blocks, the file holds weights for {len(blocks):,}")
    embedding = state.get("wte.weight")
    if isinstance(embedding, torch.Tensor) and tuple(embedding.shape) != (mcfg.vocab_size, mcfg.n_embd):
        raise ValueError(f"the config implies wte.weight of shape {[mcfg.vocab_size, mcfg.n_embd]}, the file "
                         f"holds {list(embedding.shape)}")
    try:
        with torch.device("meta"):  # shapes only: a claim of n_embd 4096 costs nothing to check
            expected = GPT(mcfg).state_dict()
    except (RuntimeError, MemoryError, OverflowError) as exc:  # sizes torch's arithmetic cannot hold
        raise ValueError(f"its shape cannot be built ({first_line(exc, 80)})") from None
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{_cut(key)} is {type(value).__name__}, not a tensor")
        if value.layout != torch.strided:
            raise ValueError(f"{_cut(key)} is a {str(value.layout).replace('torch.', '')} tensor; sgpt writes dense ones")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"no weights for {missing[0]}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"weights {_cut(unexpected[0])} that the config's model does not have")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"the config implies {key} of shape {list(want.shape)}, the file holds {list(got.shape)}")
        if got.dtype != want.dtype:
            raise ValueError(f"{key} is {str(got.dtype).replace('torch.', '')}, the model's weights are "
                             f"{str(want.dtype).replace('torch.', '')}; sgpt converts no weights")


def check_optimizer(state, damaged) -> None:
    """An optimizer state's shape as sgpt_cli.train.optim reads it: {"chained": [one per optimizer]} (or
    one, from before the chain), each as torch's load_state_dict reads it: {"state": {...},
    "param_groups": [{"params": [ids], ...}, ...]} (load_state_dict itself checks the sizes)."""
    states = state.get("chained", [state]) if isinstance(state, dict) else None
    if not isinstance(states, list) or not states:
        raise damaged("its optimizer state is not one sgpt wrote")
    for one in states:
        if not isinstance(one, dict) or not isinstance(one.get("state"), dict) \
                or not isinstance(one.get("param_groups"), list):
            raise damaged("its optimizer state is not one sgpt wrote")
        for group in one["param_groups"]:
            if not isinstance(group, dict) or not isinstance(group.get("params"), list):
                raise damaged("its optimizer state is not one sgpt wrote")


def vocab_from(ckpt: dict) -> list[str]:
    return json.loads(ckpt["vocab"])
