"""Training on several processes (`torchrun`, PyTorch DDP): joining the process group, the
collectives the loop needs (its ranks agree on when to stop and share rank 0's clock; the loss
averaged over ranks), every rank's random streams gathered and restored, and leaving the group.
Each rank draws its own batches; only rank 0 writes or reports (sgpt_cli.train.trainer).

What it does not do: run steps or save (the trainer does).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sgpt_cli.config import TrainConfig

if TYPE_CHECKING:  # the run whose clock and group these read
    from sgpt_cli.train.trainer import Run


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return d


# --- random streams and DDP ---

def _rng_state(gen: torch.Generator, device: str) -> dict:
    """This process's random streams: the batch sampler's, and torch's own (dropout)."""
    state = {"batches": gen.get_state(), "torch": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["batches"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather_rng(gen: torch.Generator, device: str, dist: Dist) -> list[dict]:
    """Every rank's random streams, in rank order (a collective: all ranks must call it)."""
    mine = _rng_state(gen, device)
    if dist.world <= 1:
        return [mine]
    import torch.distributed as tdist

    states: list = [None] * dist.world
    tdist.all_gather_object(states, mine)
    return states


def _restore_rng(resume: dict, gen: torch.Generator, cfg: TrainConfig, it: int, dist: Dist) -> None:
    """Continue each rank's random streams where the saved run left them.

    When the world size changed, rank 0 continues the saved rank 0 streams and the other ranks
    start fresh streams derived from (seed, rank, iteration), so they still draw different batches.
    """
    ranks = resume.get("rng_ranks") or []
    if len(ranks) == dist.world:
        state = ranks[dist.rank]
    elif dist.rank == 0 and ranks:
        state = ranks[0]
    elif dist.rank == 0 and "rng" in resume:
        state = {"batches": resume["rng"]}
    else:
        gen.manual_seed(cfg.seed + dist.rank + 1_000_003 * it)
        return
    _set_rng_state(gen, state)


def _agree(stop_reason: str | None, run: Run) -> str | None:
    """Under DDP all ranks must stop at the same step and share a clock: rank 0's values win."""
    run.clock = (run.elapsed, run.reserve(), run.pace.forward_seconds() or 0.0)
    if run.dist.world <= 1:
        return stop_reason
    import torch.distributed as tdist

    codes = ["", "done", "time", "interrupted"]
    device = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([codes.index(stop_reason or ""), *run.clock], dtype=torch.float64, device=device)
    tdist.broadcast(flag, src=0)
    run.clock = (float(flag[1]), float(flag[2]), float(flag[3]))
    return codes[int(flag[0])] or None


def _mean_over_ranks(loss: torch.Tensor, dist: Dist) -> float:
    """The step's loss averaged over ranks (what DDP's averaged gradient belongs to)."""
    if dist.world <= 1:
        return loss.item()
    import torch.distributed as tdist

    total = loss.detach().float().clone()
    tdist.all_reduce(total)  # SUM: gloo has no AVG
    return total.item() / dist.world


GLOO_SETTLE_SECONDS = 0.25  # how long the ranks' last collective is given to be released before the group goes


def _leave_group(run: Run) -> None:
    """Leave the process group in one known order. gloo's worker threads release each finished
    collective's tensors under the GIL, and the group's destructor joins those threads while holding
    it (torch 2.13): a rank that drops the group right after its last collective can wait for ever
    (seen: rank 1's final gather of the random streams, then DDP's reducer dropped at return).
    So the GIL is let go first (a sleep), then DDP is unwrapped and the group destroyed here."""
    if run.dist.world <= 1:
        return
    import torch.distributed as tdist

    time.sleep(GLOO_SETTLE_SECONDS)
    run.model = run.raw_model  # DDP's reducer holds the group: it goes first, while the workers idle
    if tdist.is_initialized():
        tdist.destroy_process_group()
