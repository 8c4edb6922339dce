"""`sgpt eval`'s worker: the mean cross-entropy of an ONNX model on a text, torch-free.

It picks the text (tiny-shakespeare's validation split by default, so the README's figure can be
checked in one command; the whole of a file given with --data), encodes it with the model's own
vocabulary, scores it with `sgpt_cli.infer.onnx_model.score_ids` (non-overlapping windows of the model's
block size, the protocol of training and export) and returns plain values.

What it does not: print, draw progress (it calls `progress(done, total)`), or import torch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from sgpt_cli.data import TRAIN_FRACTION, default_data, read_text, split_text
from sgpt_cli.errors import SgptError, UsageError, shown

SPLITS = ("val", "train", "all")


def resolve_data(data: Path | None, split: str | None) -> tuple[Path, str]:
    """(text file, split): the default corpus's validation split, or all of a file the user names."""
    if split is not None and split not in SPLITS:
        raise UsageError(f"--split must be val, train or all (got {split!r})")
    if data is None:
        default = default_data()
        if not default.exists():
            raise SgptError(
                f"no text to score: {default} is missing; `sgpt eval` writes it when run without "
                "--data, or pass --data FILE"
            )
        return default, split or "val"
    return Path(data), split or "all"


def select_split(text: str, split: str) -> str:
    """nanoGPT's split: 'train' is the first 90% of the characters, 'val' the last 10%."""
    if split == "all":
        return text
    train, val = split_text(text)
    return train if split == "train" else val


def evaluate(model: str | Path | None = None, data: Path | None = None, split: str | None = None,
             device: str = "auto", batch: int = 16,
             progress: Callable[[int, int], None] | None = None, source: str | None = None) -> dict:
    """Score the chosen text; the dict is what `sgpt eval --json` prints."""
    if batch < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch})")
    data_path, split = resolve_data(data, split)
    text, sha = read_text(data_path)
    part = select_split(text, split)

    from sgpt_cli.infer.model_lookup import find_model
    from sgpt_cli.infer.onnx_model import OnnxModel, score_ids

    model_path, found = find_model(model)
    source = source or found  # the caller's own lookup said how the model was chosen
    onnx = OnnxModel(model_path, device=device)
    tok = onnx.tokenizer
    ids = tok.encode(part, drop_unknown=True)
    unknown = tok.unknown(part)
    if len(ids) == 0:
        raise SgptError(
            f"no character of {data_path} ({split} split) is in the model's vocabulary; "
            "score a text in the alphabet the model was trained on"
        )
    t0 = time.perf_counter()
    loss, scored = score_ids(onnx, ids, batch=batch, progress=progress)
    seconds = time.perf_counter() - t0
    if not math.isfinite(loss):  # a damaged or hostile model's NaN: no score, and no strict JSON holds it
        raise SgptError(f"{shown(model_path)} gives no finite score to this text (its loss is {loss}); re-export "
                        "the model with `sgpt export`")
    model_sha = onnx.meta.get("sgpt.data_sha256") or None
    return {
        "model": str(model_path),
        "model_source": source,
        "data": str(data_path),
        "split": split,
        "split_rule": (f"the last {1 - TRAIN_FRACTION:.0%} of the characters" if split == "val" else
                       f"the first {TRAIN_FRACTION:.0%} of the characters" if split == "train" else "the whole file"),
        "chars": len(part),
        "chars_scored": scored,
        "unknown_chars": len(part) - len(ids),
        "unknown_kinds": unknown,
        "loss": loss,
        "bits_per_char": loss / math.log(2),
        "perplexity": math.exp(loss) if loss < 700 else None,  # past float's range: e**710
        "seconds": seconds,
        "chars_per_s": scored / seconds if seconds > 0 else None,
        "block_size": onnx.block_size,
        "device": onnx.device,
        "recorded_val_loss": onnx.val_loss,
        # recorded minus measured: 0 up to float rounding on the CPU that exported the model; an
        # int8 model scores a few 1e-5 apart on CPUs with other vector instructions (it is scored in
        # float32 from its dequantized weights: OnnxModel.prefill_session)
        "recorded_minus_measured": None if onnx.val_loss is None else onnx.val_loss - loss,
        "quantization": onnx.meta.get("sgpt.quantization") or "none",
        # whether this is the very text the model was trained on (None: the model does not say)
        "same_text": None if model_sha is None else model_sha == sha,
    }
