"""The training loop: random windows of the text, a warmup + cosine schedule, periodic estimates,
checkpoints, and one measured validation loss at the end.

What it holds: `train()` (a short loop over the named pieces below), the set-up of a run (fresh,
resumed or initialised from another checkpoint), the stop rules (iterations, time budget, a stop
request), the whole-split validation loss, the `Stop` protocol the CLI's signal handler follows,
and the DDP glue for `torchrun` (each rank draws its own batches; only rank 0 writes or reports).
bf16 autocast on CUDA and on CPUs with AMX (`--precision`); on CUDA also TF32, fused AdamW and
optional torch.compile.

The promises: the best checkpoint (`--out`, weights only) and the resumable one (`NAME.last.pt`,
with optimizer and every rank's random streams) are only ever written whole, both in one critical
section that a stop request cannot cut; a step cut short is never saved (the state after it is
torn); a time budget bounds the whole run, the final measurement and checkpoint included.

What it does not do: draw anything, or install signal handlers. It reports through
`callback(event)`; the CLI renders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from sgpt_cli.train import checkpoint
from sgpt_cli.config import SHAPE_FIELDS, TrainConfig, model_config_from_dict, train_config_from_dict
from sgpt_cli.data import split_text
from sgpt_cli.errors import SgptError, UsageError, first_line
from sgpt_cli.train.model import GPT
from sgpt_cli.train.optim import build_optimizer
from sgpt_cli.train.stop import Stop
from sgpt_cli.infer.tokenizer import CharTokenizer


# the schedule of estimates in a budgeted run, whatever the machine's speed
CURVE_POINTS = 8  # at least one estimate per budget / CURVE_POINTS seconds: a curve even at 0.3 steps/s
EVAL_SHARE = 0.05  # an estimate and its sample take at most this share of the training since the last one


@dataclass
class Event:
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


def tokenizer_for(text: str, ckpt: dict | None) -> CharTokenizer:
    """The text's own vocabulary; or a checkpoint's, extended at the end by characters it lacks
    (a fine-tuned model keeps every id it had, so its embedding rows keep their meaning)."""
    if ckpt is None:
        return CharTokenizer.from_text(text)
    known = checkpoint.vocab_from(ckpt)
    new = sorted(set(text) - set(known))
    return CharTokenizer(known + new)


def load_resume_state(out: Path, text_sha: str, tokenizer: CharTokenizer | None, overrides: dict,
                      text: str | None = None) -> tuple[dict, TrainConfig]:
    """The checkpoint to resume from and its config with this run's explicit overrides applied.

    `--time-budget` on a resumed run means this many seconds more; without it, a run that spent its
    budget gets the same budget again (so `sgpt train --resume` simply goes on).
    """
    last = checkpoint.last_path(out)
    source = last if last.exists() else Path(out)
    if not source.exists():
        raise SgptError(f"nothing to resume: {out} does not exist; drop --resume to start a new run")
    ckpt = checkpoint.load(source)
    if "optimizer" not in ckpt or "train_config" not in ckpt:
        raise SgptError(f"{source} holds weights only, no training state, so there is nothing to resume; "
                        f"start over with --force instead of --resume, or fine-tune it into another --out "
                        f"with --init-from {source}")
    foreign = (
        f"{source} was trained on a different text; pass the same --data it was trained on, "
        "or start a new run with another --out"
    )
    vocab = checkpoint.vocab_from(ckpt)
    chars = sorted(set(text)) if text is not None else tokenizer.chars
    # a fine-tuned model's vocabulary is its parent's, extended: it need only cover the text
    fits = set(chars) <= set(vocab) if ckpt.get("init_from") else chars == vocab
    if not fits:
        raise SgptError(foreign.replace("a different text", "a different text (its vocabulary differs)"))
    if ckpt.get("data_sha256") and ckpt["data_sha256"] != text_sha:
        raise SgptError(foreign.replace("a different text", "a different text (its SHA-256 differs)"))
    saved = train_config_from_dict(ckpt["train_config"])
    for name in SHAPE_FIELDS:
        if overrides.get(name) is not None and overrides[name] != getattr(saved, name):
            raise UsageError(
                f"--{name.replace('_', '-')} {overrides[name]} differs from the checkpoint's "
                f"{getattr(saved, name)}; a resumed run keeps the model's shape"
            )
    changes = {k: v for k, v in overrides.items() if v is not None and k not in SHAPE_FIELDS}
    it, seconds = int(ckpt["iter"]), float(ckpt.get("train_seconds", 0.0))
    if changes.get("time_budget"):
        changes["time_budget"] = seconds + changes["time_budget"]  # "this much more"
    elif saved.time_budget and (seconds >= saved.time_budget or ckpt.get("budget_spent") is True) \
            and "time_budget" not in changes:
        # spent (a run that stopped to leave its last seconds to the final measurement counts as one
        # that spent them; one stopped by Ctrl-C goes on with what was left): the same stretch again
        changes["time_budget"] = seconds + saved.time_budget
    cfg = dataclasses.replace(saved, **changes)
    cfg.validate()
    if it >= cfg.max_iters:
        raise SgptError(f"{source} has already trained its {it} iterations (--max-iters {cfg.max_iters}); "
                        "pass a larger --max-iters to go on")
    return ckpt, cfg


def config_for_init(cfg: TrainConfig, init: dict, overrides: dict) -> TrainConfig:
    """A fine-tuning run takes the model's shape from the checkpoint it starts from."""
    shape = model_config_from_dict(init["model_config"])
    for name in SHAPE_FIELDS:
        if overrides.get(name) is not None and overrides[name] != getattr(shape, name):
            raise UsageError(f"--{name.replace('_', '-')} {overrides[name]} differs from --init-from's "
                             f"{getattr(shape, name)}; a fine-tuned model keeps the shape it starts from")
    cfg = dataclasses.replace(cfg, **{name: getattr(shape, name) for name in SHAPE_FIELDS})
    cfg.validate()
    return cfg


# --- the state of one run, and the pieces the loop is made of ---

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


@dataclass
class Run:
    """Everything a run changes as it goes; the loop's pieces read and update it."""

    cfg: TrainConfig
    out: Path
    dist: Dist
    device: str
    precision: str  # float32 or bfloat16 (resolve_precision)
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
    precision = resolve_precision(cfg.precision, device, cfg.n_embd)
    optimizer = build_optimizer(model, cfg, fused=device == "cuda", ns_dtype=getattr(torch, precision))
    train_text, val_text = split_text(text)
    to_ids = lambda s: torch.from_numpy(tokenizer.encode(s))  # noqa: E731
    val_ids = to_ids(val_text)
    run = Run(cfg, Path(out), dist, device, precision, tokenizer, model, model, optimizer, gen,
              Batches(to_ids(train_text), cfg.block_size, cfg.batch_size, device), val_ids,
              Batches(val_ids, cfg.block_size, cfg.batch_size, device),
              extra={"data_sha256": text_sha, "data_path": data_path,
                     "init_from": init["source"] if init else (resume or {}).get("init_from")})
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


def load_extended(model: GPT, state: dict) -> None:
    """Load weights whose vocabulary may be smaller than the model's: the new characters' embedding
    rows keep their fresh initialisation, and so do their rows of an untied head (zero: unlikely until
    trained); a tied head follows the embedding."""
    state = dict(state)
    tables = ("wte.weight",) if model.cfg.tied_head else ("wte.weight", "lm_head.weight")
    for name in tables:
        old, new = state[name], model.get_parameter(name).detach().clone()  # (old_vocab, C), (vocab, C)
        if old.shape[1] != new.shape[1] or old.shape[0] > new.shape[0]:
            raise SgptError("--init-from's embedding does not fit the model; fine-tune a checkpoint written by sgpt")
        new[: old.shape[0]] = old
        state[name] = new
    if model.cfg.tied_head:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SgptError("--init-from's weights do not fit its own model shape; fine-tune a checkpoint written by sgpt")


def stop_reason(run: Run, stop: Stop) -> str | None:
    """Why the loop should end now (None: it should not). Under DDP rank 0's answer wins (`agree`)."""
    if run.it >= run.cfg.max_iters:
        return "done"
    if run.cfg.time_budget and run.elapsed + run.reserve() >= run.cfg.time_budget:
        return "time"  # stop early enough that the final measurement and checkpoint fit the budget
    if stop():
        return "interrupted"
    return None


@torch.no_grad()
def estimate_loss(run: Run, stop: Stop, n_batches: int | None = None, deadline: float | None = None
                  ) -> tuple[float, float, int]:
    """Train and val loss on the first `n_batches` (default --eval-iters) of fixed batches each: a
    cheap, smooth estimate for the curve and for choosing the best checkpoint (the whole split is
    measured once, at the end). In float32 whatever the run's --precision, as the whole split is:
    the two agree, and an estimate's pace sizes the whole split's reserve. Each split gets half the
    time to `deadline` (a perf_counter time) and stops there after one batch at least. Returns
    (train, val, the fewest batches a split got)."""
    t0 = time.perf_counter()
    n_batches = n_batches or run.cfg.eval_iters
    run.raw_model.eval()
    losses, done, fewest = {}, 0, n_batches
    try:
        with stop.abortable():  # a stop request throws the estimate away: the step it belongs to is whole
            for k, (name, batches) in enumerate((("val", run.val_batches), ("train", run.train_batches))):
                ends = None if deadline is None else t0 + (deadline - t0) * (k + 1) / 2
                g = torch.Generator().manual_seed(run.cfg.seed + 1)  # the same batches every time: a smooth curve
                total, n = 0.0, 0
                while n < n_batches and (n == 0 or ends is None or time.perf_counter() < ends):
                    x, y = batches.sample(g)
                    logits, _ = run.raw_model(x)  # in float32, as the whole split is measured
                    total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)).item()
                    n += 1
                losses[name], done, fewest = total / n, done + n, min(fewest, n)
    finally:
        run.raw_model.train()
    run.pace.batch_seconds = (time.perf_counter() - t0) / done
    return losses["train"], losses["val"], fewest


@torch.no_grad()
def whole_split_loss(model: GPT, ids: torch.Tensor, deadline: float | None = None, batch: int = 32) -> float | None:
    """Mean cross-entropy (nats/char) over the whole split, in non-overlapping windows of block_size
    (the protocol of `sgpt eval` and export: onnx_model.score_ids), in float32. None if `deadline`
    (a perf_counter time) passes first."""
    T = model.cfg.block_size
    n = (len(ids) - 1) // T
    if n == 0:
        T, n = len(ids) - 1, 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for b in range(0, n, batch):
            if deadline is not None and time.perf_counter() > deadline:
                return None
            starts = torch.arange(b, min(b + batch, n)) * T
            win = ids[starts[:, None] + torch.arange(T + 1)].to(device)  # (b, T+1)
            logits, _ = model(win[:, :-1])
            logp = F.log_softmax(logits.double(), dim=-1)
            total -= logp.gather(-1, win[:, 1:, None]).sum().item()
            count += win[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


SAMPLE_CHUNK = 20  # characters generated between looks at the clock


def sample_text(run: Run, stop: Stop | None = None, deadline: float | None = None) -> str:
    """Up to --sample-chars characters, fewer when `deadline` (a perf_counter time) comes first. A stop
    request cuts it short (a sample is only for show). The model recomputes its whole window for
    each character, so generating in chunks gives the same text as at once."""
    if run.cfg.sample_chars <= 0 or (deadline is not None and time.perf_counter() >= deadline):
        return ""
    model, device = run.raw_model, run.device
    g = torch.Generator(device=device).manual_seed(run.cfg.seed)  # its own stream: training's stays put
    idx = torch.tensor([[run.tokenizer.stoi.get("\n", 0)]], device=device)
    model.eval()
    try:
        with (stop or Stop()).abortable(), run.autocast():
            while idx.shape[1] - 1 < run.cfg.sample_chars and (deadline is None or time.perf_counter() < deadline):
                n = min(SAMPLE_CHUNK, run.cfg.sample_chars - (idx.shape[1] - 1))
                idx = model.generate(idx, n, temperature=0.8, top_k=None, generator=g)
    except KeyboardInterrupt:
        if stop is None or not stop.requested:
            raise
        # a stop request: the loop sees it at the next step boundary
    finally:
        model.train()
    return run.tokenizer.decode(idx[0, 1:].tolist())


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


def evaluate_and_save(run: Run, stop: Stop, report: Callable[[Event], None], final: bool = False) -> None:
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
    report(Event("eval", run.it, run.cfg.max_iters, train_loss=tl, val_loss=vl, best_val_loss=run.best_val,
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


def compile_warning(run: Run, report: Callable[[Event], None]) -> None:
    if run.compile_note:
        report(Event("warning", run.it, info={"message": run.compile_note}))
        run.compile_note = None


def check_finite(run: Run, loss_value: float) -> None:
    if math.isfinite(loss_value):
        return
    cfg = run.cfg
    remedy = f"lower --learning-rate (now {cfg.learning_rate:g})" + (" or set --grad-clip 1.0" if not cfg.grad_clip else "")
    then = ("nothing was saved; start again" if run.saved_iter is None else
            f"iteration {run.saved_iter} is saved: continue it with --resume, or start over with --force")
    raise SgptError(f"the loss became {loss_value} at iteration {run.it}; {remedy} ({then})")


def step_event(run: Run, loss: float) -> Event:
    pace = run.pace
    return Event("step", run.it, run.cfg.max_iters, loss=loss, lr=run.lr,
                 tokens_per_s=run.tokens_per_step / max(pace.step_seconds(), 1e-9), elapsed=run.elapsed,
                 best_val_loss=run.best_val if run.best_val < float("inf") else None, eta=eta(run))


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


def gpu_preset_warning(run: Run, report: Callable[[Event], None]) -> None:
    """A preset sized for a GPU on a CPU: say so after the first step, with what it costs here."""
    if run.device != "cpu" or run.cfg.preset != "gpu" or run.pace.step_seconds() is None:
        return
    s = run.pace.step_seconds()
    total = s * run.cfg.max_iters
    budget = f" (--time-budget {run.cfg.time_budget:g} s ends it first)" if run.cfg.time_budget else ""
    report(Event("warning", run.it, info={"message": (
        f"the gpu preset is running on a CPU: {s:.1f} s per step, so {run.cfg.max_iters} steps would take "
        f"{total / 3600:.1f} h{budget}; --preset cpu is the one made for CPUs")}))


def measure_val(run: Run, stop: Stop, report: Callable[[Event], None]) -> tuple[float | None, str]:
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
    report(Event("final", run.it, run.cfg.max_iters, val_loss=loss, elapsed=run.elapsed,
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
          callback: Callable[[Event], None] = lambda e: None,
          should_stop: Callable[[], bool] | Stop = lambda: False) -> Result:
    """Train `cfg` on `text`; write checkpoints beside `out`. `resume` is a loaded checkpoint to
    continue; `init` one whose weights a new run starts from (fine-tuning)."""
    stop = should_stop if isinstance(should_stop, Stop) else Stop(should_stop)
    run = setup(cfg, text, text_sha, out, device, resume, init, data_path)
    report = callback if run.dist.master else (lambda e: None)
    report(Event("start", run.it, cfg.max_iters, info={
        "params": run.raw_model.num_params(), "device": run.device, "precision": run.precision, "world": run.dist.world,
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
    report(Event("end", run.it, cfg.max_iters, best_val_loss=run.best_val, val_loss=val, elapsed=run.elapsed,
                 info={"status": status, "saved_iter": run.saved_iter, "val_note": note,
                       "step_seconds": run.pace.step_seconds(), "unfinished_step": unfinished}))
    return Result(status, run.it, run.best_val, run.elapsed, run.out, checkpoint.last_path(run.out),
                  run.saved_iter, val, note, run.pace.step_seconds(), unfinished)


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
