"""When a training does what: the learning rate along the run (warmup, then a trapezoid or a cosine,
by iterations or by the clock of a time budget), its recent pace (`Pace`), when an estimate is due
and how long it may take, and the time left (`eta`).

What it does not do: step, estimate or save (sgpt_cli.train.trainer and sgpt_cli.train.evaluate do).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from sgpt_cli.config import TrainConfig

if TYPE_CHECKING:  # the run whose clock and pace these read
    from sgpt_cli.train.trainer import Run

# the schedule of estimates in a budgeted run, whatever the machine's speed
CURVE_POINTS = 8  # at least one estimate per budget / CURVE_POINTS seconds: a curve even at 0.3 steps/s
EVAL_SHARE = 0.05  # an estimate and its sample take at most this share of the training since the last one


def lr_at(cfg: TrainConfig, it: int, progress: float) -> float:
    """Linear warmup, then from learning_rate down to min_lr as `progress` goes 0 -> 1: a cosine, or
    a trapezoid (flat until the last `cooldown` of the run, then linear)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    progress = min(max(progress, 0.0), 1.0)
    if cfg.lr_schedule == "trapezoid":
        left = min((1.0 - progress) / cfg.cooldown, 1.0)  # 1 while flat, then down to 0
        return cfg.min_lr + left * (cfg.learning_rate - cfg.min_lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def schedule_progress(cfg: TrainConfig, it: int, train_seconds: float, reserve: float = 0.0) -> float:
    """How far along the decay is: by iterations, or by the clock (the budget less what the final
    measurement and checkpoint will need), whichever is further."""
    if cfg.lr_decay_iters:
        span = max(cfg.lr_decay_iters - cfg.warmup_iters, 1)
        return (it - cfg.warmup_iters) / span
    by_iters = (it - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1)
    by_time = train_seconds / max(cfg.time_budget - reserve, 1e-9) if cfg.time_budget else 0.0
    return max(by_iters, by_time)


class Pace:
    """Recent speed: compute per step (tokens/s) and wall clock per step including evaluations and
    whatever else the machine is doing (the ETA), both over a sliding window so a busy machine's
    slowdown shows within seconds and a single slow step does not."""

    def __init__(self) -> None:
        self.steps: deque[float] = deque(maxlen=20)  # seconds of compute of the last steps
        self.wall: deque[tuple[float, int]] = deque(maxlen=200)  # (clock, iteration) after each step
        self.batch_seconds: float | None = None  # one forward pass of a batch, as the last estimate measured it
        self.save_seconds = 0.1  # until one is measured

    def step_seconds(self) -> float | None:
        """The median of the recent steps: the first (slow: allocations, warm-up) does not count for long."""
        return sorted(self.steps)[len(self.steps) // 2] if self.steps else None

    def forward_seconds(self) -> float | None:
        """One batch's forward pass (what an estimate costs per batch): measured by the last estimate,
        or before one, a third of a training step (forward, backward and update)."""
        if self.batch_seconds is not None:
            return self.batch_seconds
        step = self.step_seconds()
        return None if step is None else step / 3

    def wall_per_iter(self) -> float | None:
        (t0, i0), (t1, i1) = (self.wall[0], self.wall[-1]) if len(self.wall) >= 2 else ((0, 0), (0, 0))
        return (t1 - t0) / (i1 - i0) if i1 > i0 else self.step_seconds()


def estimate_due(run: Run, reason: str | None) -> bool:
    """Whether to estimate now. At the end always; without a budget every --eval-interval steps.
    With one, --eval-interval steps at most apart, and sooner once budget / CURVE_POINTS seconds
    have passed (a slow machine still gets a curve); but never before the time since the last
    estimate pays for one batch per split at EVAL_SHARE (a very slow machine gets fewer points,
    not a run spent estimating). Under DDP every rank reads rank 0's clock (`agree`): all decide alike."""
    cfg = run.cfg
    if run.it <= run.evaluated_at:
        return False
    if reason:
        return True
    if not cfg.time_budget:
        return run.it % cfg.eval_interval == 0
    since = run.clock[0] - run.evaluated_clock
    if EVAL_SHARE * since < 2 * run.clock[2]:
        return False
    return run.it - run.evaluated_at >= cfg.eval_interval or since >= cfg.time_budget / CURVE_POINTS


def estimate_allowance(run: Run, final: bool) -> float | None:
    """Seconds this estimate (with its sample) may take; None: no bound (a run without a budget).
    The last one gets what the budget has left after the whole-split measurement and the saves; the
    others EVAL_SHARE of the training since the previous one."""
    if not run.cfg.time_budget:
        return None
    if final:
        left = run.cfg.time_budget - run.elapsed
        return max(left - run.whole_split_reserve() - 3 * run.pace.save_seconds, 0.0)
    return EVAL_SHARE * max(run.clock[0] - run.evaluated_clock, 0.0)


def eta(run: Run) -> float | None:
    """Seconds to the end: remaining steps at the recent wall-clock pace (evaluations and a busy
    machine included), plus the final measurement; never past the budget."""
    per_iter = run.pace.wall_per_iter()
    if per_iter is None:
        return None
    by_iters = (run.cfg.max_iters - run.it) * per_iter + run.reserve()
    if run.cfg.time_budget:
        return min(by_iters, max(run.cfg.time_budget - run.elapsed, 0.0))
    return by_iters
