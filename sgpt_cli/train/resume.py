"""Starting a training from a checkpoint: resuming one (`--resume`: its state and config, with this
run's overrides, checked against the text) or fine-tuning another's weights (`--init-from`: its
shape, its vocabulary extended by the text's new characters, its weights loaded into the larger
tables).

What it does not do: read or write the files themselves (sgpt_cli.train.checkpoint does), or build
the run (sgpt_cli.train.trainer.setup calls these).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sgpt_cli.config import SHAPE_FIELDS, TrainConfig, model_config_from_dict, train_config_from_dict
from sgpt_cli.errors import SgptError, UsageError
from sgpt_cli.infer.tokenizer import CharTokenizer
from sgpt_cli.train import checkpoint
from sgpt_cli.train.model import GPT


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
