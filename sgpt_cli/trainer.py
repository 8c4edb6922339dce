"""The training loop: AdamW on random windows of the text, periodic evaluation, checkpoints.

What it does: samples batches, steps the optimizer on a warmup + cosine schedule (fitted to
`max_iters` or to the wall-clock `time_budget`), evaluates train/val loss on fixed batches, writes
the best-val checkpoint and a resumable "last" checkpoint atomically, appends metrics to JSONL,
stops when `should_stop()` turns true (the CLI's Ctrl-C handler) after evaluating and saving a
resumable checkpoint that holds every rank's random streams, so a resumed run continues exactly as
an uninterrupted one would; stops on a non-finite loss; and runs under `torchrun` with DDP (each rank
draws its own batches; only rank 0 writes or reports). On CUDA: bf16 autocast, TF32, fused AdamW and
optional torch.compile.

What it does not do: draw anything, or install signal handlers. It reports through
`callback(event)`; the CLI renders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sgpt_cli import checkpoint
from sgpt_cli.config import TrainConfig, model_config_from_dict
from sgpt_cli.data import split_text
from sgpt_cli.errors import SgptError, UsageError
from sgpt_cli.model import GPT
from sgpt_cli.optim import build_optimizer
from sgpt_cli.tokenizer import CharTokenizer


@dataclass
class Event:
    """What the loop reports. `kind` is start, step, eval or end; unused fields stay None."""

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
    best_val_loss: float
    elapsed: float
    out: Path
    last: Path
    saved_iter: int | None = None  # iteration of the newest resumable checkpoint (None: none saved)


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


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    n = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {n} thread{'' if n == 1 else 's'}"


def lr_at(cfg: TrainConfig, it: int, progress: float) -> float:
    """Linear warmup, then cosine from learning_rate down to min_lr as `progress` goes 0 -> 1."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def schedule_progress(cfg: TrainConfig, it: int, train_seconds: float) -> float:
    if cfg.lr_decay_iters:
        span = max(cfg.lr_decay_iters - cfg.warmup_iters, 1)
        return (it - cfg.warmup_iters) / span
    by_iters = (it - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1)
    by_time = train_seconds / cfg.time_budget if cfg.time_budget else 0.0
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


def load_resume_state(out: Path, text_sha: str, tokenizer: CharTokenizer, overrides: dict) -> tuple[dict, TrainConfig]:
    """The checkpoint to resume from and its config with this run's explicit overrides applied."""
    from sgpt_cli.config import train_config_from_dict

    last = checkpoint.last_path(out)
    source = last if last.exists() else Path(out)
    if not source.exists():
        raise SgptError(f"nothing to resume: {out} does not exist; drop --resume to start a new run")
    ckpt = checkpoint.load(source)
    if "optimizer" not in ckpt or "train_config" not in ckpt:
        raise SgptError(f"{source} holds weights only, no training state; drop --resume to start a new run")
    foreign = (
        f"{source} was trained on a different text; pass the same --data it was trained on, "
        "or start a new run with another --out"
    )
    if checkpoint.vocab_from(ckpt) != tokenizer.chars:
        raise SgptError(foreign.replace("a different text", "a different text (its vocabulary differs)"))
    if ckpt.get("data_sha256") and ckpt["data_sha256"] != text_sha:
        raise SgptError(foreign.replace("a different text", "a different text (its SHA-256 differs)"))
    saved = train_config_from_dict(ckpt["train_config"])
    shape_fields = ("n_layer", "n_head", "n_embd", "block_size")
    for name in shape_fields:
        if overrides.get(name) is not None and overrides[name] != getattr(saved, name):
            raise UsageError(
                f"--{name.replace('_', '-')} {overrides[name]} differs from the checkpoint's "
                f"{getattr(saved, name)}; a resumed run keeps the model's shape"
            )
    changes = {k: v for k, v in overrides.items() if v is not None and k not in shape_fields}
    cfg = dataclasses.replace(saved, **changes)
    cfg.validate()
    it, seconds = int(ckpt["iter"]), float(ckpt.get("train_seconds", 0.0))
    if it >= cfg.max_iters or (cfg.time_budget and seconds >= cfg.time_budget):
        spent = (f"its {it} iterations (--max-iters {cfg.max_iters})" if it >= cfg.max_iters
                 else f"its time budget ({seconds:.0f} of --time-budget {cfg.time_budget:g} s)")
        raise SgptError(f"{source} has already trained {spent}; pass a larger --max-iters or --time-budget to go on")
    return ckpt, cfg


def _rng_state(gen: torch.Generator, device: str) -> dict:
    """This process's random streams: the batch sampler's, and torch's own (dropout)."""
    state = {"batches": gen.get_state(), "torch": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


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
    gen.set_state(state["batches"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train(cfg: TrainConfig, text: str, text_sha: str, out: Path, *, device: str = "auto",
          resume: dict | None = None, callback: Callable[[Event], None] = lambda e: None,
          should_stop: Callable[[], bool] = lambda: False) -> Result:
    """Train `cfg` on `text`; write checkpoints beside `out`. `resume` is a loaded checkpoint.

    `should_stop` is polled before every step: when it turns true the run evaluates, saves a
    resumable checkpoint and returns with status "interrupted". A KeyboardInterrupt raised inside
    the loop does the same, except that a step it cut short is not saved (its state is torn).
    """
    out = Path(out)
    device = resolve_device(device)
    dist = setup_distributed(device)
    if device == "cuda" and dist.world > 1:
        torch.cuda.set_device(dist.local_rank)
    report = callback if dist.master else (lambda e: None)

    tokenizer = CharTokenizer.from_text(text)
    check_text_length(cfg, text)
    train_text, val_text = split_text(text)
    mcfg = cfg.model_config(tokenizer.vocab_size)
    torch.manual_seed(cfg.seed + dist.rank)  # dropout masks differ per rank; DDP copies rank 0's weights
    model = GPT(mcfg)
    it, best_val, train_seconds = 0, float("inf"), 0.0
    gen = torch.Generator().manual_seed(cfg.seed + dist.rank)  # each rank draws its own batches
    use_cuda = device == "cuda"
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = build_optimizer(model, cfg, fused=use_cuda)
    if resume is not None:
        if model_config_from_dict(resume["model_config"]) != mcfg:
            raise SgptError("the checkpoint's model shape does not match its training config; start a new run")
        model.load_state_dict(resume["model"])
        it = int(resume["iter"])
        best_val = float(resume.get("best_val_loss", float("inf")))
        train_seconds = float(resume.get("train_seconds", 0.0))
        _restore_rng(resume, gen, cfg, it, dist)
    model.to(device)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])  # after .to(): state follows the params' device
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist.local_rank] if use_cuda else None)

    to_ids = lambda s: torch.from_numpy(tokenizer.encode(s))  # noqa: E731
    train_batches = Batches(to_ids(train_text), cfg.block_size, cfg.batch_size, device)
    val_batches = Batches(to_ids(val_text), cfg.block_size, cfg.batch_size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)
    tokens_per_step = cfg.batch_size * cfg.block_size * dist.world

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        raw_model.eval()
        losses = []
        for batches in (train_batches, val_batches):
            g = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches every time: a smooth curve
            total = 0.0
            for _ in range(cfg.eval_iters):
                x, y = batches.sample(g)
                with autocast:
                    logits, _ = raw_model(x)
                total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1)).item()
            losses.append(total / cfg.eval_iters)
        raw_model.train()
        return losses[0], losses[1]

    def sample_text() -> str:
        if cfg.sample_chars <= 0:
            return ""
        raw_model.eval()
        g = torch.Generator(device=device).manual_seed(cfg.seed)  # its own stream: training's stays put
        start = torch.tensor([[tokenizer.stoi.get("\n", 0)]], device=device)
        with autocast:
            idx = raw_model.generate(start, cfg.sample_chars, temperature=0.8, top_k=None, generator=g)
        raw_model.train()
        return tokenizer.decode(idx[0, 1:].tolist())

    def state(val_loss: float, rng: list[dict]) -> dict:
        return {
            "model": raw_model.state_dict(),
            "model_config": dataclasses.asdict(mcfg),
            "train_config": dataclasses.asdict(cfg),
            "vocab": tokenizer.to_json(),
            "iter": it,
            "val_loss": val_loss,
            "best_val_loss": best_val,
            "optimizer": optimizer.state_dict(),
            "rng": rng[0]["batches"],
            "rng_ranks": rng,
            "train_seconds": train_seconds,
            "data_sha256": text_sha,
            "hardware": f"{hardware_name(device)} x{dist.world}",
        }

    def log_metrics(row: dict) -> None:
        with open(checkpoint.metrics_path(out), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    if dist.master and resume is None:
        # a fresh run (--force): no stale resumable state, metrics or curve of an older run survive
        for stale in (checkpoint.last_path(out), checkpoint.metrics_path(out), checkpoint.curve_path(out)):
            stale.unlink(missing_ok=True)
    report(Event("start", it, cfg.max_iters, info={
        "params": raw_model.num_params(), "device": device, "world": dist.world,
        "hardware": hardware_name(device), "vocab_size": tokenizer.vocab_size,
        "train_chars": len(train_text), "val_chars": len(val_text), "resumed": resume is not None,
    }))

    status = "done"
    session_start = time.perf_counter()
    seconds_before = train_seconds
    last_val = float(resume.get("val_loss", float("nan"))) if resume is not None else float("nan")
    step_times: list[float] = []
    evaluated_at = it  # a resumed run was evaluated when it was saved
    saved_iter = it if resume is not None else None
    in_step = False
    lr = lr_at(cfg, it, schedule_progress(cfg, it, train_seconds))
    model.train()
    try:
        while True:
            stop_reason = None
            train_seconds = seconds_before + time.perf_counter() - session_start
            if it >= cfg.max_iters:
                stop_reason = "done"
            elif cfg.time_budget and train_seconds >= cfg.time_budget:
                stop_reason = "time"
            elif should_stop():
                stop_reason = "interrupted"
            stop_reason, train_seconds = _agree(stop_reason, train_seconds, dist)
            final = stop_reason is not None
            if it > evaluated_at and (it % cfg.eval_interval == 0 or final):
                evaluated_at = it
                rng = _gather_rng(gen, device, dist)
                if dist.master:
                    tl, vl = evaluate()
                    last_val = vl
                    improved = vl < best_val
                    if improved:
                        best_val = vl
                        checkpoint.save(out, state(vl, rng))
                    checkpoint.save(checkpoint.last_path(out), state(vl, rng))
                    saved_iter = it
                    row = {"iter": it, "train_loss": tl, "val_loss": vl, "lr": lr, "elapsed": round(train_seconds, 2)}
                    log_metrics(row)
                    report(Event("eval", it, cfg.max_iters, train_loss=tl, val_loss=vl, best_val_loss=best_val,
                                 elapsed=train_seconds, saved=improved, sample=sample_text()))
            if final:
                status = stop_reason
                break

            # every rank uses rank 0's clock, so a time budget gives all ranks the same rate
            lr = lr_at(cfg, it, schedule_progress(cfg, it, train_seconds))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            t0 = time.perf_counter()
            in_step = True
            x, y = train_batches.sample(gen)
            with autocast:
                logits, _ = model(x)
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            it += 1
            in_step = False
            loss_value = _mean_over_ranks(loss, dist)  # the same value on every rank: all stop together
            if not math.isfinite(loss_value):
                remedy = f"lower --learning-rate (now {cfg.learning_rate:g})" + (
                    " or set --grad-clip 1.0" if not cfg.grad_clip else "")
                if saved_iter is None:
                    then = "nothing was saved; start again"
                else:
                    then = f"iteration {saved_iter} is saved: continue it with --resume, or start over with --force"
                raise SgptError(f"the loss became {loss_value} at iteration {it}; {remedy} ({then})")
            step_times = (step_times + [time.perf_counter() - t0])[-20:]
            tok_s = tokens_per_step / (sum(step_times) / len(step_times))
            elapsed = seconds_before + time.perf_counter() - session_start
            report(Event("step", it, cfg.max_iters, loss=loss_value, lr=lr, tokens_per_s=tok_s, elapsed=elapsed,
                         best_val_loss=best_val if best_val < float("inf") else None,
                         eta=_eta(cfg, it, elapsed, step_times)))
    except KeyboardInterrupt:
        status = "interrupted"
        train_seconds = seconds_before + time.perf_counter() - session_start
        # a torn step (weights half-updated, batch drawn but not counted) must not be saved;
        # under DDP the other ranks may be waiting in a collective, so only a single process saves
        if dist.master and dist.world == 1 and not in_step and it > 0 and saved_iter != it:
            checkpoint.save(checkpoint.last_path(out), state(last_val, _gather_rng(gen, device, dist)))
            saved_iter = it
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
    report(Event("end", it, cfg.max_iters, best_val_loss=best_val, elapsed=train_seconds,
                 info={"status": status, "saved_iter": saved_iter}))
    return Result(status, it, best_val, train_seconds, out, checkpoint.last_path(out), saved_iter)


def _eta(cfg: TrainConfig, it: int, elapsed: float, step_times: list[float]) -> float:
    by_iters = (cfg.max_iters - it) * (sum(step_times) / len(step_times))
    return min(by_iters, max(cfg.time_budget - elapsed, 0.0)) if cfg.time_budget else by_iters


def _agree(stop_reason: str | None, train_seconds: float, dist: Dist) -> tuple[str | None, float]:
    """Under DDP all ranks must stop at the same step and share a clock: rank 0's values win."""
    if dist.world <= 1:
        return stop_reason, train_seconds
    import torch.distributed as tdist

    codes = ["", "done", "time", "interrupted"]
    device = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([codes.index(stop_reason or ""), train_seconds], dtype=torch.float64, device=device)
    tdist.broadcast(flag, src=0)
    return codes[int(flag[0])] or None, float(flag[1])


def _mean_over_ranks(loss: torch.Tensor, dist: Dist) -> float:
    """The step's loss averaged over ranks (what DDP's averaged gradient belongs to)."""
    if dist.world <= 1:
        return loss.item()
    import torch.distributed as tdist

    total = loss.detach().float().clone()
    tdist.all_reduce(total)  # SUM: gloo has no AVG
    return total.item() / dist.world
