"""Where a training runs: the device (`--device`: auto is CUDA when PyTorch sees a GPU) and the
machine's name as the report and the checkpoint give it (the precision: sgpt_cli.train.precision).

What it does not do: move anything to the device (sgpt_cli.train.trainer.setup does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sgpt_cli.errors import SgptError, UsageError
from sgpt_cli.train.precision import cpu_name

if TYPE_CHECKING:  # a run's ranks (resolve_device takes them, unused)
    from sgpt_cli.train.distributed import Dist


def resolve_device(requested: str, dist: Dist | None = None) -> str:
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {requested!r})")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise SgptError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    n = torch.get_num_threads()
    return f"{cpu_name()}, {n} thread{'' if n == 1 else 's'}"
