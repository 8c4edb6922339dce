"""Where and in what precision a training runs: the device (`--device`: auto is CUDA when PyTorch
sees a GPU), the matmuls' precision (`--precision`: auto is bfloat16 where it is faster) and the
machine's name as the report and the checkpoint give it.

What it does not do: move anything to the device (sgpt_cli.train.trainer.setup does).
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import torch

from sgpt_cli.errors import SgptError, UsageError

if TYPE_CHECKING:  # a run's ranks (resolve_device takes them, unused)
    from sgpt_cli.train.distributed import Dist


def resolve_device(requested: str, dist: Dist | None = None) -> str:
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {requested!r})")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise SgptError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"


# the narrowest model whose steps bfloat16 makes faster on an AMX CPU (forward + backward, one batch of
# the cpu preset's size: width 32 0.66x, 64 1.11x, 96 1.23x, 128 1.42x): below it, the casts cost more
BF16_CPU_MIN_WIDTH = 64


def resolve_precision(requested: str, device: str, n_embd: int) -> str:
    """float32 or bfloat16: `auto` is bfloat16 on CUDA, and on a CPU with AMX tiles (whose bf16 matmuls
    run 4x float32's) for a model of BF16_CPU_MIN_WIDTH or wider; float32 on other CPUs (bf16 there
    is emulated, slower than float32)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bfloat16"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private in torch 2.x: absent = no
    return "bfloat16" if amx() and n_embd >= BF16_CPU_MIN_WIDTH else "float32"


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    n = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {n} thread{'' if n == 1 else 's'}"
