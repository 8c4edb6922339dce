"""`sgpt train`: flags only (declared as sgpt_cli.settings.Setting; every TrainConfig field is a
flag whose unset value keeps the preset's). The work happens in sgpt_cli.term.train_run, imported when
the command runs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Iterator

import typer

from sgpt_cli.term.common import require_extra, typer_command, user_errors
from sgpt_cli.config import PRESETS, TrainConfig
from sgpt_cli.errors import SgptError
from sgpt_cli.settings import DATA, DEVICE, Setting


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _preset_defaults(name: str) -> str:
    """The default of a hyperparameter under each preset, as --help states it."""
    base = getattr(TrainConfig(), name)
    values = {p: PRESETS[p].get(name, base) for p in PRESETS}
    word = {True: "on", False: "off"}
    if len(set(values.values())) == 1:
        return word.get(base, str(base)) if isinstance(base, bool) else str(base)
    return ", ".join(f"{p} {v}" for p, v in values.items())


def _hyper(name: str, help: str, *flags: str) -> Setting:
    """A TrainConfig field as a flag: unset (None) keeps the preset's value; its type is the field's."""
    kind = _KINDS[str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))]
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    metavar = {int: "N", float: "X", str: "TEXT"}.get(kind)
    # the ranges are TrainConfig.validate's, which says them in its own words (numbers of any size included)
    return Setting(name, (flag, *flags), kind, None, help, shown=_preset_defaults(name), metavar=metavar,
                   whole_most=None)


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
    except RuntimeError:
        # after Ctrl-C rank 0 may save and leave while this rank waits in a collective, which then
        # fails: that is the stop everyone asked for, not an error to print
        from sgpt_cli.term.train_run import StopRequest

        if StopRequest.signalled:
            raise typer.Exit(130) from None
        raise


OPTIONS = (
    DATA.but(help="UTF-8 text to train on."),
    Setting("preset", ("--preset", "-p"), str, "cpu",
            f"Starting hyperparameters: {', '.join(PRESETS)}. 'cpu' is tuned for a 2-core laptop, 'gpu' is "
            "nanoGPT's shakespeare_char model, 'nanogpt-cpu' nanoGPT's CPU recipe.", metavar="NAME"),
    Setting("out", ("--out", "-o"), Path, Path("models/model.pt"),
            "Best-validation checkpoint; the latest resumable state goes beside it as NAME.last.pt, metrics as "
            "NAME.metrics.jsonl, the loss curve as NAME.loss.png.", metavar="PATH"),
    Setting("resume", ("--resume",), bool, False,
            "Continue the run saved at --out (iteration, optimizer, RNG, best val); flags given now override "
            "its settings, except the model's shape; --time-budget then means this many seconds more (without "
            "it, a run that spent its budget gets the same again)."),
    Setting("init_from", ("--init-from",), Path, None,
            "Fine-tune: start from this checkpoint's weights (and shape; characters new in --data get new "
            "embedding rows) with a fresh optimizer and schedule.", shown="off", metavar="PATH"),
    Setting("force", ("--force",), bool, False,
            "Start a new run even if --out already holds a checkpoint (it is replaced)."),
    DEVICE.but(help="auto (CUDA when available), cpu or cuda."),
    _hyper("max_iters", "Stop after this many optimizer steps (total, counting resumed ones)."),
    _hyper("time_budget", "Seconds for the whole run, the final whole-split val loss and checkpoint included; the learning-rate schedule is fitted to it. 0 = no limit."),
    _hyper("n_layer", "Transformer blocks."),
    _hyper("n_head", "Attention heads per block (must divide --n-embd)."),
    _hyper("n_kv_head", "Key/value heads (must divide --n-head): fewer make the cache, and batched decoding, cheaper. 0 = one per head."),
    _hyper("n_embd", "Residual width."),
    _hyper("mlp", "The MLP's activation: gelu (GPT-2) or relu2 (ReLU squared).").but(metavar="gelu|relu2"),
    _hyper("tied_head", "Share the output head's weights with the embedding (--no-tied-head: its own, zero at the start)."),
    _hyper("qk_norm", "RMS-normalise every query and key head before attention (steadier at high learning rates)."),
    _hyper("logit_cap", "Squash the logits smoothly into (-X, X) with X * tanh(logits / X); 0 = off."),
    _hyper("block_size", "Context window in characters."),
    _hyper("dropout", "Dropout probability."),
    _hyper("batch_size", "Sequences per optimizer step (per process under torchrun)."),
    _hyper("learning_rate", "Peak learning rate.", "--lr"),
    _hyper("min_lr", "Learning rate at the end of the decay."),
    _hyper("lr_schedule", "After warmup: cosine (down to --min-lr over the run), or trapezoid (flat, then "
           "linear down to --min-lr over the last --cooldown of the run).").but(metavar="cosine|trapezoid"),
    _hyper("cooldown", "trapezoid: the fraction of the run, at its end, over which the rate decays."),
    _hyper("warmup_iters", "Steps of linear warmup."),
    _hyper("lr_decay_iters", "Steps over which to decay (0 = the whole run)."),
    _hyper("weight_decay", "AdamW weight decay on matrices."),
    _hyper("beta1", "AdamW beta1."),
    _hyper("beta2", "AdamW beta2."),
    _hyper("grad_clip", "Clip the gradient norm to this (0 = off)."),
    _hyper("optimizer", "adamw, or muon (Muon for the blocks' matrices, AdamW for the rest).").but(metavar="adamw|muon"),
    _hyper("muon_lr_scale", "Muon's learning rate as a multiple of --learning-rate."),
    _hyper("muon_momentum", "Muon's momentum."),
    _hyper("muon_ns_steps", "Newton-Schulz iterations per Muon update (fewer: cheaper steps, rougher orthogonalisation)."),
    _hyper("eval_interval", "Most steps between estimates and checkpoints (with a time budget, also one "
           "every eighth of the budget at least: a curve on a slow machine)."),
    _hyper("eval_iters", "Batches per estimate (with a time budget, fewer where they would cost more than "
           "5% of the training since the last)."),
    _hyper("sample_chars", "Characters sampled at each evaluation (0 = none)."),
    _hyper("seed", "Random seed."),
    _hyper("compile", "torch.compile the model (worth it on CUDA for long runs)."),
    _hyper("precision", "Matmuls in bfloat16 or float32; auto: bfloat16 on CUDA, and on a CPU where a "
           "short probe measures it faster (models 64 or more wide; the verdict cached per CPU and torch "
           "version in $SGPT_HOME), float32 elsewhere.").but(metavar="auto|float32|bfloat16"),
)

DOC = """Train the character-level GPT on a text (tiny-shakespeare by default).

Ctrl-C (or SIGTERM) stops within seconds and saves a checkpoint that --resume continues. Several GPUs
or machines: torchrun --nproc_per_node=N -m sgpt_cli train ... (PyTorch DDP).
"""


def _run(data, preset, out, resume, init_from, force, device, **overrides) -> int:
    require_extra("train")
    from sgpt_cli.term.train_run import run_train

    return run_train(data=data, preset=preset, out=out, resume=resume, force=force, device=device, overrides=overrides,
                     init_from=init_from)


train = typer_command("train", DOC, OPTIONS, _run, errors=_rank_errors)
