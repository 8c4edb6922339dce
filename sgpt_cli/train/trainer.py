"""The training loop: random windows of the text, a warmup then a trapezoid (or cosine) schedule,
periodic estimates, checkpoints, and one measured validation loss at the end.

What it holds: `train()` (a short loop over the named pieces below), the set-up of a run (fresh,
resumed or initialised from another checkpoint), the stop rules (iterations, time budget, a stop
request), saving, and the run's device and precision: bf16 autocast on CUDA and on CPUs where it measures faster
(`--precision`, sgpt_cli.train.precision); on CUDA also TF32, fused AdamW and optional torch.compile. Beside it:
sgpt_cli.train.schedule (the learning rate, the pace, when to estimate), sgpt_cli.train.evaluate (the
estimates, the whole-split validation loss, the sample), sgpt_cli.train.distributed (the DDP glue for
`torchrun`: each rank draws its own batches; only rank 0 writes or reports) and sgpt_cli.train.stop
(the `Stop` protocol the CLI's signal handler follows).

The promises: the best checkpoint (`--out`, weights only) and the resumable one (`NAME.last.pt`,
with optimizer and every rank's random streams) are only ever written whole, both in one critical
section that a stop request cannot cut; a step cut short is never saved (the state after it is
torn); a time budget bounds the whole run, the final measurement and checkpoint included.

What it does not do: draw anything, or install signal handlers. It reports through
`callback(event)`; the CLI renders.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sgpt_cli.train import checkpoint
from sgpt_cli.config import TrainConfig, model_config_from_dict
from sgpt_cli.data import split_text
from sgpt_cli.errors import SgptError, first_line
from sgpt_cli.train.model import GPT
from sgpt_cli.train.optim import build_optimizer
from sgpt_cli.train.device import hardware_name, resolve_device
from sgpt_cli.train.distributed import (
    Dist, _agree, _gather_rng, _leave_group, _mean_over_ranks, _restore_rng, _rng_state, _set_rng_state,
    setup_distributed,
)
from sgpt_cli.train.evaluate import estimate_loss, sample_text, whole_split_loss
from sgpt_cli.train.resume import load_extended, tokenizer_for
from sgpt_cli.train.saving import _disk_errors, log_metrics, save, weights
from sgpt_cli.train.schedule import EVAL_SHARE, Pace, estimate_allowance, estimate_due, eta, lr_at, schedule_progress
from sgpt_cli.train.precision import resolve_precision
from sgpt_cli.train.stop import Stop
from sgpt_cli.infer.tokenizer import CharTokenizer


@dataclass
class TrainEvent:
    """What the loop reports. `kind` is start, step, eval, warning, final or end; unused fields stay None."""

    kind: str
    iter: int = 0
    max_iters: int = 0
    loss: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    sample: str | None = None
    saved: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class Result:
    status: str  # "done", "time", "interrupted"
    iters: int
    best_val_loss: float  # the best periodic estimate
    elapsed: float
    out: Path
    last: Path
    saved_iter: int | None = None  # iteration of the newest resumable checkpoint (None: none saved)
    val_loss: float | None = None  # the whole validation split, measured once at the end (None: not measured)
    val_note: str = ""  # why val_loss is None, when it is
    step_seconds: float | None = None  # the recent steps' median (None: no step finished)
    unfinished_step: float | None = None  # seconds the step a stop cut short had run (None: none was cut)


class Batches:
    """Random windows of block_size + 1 characters from one split, drawn from a CPU generator."""

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, device: str):
        self.ids, self.block_size, self.batch_size, self.device = ids, block_size, batch_size, device
        self.offsets = torch.arange(block_size + 1)

    def sample(self, gen: torch.Generator):
        ix = torch.randint(len(self.ids) - self.block_size, (self.batch_size,), generator=gen)
        windows = self.ids[ix[:, None] + self.offsets]  # (B, T+1)
        x, y = windows[:, :-1], windows[:, 1:]
        if self.device == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y


def check_text_length(cfg: TrainConfig, text: str) -> None:
    """Both splits must hold at least one window of block_size + 1 characters (and one to spare)."""
    train_text, val_text = split_text(text)
    need = cfg.block_size + 2
    if len(val_text) < need or len(train_text) < need:
        raise SgptError(
            f"the text is too short for --block-size {cfg.block_size}: each split needs at least "
            f"{need} characters (validation, the last 10%, has {len(val_text)}); "
            "use a longer text or a smaller --block-size"
        )


# --- the state of one run, and the pieces the loop is made of ---

@dataclass
class Run:
    """Everything a run changes as it goes; the loop's pieces read and update it."""

    cfg: TrainConfig
    out: Path
    dist: Dist
    device: str
    precision: str  # float32 or bfloat16 (precision.resolve_precision)
    tokenizer: CharTokenizer
    model: torch.nn.Module  # what steps (compiled and/or DDP-wrapped)
    raw_model: GPT  # what is saved and evaluated
    optimizer: object
    gen: torch.Generator  # this rank's batch sampler
    train_batches: Batches
    val_ids: torch.Tensor
    val_batches: Batches
    extra: dict  # recorded in every checkpoint: data SHA-256 and path, init_from
    it: int = 0
    best_val: float = float("inf")
    seconds_before: float = 0.0  # training seconds of earlier sessions (a resumed run)
    session_start: float = field(default_factory=lambda: time.perf_counter())
    last_val: float = float("nan")
    lr: float = 0.0
    evaluated_at: int = 0
    evaluated_clock: float = 0.0  # rank 0's elapsed seconds when the last estimate began (or the session)
    step_started: float | None = None  # perf_counter when the step in progress began (None: between steps)
    saved_iter: int | None = None
    best_iter: int | None = None
    compiling: bool = False  # torch.compile'd, and the first step (where it compiles) still to come
    compile_note: str | None = None  # why torch.compile was given up, said once after the first step
    rng_at: tuple[int, list] | None = None  # every rank's random streams, gathered at this iteration
    # rank 0's (elapsed, reserve, forward pass of a batch) at this step: the schedule's clock
    clock: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pace: Pace = field(default_factory=Pace)
    precision_why: str | None = None  # what chose an auto precision (the header says it)

    @property
    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.block_size * self.dist.world

    def autocast(self):
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16)

    def whole_split_seconds(self) -> float:
        """What measuring the whole validation split should take, at the pace of forward passes."""
        forward = self.pace.forward_seconds()
        return 0.0 if forward is None else len(self.val_ids) * forward / (self.cfg.batch_size * self.cfg.block_size)

    def whole_split_reserve(self) -> float:
        """The whole-split measurement with half again as margin for a busy machine; nothing when it
        would take more than a quarter of the budget (it is skipped then, and said so)."""
        whole = 1.5 * self.whole_split_seconds()
        return whole if whole <= self.cfg.time_budget / 4 else 0.0

    def final_estimate_seconds(self) -> float:
        """What the budget holds back for the last estimate: its full --eval-iters batches where they
        cost at most EVAL_SHARE of the budget, else that share (the estimate shrinks to the time it
        gets), and one batch per split at least."""
        forward = self.pace.forward_seconds() or 0.0
        full, least = 2 * self.cfg.eval_iters * forward, 2 * forward
        return max(least, min(full, EVAL_SHARE * self.cfg.time_budget))

    def estimate_batches(self, seconds: float) -> int:
        """Batches per split an estimate can do in `seconds`: from 1 to --eval-iters."""
        forward = self.pace.forward_seconds()
        if forward is None or forward <= 0:
            return self.cfg.eval_iters
        return max(1, min(self.cfg.eval_iters, int(seconds / (2 * forward))))

    def reserve(self) -> float:
        """Seconds the end of a budgeted run needs: the last estimate (sized to the budget), the
        whole-split measurement and the saves."""
        if self.pace.step_seconds() is None:
            return 0.0
        return self.final_estimate_seconds() + self.whole_split_reserve() + 3 * self.pace.save_seconds


def setup(cfg: TrainConfig, text: str, text_sha: str, out: Path, device: str, resume: dict | None,
          init: dict | None, data_path: str | None) -> Run:
    """Build the model, optimizer and batch streams of a fresh, resumed or fine-tuning run."""
    device = resolve_device(device)
    dist = setup_distributed(device)
    if device == "cuda" and dist.world > 1:
        torch.cuda.set_device(dist.local_rank)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    check_text_length(cfg, text)
    tokenizer = tokenizer_for(text, resume or init)
    mcfg = cfg.model_config(tokenizer.vocab_size)
    torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ per rank; DDP copies rank 0's weights
    model = GPT(mcfg)
    gen = torch.Generator().manual_seed(cfg.seed + dist.rank)  # each rank draws its own batches
    if init is not None:
        load_extended(model, init["model"])
    if resume is not None:
        if model_config_from_dict(resume["model_config"]) != mcfg:
            raise SgptError("the checkpoint's model shape does not match its training config; start a new run")
        model.load_state_dict(resume["model"])
    model.to(device)
    choice = resolve_precision(cfg.precision, device, model, cfg.batch_size, cfg.block_size, dist)
    precision = choice.precision
    optimizer = build_optimizer(model, cfg, fused=device == "cuda", ns_dtype=getattr(torch, precision))
    train_text, val_text = split_text(text)
    to_ids = lambda s: torch.from_numpy(tokenizer.encode(s))  # noqa: E731
    val_ids = to_ids(val_text)
    run = Run(cfg, Path(out), dist, device, precision, tokenizer, model, model, optimizer, gen,
              Batches(to_ids(train_text), cfg.block_size, cfg.batch_size, device), val_ids,
              Batches(val_ids, cfg.block_size, cfg.batch_size, device),
              extra={"data_sha256": text_sha, "data_path": data_path,
                     "init_from": init["source"] if init else (resume or {}).get("init_from")},
              precision_why=choice.why)
    if resume is not None:
        try:  # checkpoint.load checked the kinds; torch checks the sizes here
            optimizer.load_state_dict(resume["optimizer"])  # after .to(): state follows the params' device
            run.it = run.evaluated_at = run.saved_iter = int(resume["iter"])
            run.best_val = float(resume.get("best_val_loss", float("inf")))
            run.seconds_before = run.evaluated_clock = float(resume.get("train_seconds", 0.0))
            run.last_val = float(resume.get("val_loss_estimate", resume.get("val_loss", float("nan"))))
            _restore_rng(resume, gen, cfg, run.it, dist)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise SgptError(f"the training state in {checkpoint.last_path(out).name} does not fit its model "
                            f"({first_line(exc, 100)}); start over with --force, or fine-tune its weights with "
                            "--init-from") from None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run.model = DDP(run.model, device_ids=[dist.local_rank] if device == "cuda" else None)
    if cfg.compile:  # outermost, so that a failed compile falls back to exactly what ran before
        run.model, run.compiling = torch.compile(run.model), True
    if dist.master and resume is None:
        # a fresh run (--force): no stale resumable state, metrics or curve of an older run survive
        for stale in (checkpoint.last_path(out), checkpoint.metrics_path(out), checkpoint.curve_path(out)):
            stale.unlink(missing_ok=True)
    run.lr = lr_at(cfg, run.it, schedule_progress(cfg, run.it, run.seconds_before))
    return run


def stop_reason(run: Run, stop: Stop) -> str | None:
    """Why the loop should end now (None: it should not). Under DDP rank 0's answer wins (`agree`)."""
    if run.it >= run.cfg.max_iters:
        return "done"
    if run.cfg.time_budget and run.elapsed + run.reserve() >= run.cfg.time_budget:
        return "time"  # stop early enough that the final measurement and checkpoint fit the budget
    if stop():
        return "interrupted"
    return None


def evaluate_and_save(run: Run, stop: Stop, report: Callable[[TrainEvent], None], final: bool = False) -> None:
    """Estimate the losses (as many batches as the budget allows), save (the best checkpoint only
    when val improved), log, report with a sample (in what time the estimate left)."""
    allowance = estimate_allowance(run, final)
    run.evaluated_at = run.it
    run.rng_at = (run.it, _gather_rng(run.gen, run.device, run.dist))  # a collective: every rank joins
    run.evaluated_clock = run.clock[0]  # rank 0's clock as the loop agreed it: every rank keeps the same
    if not run.dist.master:
        return
    t0 = time.perf_counter()
    if allowance is None:
        tl, vl, n = estimate_loss(run, stop)
    else:  # three quarters of the allowance for the estimate, what it leaves for the sample
        n = run.estimate_batches(allowance if final else 0.75 * allowance)
        tl, vl, n = estimate_loss(run, stop, n, deadline=t0 + allowance)
    run.last_val = vl
    improved = vl < run.best_val
    run.best_val = min(run.best_val, vl)
    save(run, stop, run.rng_at[1], best=improved)
    step_s = run.pace.step_seconds()
    log_metrics(run, {"iter": run.it, "train_loss": tl, "val_loss": vl, "lr": run.lr, "elapsed": round(run.elapsed, 2),
                      "tokens_per_s": round(run.tokens_per_step / step_s) if step_s else None, "eval_batches": n})
    # a budget's last seconds belong to the measurement: no sample then
    sample = "" if final and allowance is not None else sample_text(
        run, stop, None if allowance is None else t0 + allowance)
    report(TrainEvent("eval", run.it, run.cfg.max_iters, train_loss=tl, val_loss=vl, best_val_loss=run.best_val,
                      elapsed=run.elapsed, saved=improved, sample=sample,
                      info={"batches": n, "eval_iters": run.cfg.eval_iters}))


def step(run: Run, stop: Stop) -> float:
    """One optimizer step; returns its loss averaged over ranks.

    The forward and backward passes only fill gradients, so a stop request may cut them short (and
    the batch stream is wound back: a resumed run draws that batch again). The update itself is
    critical: a half-updated model is never saved."""
    cfg = run.cfg
    # every rank uses rank 0's clock (`agree`), so a time budget gives all ranks the same rate
    run.lr = lr_at(cfg, run.it, schedule_progress(cfg, run.it, *run.clock[:2]))
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr * group["lr_scale"]
    t0 = run.step_started = time.perf_counter()
    before = _rng_state(run.gen, run.device)
    # under DDP backward is a collective: no rank may leave it alone, so only one process aborts
    cut_short = stop.abortable() if run.dist.world == 1 else contextlib.nullcontext()
    try:
        with cut_short:
            x, y = run.train_batches.sample(run.gen)
            loss = _first_compiled(run, x, y) if run.compiling else _backward(run, x, y)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    except KeyboardInterrupt:
        _set_rng_state(run.gen, before)
        raise
    with stop.critical():
        run.optimizer.step()
        run.it += 1
        run.step_started = None
    run.pace.steps.append(time.perf_counter() - t0)
    run.pace.wall.append((time.perf_counter(), run.it))
    loss_value = _mean_over_ranks(loss, run.dist)  # the same value on every rank: all stop together
    check_finite(run, loss_value)
    return loss_value


def _backward(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's loss, its gradients filled in."""
    with run.autocast():
        logits, _ = run.model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def _first_compiled(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The first step of a torch.compile'd model, where it compiles (forward and backward). Where
    that fails (no C++ compiler, an unsupported platform), the run goes on without it and says why
    once (`compile_note`) rather than ending."""
    run.compiling = False
    try:
        return _backward(run, x, y)
    except Exception as exc:  # torch._dynamo / inductor raise many types; a bad batch fails eager too
        run.model = run.model._orig_mod
        run.compile_note = (f"torch.compile does not work here ({first_line(exc, 120)}); training without it "
                            "(--no-compile skips the attempt)")
        return _backward(run, x, y)


def compile_warning(run: Run, report: Callable[[TrainEvent], None]) -> None:
    if run.compile_note:
        report(TrainEvent("warning", run.it, info={"message": run.compile_note}))
        run.compile_note = None


def check_finite(run: Run, loss_value: float) -> None:
    if math.isfinite(loss_value):
        return
    cfg = run.cfg
    remedy = f"lower --learning-rate (now {cfg.learning_rate:g})" + (" or set --grad-clip 1.0" if not cfg.grad_clip else "")
    then = ("nothing was saved; start again" if run.saved_iter is None else
            f"iteration {run.saved_iter} is saved: continue it with --resume, or start over with --force")
    raise SgptError(f"the loss became {loss_value} at iteration {run.it}; {remedy} ({then})")


def step_event(run: Run, loss: float) -> TrainEvent:
    pace = run.pace
    return TrainEvent("step", run.it, run.cfg.max_iters, loss=loss, lr=run.lr,
                      tokens_per_s=run.tokens_per_step / max(pace.step_seconds(), 1e-9), elapsed=run.elapsed,
                      best_val_loss=run.best_val if run.best_val < float("inf") else None, eta=eta(run))


def gpu_preset_warning(run: Run, report: Callable[[TrainEvent], None]) -> None:
    """A preset sized for a GPU on a CPU: say so after the first step, with what it costs here."""
    if run.device != "cpu" or run.cfg.preset != "gpu" or run.pace.step_seconds() is None:
        return
    s = run.pace.step_seconds()
    total = s * run.cfg.max_iters
    budget = f" (--time-budget {run.cfg.time_budget:g} s ends it first)" if run.cfg.time_budget else ""
    report(TrainEvent("warning", run.it, info={"message": (
        f"the gpu preset is running on a CPU: {s:.1f} s per step, so {run.cfg.max_iters} steps would take "
        f"{total / 3600:.1f} h{budget}; --preset cpu is the one made for CPUs")}))


def measure_val(run: Run, stop: Stop, report: Callable[[TrainEvent], None]) -> tuple[float | None, str]:
    """The one val loss: the best checkpoint on the whole validation split, recorded in --out.
    Bounded by the time budget: skipped, and said so, when it would not fit."""
    if run.best_iter is None and not run.out.exists():
        return None, "no checkpoint was saved"
    deadline = None
    if run.cfg.time_budget:
        left = run.cfg.time_budget - run.elapsed
        deadline = time.perf_counter() + left - run.pace.save_seconds
        need = run.whole_split_seconds()
        if need > left or 1.5 * need > run.cfg.time_budget / 4:
            return None, f"the whole-split measurement needs ~{need:.0f} s and {max(left, 0):.0f} s of the budget were left"
    model, best = run.raw_model, None
    if run.best_iter != run.it:  # the best was saved earlier: measure those weights, not the current ones
        best = checkpoint.load(run.out, map_location=run.device)
        model = GPT(model_config_from_dict(best["model_config"])).to(run.device)
        model.load_state_dict(best["model"])
    with stop.abortable():
        loss = whole_split_loss(model, run.val_ids, deadline)
    if loss is None:
        return None, "the time budget ran out during the whole-split measurement"
    payload = weights(run, loss, "whole split") if best is None else {
        **{k: v for k, v in best.items() if k not in ("format", "version")}, "val_loss": loss,
        "val_loss_kind": "whole split"}
    with stop.critical(), _disk_errors(run):
        checkpoint.save(run.out, payload)
    report(TrainEvent("final", run.it, run.cfg.max_iters, val_loss=loss, elapsed=run.elapsed,
                      info={"val_chars": len(run.val_ids), "best_iter": payload["iter"]}))
    return loss, ""


def save_on_interrupt(run: Run, stop: Stop) -> None:
    """After a stop request cut the loop short: keep the last whole step, if it is not saved yet.
    Under DDP only when the ranks' random streams were gathered at this very step (gathering is a
    collective that ranks stuck elsewhere could never join)."""
    if not run.dist.master or run.it == 0 or run.saved_iter == run.it:
        return
    if run.dist.world == 1:
        rng = _gather_rng(run.gen, run.device, run.dist)
    elif run.rng_at is not None and run.rng_at[0] == run.it:
        rng = run.rng_at[1]
    else:
        return
    save(run, stop, rng, best=False)


def train(cfg: TrainConfig, text: str, text_sha: str, out: Path, *, device: str = "auto",
          resume: dict | None = None, init: dict | None = None, data_path: str | None = None,
          callback: Callable[[TrainEvent], None] = lambda e: None,
          should_stop: Callable[[], bool] | Stop = lambda: False) -> Result:
    """Train `cfg` on `text`; write checkpoints beside `out`. `resume` is a loaded checkpoint to
    continue; `init` one whose weights a new run starts from (fine-tuning)."""
    stop = should_stop if isinstance(should_stop, Stop) else Stop(should_stop)
    run = setup(cfg, text, text_sha, out, device, resume, init, data_path)
    report = callback if run.dist.master else (lambda e: None)
    report(TrainEvent("start", run.it, cfg.max_iters, info={
        "params": run.raw_model.num_params(), "device": run.device, "precision": run.precision, "world": run.dist.world,
        "precision_why": run.precision_why,
        "hardware": hardware_name(run.device), "threads": torch.get_num_threads(), "preset": cfg.preset,
        "optimizer": cfg.optimizer, "vocab_size": run.tokenizer.vocab_size, "train_chars": len(run.train_batches.ids),
        "val_chars": len(run.val_ids), "resumed": resume is not None, "time_budget": cfg.time_budget,
        "init_from": init.get("source") if init else None,
        # a resumed run's budget is a total: what this session adds is the part not yet spent
        "budget_added": cfg.time_budget - run.seconds_before if cfg.time_budget else 0.0,
        "seconds_before": run.seconds_before,
    }))
    status, val, note, unfinished = "done", None, "interrupted", None
    run.model.train()
    try:
        while True:
            # ranks must leave the loop at the same step (a lone rank in a collective waits for
            # ever): rank 0 decides, everyone follows, and everyone uses rank 0's clock
            reason = _agree(stop_reason(run, stop), run)
            if reason == "interrupted":
                # no last estimate: a stop request is answered within seconds. Every rank is here,
                # so gathering the random streams (a collective) is safe
                status, run.rng_at = reason, (run.it, _gather_rng(run.gen, run.device, run.dist))
                break
            if reason == "time":  # stopped early to leave the budget's end to the final measurement:
                run.extra["budget_spent"] = True  # spent all the same (a resume gets the budget again)
            if estimate_due(run, reason):
                evaluate_and_save(run, stop, report, final=reason is not None)
            if reason:
                status = reason
                break
            loss = step(run, stop)
            if len(run.pace.steps) == 1:
                gpu_preset_warning(run, report)
                compile_warning(run, report)
            report(step_event(run, loss))
        if status == "interrupted":
            save_on_interrupt(run, stop)
    except KeyboardInterrupt:
        # a stop request cut an estimate or a step short: the weights are those of the last
        # whole step, and the batch stream is wound back to it, so that step is what is kept
        status = "interrupted"
        if run.step_started is not None:
            unfinished = time.perf_counter() - run.step_started
            run.step_started = None
        save_on_interrupt(run, stop)
    finally:
        _leave_group(run)
    if status != "interrupted" and run.dist.master:
        try:
            val, note = measure_val(run, stop, report)
        except KeyboardInterrupt:
            status, note = "interrupted", "interrupted during the whole-split measurement"
    report(TrainEvent("end", run.it, cfg.max_iters, best_val_loss=run.best_val, val_loss=val, elapsed=run.elapsed,
                      info={"status": status, "saved_iter": run.saved_iter, "val_note": note,
                            "step_seconds": run.pace.step_seconds(), "unfinished_step": unfinished}))
    return Result(status, run.it, run.best_val, run.elapsed, run.out, checkpoint.last_path(run.out),
                  run.saved_iter, val, note, run.pace.step_seconds(), unfinished)
