"""`sgpt train`: flags only. The work happens in sgpt_cli.train_view, imported when the command runs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator, Optional

import typer

from sgpt_cli.cli_common import user_errors
from sgpt_cli.config import PRESETS, TrainConfig
from sgpt_cli.errors import SgptError


def _preset_defaults(name: str) -> str:
    """The default of a hyperparameter under each preset; `\\[` keeps rich from reading it as markup."""
    base = getattr(TrainConfig(), name)
    values = {p: PRESETS[p].get(name, base) for p in PRESETS}
    if len(set(values.values())) == 1:
        return f"\\[default: {base}]"
    return "\\[default: " + ", ".join(f"{p} {v}" for p, v in values.items()) + "]"


@contextlib.contextmanager
def _rank_errors() -> Iterator[None]:
    """Under torchrun every rank meets the same user error: rank 0 says it, the others exit quietly."""
    if int(os.environ.get("RANK", "0")) == 0:
        with user_errors():
            yield
        return
    try:
        yield
    except SgptError as exc:
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _opt(name: str, help: str, *flags: str):
    flag = "--" + name.replace("_", "-")
    return typer.Option(None, flag, *flags, help=f"{help} {_preset_defaults(name)}", show_default=False)


def train(
    data: Optional[Path] = typer.Option(None, "--data", help="UTF-8 text to train on. \\[default: data/tinyshakespeare.txt, downloaded (SHA-256 checked) when missing]", show_default=False),
    preset: str = typer.Option("cpu", "--preset", "-p", help=f"Starting hyperparameters: {', '.join(PRESETS)}. 'cpu' is tuned for a 2-core laptop, 'gpu' is nanoGPT's shakespeare_char model, 'nanogpt-cpu' nanoGPT's CPU recipe."),
    out: Path = typer.Option(Path("models/model.pt"), "--out", "-o", help="Best-validation checkpoint; the latest resumable state goes beside it as NAME.last.pt, metrics as NAME.metrics.jsonl, the loss curve as NAME.loss.png."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run saved at --out (iteration, optimizer, RNG, best val); flags given now override its settings, except the model's shape. \\[default: off]"),
    force: bool = typer.Option(False, "--force", help="Start a new run even if --out already holds a checkpoint (it is replaced). \\[default: off]"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    max_iters: Optional[int] = _opt("max_iters", "Stop after this many optimizer steps (total, counting resumed ones)."),
    time_budget: Optional[float] = _opt("time_budget", "Stop after this many seconds of training (total); the learning-rate schedule is fitted to it. 0 = no limit."),
    n_layer: Optional[int] = _opt("n_layer", "Transformer blocks."),
    n_head: Optional[int] = _opt("n_head", "Attention heads per block (must divide --n-embd)."),
    n_embd: Optional[int] = _opt("n_embd", "Residual width."),
    block_size: Optional[int] = _opt("block_size", "Context window in characters."),
    dropout: Optional[float] = _opt("dropout", "Dropout probability."),
    batch_size: Optional[int] = _opt("batch_size", "Sequences per optimizer step (per process under torchrun)."),
    learning_rate: Optional[float] = _opt("learning_rate", "Peak learning rate.", "--lr"),
    min_lr: Optional[float] = _opt("min_lr", "Learning rate at the end of the cosine decay."),
    warmup_iters: Optional[int] = _opt("warmup_iters", "Steps of linear warmup."),
    lr_decay_iters: Optional[int] = _opt("lr_decay_iters", "Steps over which to decay (0 = the whole run)."),
    weight_decay: Optional[float] = _opt("weight_decay", "AdamW weight decay on matrices."),
    beta1: Optional[float] = _opt("beta1", "AdamW beta1."),
    beta2: Optional[float] = _opt("beta2", "AdamW beta2."),
    grad_clip: Optional[float] = _opt("grad_clip", "Clip the gradient norm to this (0 = off)."),
    optimizer: Optional[str] = _opt("optimizer", "adamw, or muon (Muon for the blocks' matrices, AdamW for the rest)."),
    muon_lr_scale: Optional[float] = _opt("muon_lr_scale", "Muon's learning rate as a multiple of --learning-rate."),
    muon_momentum: Optional[float] = _opt("muon_momentum", "Muon's momentum."),
    eval_interval: Optional[int] = _opt("eval_interval", "Steps between evaluations and checkpoints."),
    eval_iters: Optional[int] = _opt("eval_iters", "Batches per evaluation."),
    sample_chars: Optional[int] = _opt("sample_chars", "Characters sampled at each evaluation (0 = none)."),
    seed: Optional[int] = _opt("seed", "Random seed."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (worth it on CUDA for long runs). \\[default: off]", show_default=False),
) -> None:
    """Train the character-level GPT on a text (tiny-shakespeare by default).

    Ctrl-C stops after the current step and saves a checkpoint that --resume continues. Several GPUs
    or machines: torchrun --nproc_per_node=N -m sgpt_cli train ... (PyTorch DDP).
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset"}
    overrides = {k: v for k, v in locals().items() if k in names}
    with _rank_errors():
        from sgpt_cli.train_view import run_train

        code = run_train(data=data, preset=preset, out=out, resume=resume, force=force, device=device, overrides=overrides)
    raise typer.Exit(code)
