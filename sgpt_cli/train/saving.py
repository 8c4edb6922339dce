"""What a training writes as it goes: the best checkpoint (`--out`: weights only, enough to export,
fine-tune or share), the resumable one (`NAME.last.pt`: with the optimizer and every rank's random
streams), both in one critical section that a stop request cannot cut, the metrics log, and, when a
write fails, what is left on disk with advice that leads somewhere.

What it does not do: decide when to save (sgpt_cli.train.trainer does) or how a file is written
(sgpt_cli.train.checkpoint: whole or not at all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sgpt_cli.errors import SgptError
from sgpt_cli.train import checkpoint
from sgpt_cli.train.device import hardware_name
from sgpt_cli.train.stop import Stop

if TYPE_CHECKING:  # the run whose state these write
    from sgpt_cli.train.trainer import Run


def weights(run: Run, val_loss: float, kind: str) -> dict:
    """What the best checkpoint holds: enough to export, fine-tune or share; no optimizer state."""
    return {
        "model": run.raw_model.state_dict(),
        "model_config": dataclasses.asdict(run.raw_model.cfg),
        "train_config": dataclasses.asdict(run.cfg),
        "vocab": run.tokenizer.to_json(),
        "iter": run.it,
        "val_loss": val_loss,
        "val_loss_kind": kind,  # "estimate" (eval_iters batches) or "whole split"
        "val_loss_estimate": run.last_val,
        "best_val_loss": run.best_val,
        "train_seconds": run.elapsed,
        "hardware": f"{hardware_name(run.device)} x{run.dist.world}",
        "precision": run.precision,  # what train_config's precision (auto, say) resolved to
        **run.extra,
    }


def resumable(run: Run, rng: list[dict]) -> dict:
    """What NAME.last.pt holds: the weights plus everything an exact resume needs."""
    return {**weights(run, run.last_val, "estimate"), "optimizer": run.optimizer.state_dict(),
            "rng": rng[0]["batches"], "rng_ranks": rng}


def save(run: Run, stop: Stop, rng: list[dict], best: bool) -> None:
    """Write the best checkpoint (when this is the best so far) and the resumable one, together:
    a stop request waits until both are whole, so --out and NAME.last.pt never disagree."""
    t0 = time.perf_counter()
    with stop.critical(), _disk_errors(run):
        if best:
            checkpoint.save(run.out, weights(run, run.last_val, "estimate"))
            run.best_iter = run.it
        checkpoint.save(checkpoint.last_path(run.out), resumable(run, rng))
        run.saved_iter = run.it
    run.pace.save_seconds = (time.perf_counter() - t0) / (2 if best else 1)


@contextlib.contextmanager
def _disk_errors(run: Run) -> Iterator[None]:
    """A full disk or a vanished folder while saving: one line that says what is still safe."""
    try:
        yield
    except checkpoint.WriteError as exc:
        raise SgptError(f"{exc} ({on_disk(run)})") from None


def on_disk(run: Run) -> str:
    """What a failed save leaves, said from the files themselves, with advice that leads somewhere."""
    last = checkpoint.last_path(run.out)
    if run.saved_iter is not None and last.exists():
        return (f"iteration {run.saved_iter} is still safe in {last}; free some space, then continue "
                "with --resume")
    if run.best_iter is not None and Path(run.out).exists():
        return (f"{run.out} holds the weights of iteration {run.best_iter} but no resumable state; free some "
                "space, then start over with --force, or fine-tune those weights with --init-from "
                f"{run.out} --out ANOTHER.pt")
    return "nothing was saved yet; free some space, then start again"


def log_metrics(run: Run, row: dict) -> None:
    try:
        with open(checkpoint.metrics_path(run.out), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as exc:
        with _disk_errors(run):
            raise checkpoint.WriteError(f"cannot write {checkpoint.metrics_path(run.out)}: {exc.strerror or exc}") from None
