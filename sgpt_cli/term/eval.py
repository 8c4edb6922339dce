"""`sgpt eval`: flags, the worker and the report: the mean cross-entropy of an ONNX model on a text,
torch-free.

It picks the text (tiny-shakespeare's validation split by default, so the README's figure can be
checked in one command; the whole of a file given with --data), encodes it with the model's own
vocabulary, scores it with `sgpt_cli.infer.onnx_model.score_ids` (non-overlapping windows of the model's
block size, the protocol of training and export). `evaluate` returns plain values; a progress bar is
drawn on stderr when stderr is a terminal, never into a pipe or a log file.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

from sgpt_cli.errors import SgptError, UsageError, shown, visible
from sgpt_cli.term.common import typer_command
from sgpt_cli.settings import DATA, DEVICE, JSON, MODEL, Setting

OPTIONS = (
    MODEL,
    DATA.but(help="UTF-8 text to score."),
    Setting("split", ("--split",), str, None,
            "Which part of the text: nanoGPT's split (val = the last 10% of the characters, train = the "
            "first 90%) or all.", shown="val for the default text, all for --data",
            choices=("val", "train", "all"), metavar="val|train|all"),
    DEVICE,
    Setting("batch_size", ("--batch-size",), int, 16, "Windows of block-size characters per forward pass.",
            low=1, metavar="N"),
    JSON,
)

DOC = """Score a text with an ONNX model: mean cross-entropy (nats per character) and perplexity.

With no flags it measures the validation loss on tiny-shakespeare as nanoGPT does (the last 10% of
the characters, in windows of the model's block size): the figure the README and `sgpt export` report.
"""


def _run(model, data, split, device, batch_size, as_json) -> int:
    from sgpt_cli.data import default_data
    from sgpt_cli.infer.model_lookup import open_model

    opened = open_model(model, device)  # a missing or bad model is said before any text is written
    default = default_data()
    if data is None and not default.exists():  # the README's claim is checkable in one command
        from sgpt_cli.term.console import Console

        from sgpt_cli.term.fetch import fetch_default_data

        fetch_default_data(default, Console(stderr=True, highlight=False))

    with progress_bar() as progress:
        result = evaluate(opened, data, split, batch=batch_size, progress=progress)
    if as_json:
        from sgpt_cli.jsonout import dumps

        sys.stdout.write(dumps(result) + "\n")
    else:
        sys.stdout.write(render(result))
    sys.stdout.flush()
    return 0


eval_cmd = typer_command("eval", DOC, OPTIONS, _run)


SPLITS = ("val", "train", "all")


def resolve_data(data: Path | None, split: str | None) -> tuple[Path, str]:
    """(text file, split): the default corpus's validation split, or all of a file the user names."""
    from sgpt_cli.data import default_data

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
    from sgpt_cli.data import split_text

    if split == "all":
        return text
    train, val = split_text(text)
    return train if split == "train" else val


def evaluate(opened, data: Path | None = None, split: str | None = None, batch: int = 16,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Score the chosen text with the opened model (sgpt_cli.infer.model_lookup.open_model),
    torch-free; the dict is what `sgpt eval --json` prints. It calls `progress(done, total)`."""
    if batch < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch})")
    from sgpt_cli.data import TRAIN_FRACTION, read_text

    data_path, split = resolve_data(data, split)
    text, sha = read_text(data_path)
    part = select_split(text, split)

    from sgpt_cli.infer.onnx_model import score_ids

    onnx = opened.model
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
        raise SgptError(f"{shown(opened.path)} gives no finite score to this text (its loss is {loss}); re-export "
                        "the model with `sgpt export`")
    model_sha = onnx.meta.get("sgpt.data_sha256") or None
    return {
        "model": str(opened.path),
        "model_source": opened.source,
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


def render(r: dict) -> str:
    """The plain report: one fact a line, the same on a terminal and in a pipe."""
    source = f"{r['model_source']}, " if r.get("model_source") else ""
    lines = [
        f"model       {r['model']} ({source}{r['device']})",
        f"data        {r['data']}, {r['split']} split ({r['split_rule']}): {r['chars']:,} characters",
        f"loss        {r['loss']:.4f} nats/char ({r['bits_per_char']:.3f} bits/char)",
        f"perplexity  {r['perplexity']:.3f}" if r["perplexity"] is not None else "perplexity  past e**700",
        f"scored      {r['chars_scored']:,} characters in windows of {r['block_size']}, "
        f"{r['seconds']:.1f} s ({r['chars_per_s'] or 0:,.0f} chars/s)",
    ]
    if r["unknown_chars"]:
        kinds = "".join(r["unknown_kinds"][:20])
        lines.append(f"skipped     {r['unknown_chars']:,} characters the model does not know: {kinds!r}")
    if r["recorded_val_loss"] is not None:
        lines += recorded_lines(r)
    if r["same_text"] is False and r["split"] != "all":
        lines.append("note        the model was trained on another text, so this split was not held out from it")
    return "\n".join(visible(line) for line in lines) + "\n"  # names shown safely (errors.visible)


def recorded_lines(r: dict) -> list[str]:
    """The figure in the model file beside this measurement. They are the same protocol (the whole
    validation split in windows of the block size), so on the CPU that exported the model they
    agree to float rounding; when their 4-decimal roundings differ both are given to 6 decimals,
    with the difference and, for an int8 model, why: ONNX Runtime's matrix kernels use each CPU's
    own vector instructions (AVX2, AVX-512, ...), and their results differ by a few 1e-5 nats/char
    between CPUs."""
    rec, loss = r["recorded_val_loss"], r["loss"]
    if f"{rec:.4f}" == f"{loss:.4f}" or r["split"] != "val":
        return [f"recorded    {rec:.4f} nats/char validation loss, in the model file"]
    out = [f"recorded    {rec:.6f} nats/char validation loss, in the model file; measured here {loss:.6f} "
           f"({loss - rec:+.6f})"]
    if r.get("quantization") == "int8" and abs(loss - rec) < 5e-4:
        out.append("note        an int8 model's figure moves by a few 1e-5 between CPUs (ONNX Runtime's matrix "
                   "kernels use each CPU's own instructions); it was recorded on the CPU that exported it")
    return out


class progress_bar:
    """A rich progress bar on stderr when it is a terminal; otherwise no callback at all."""

    def __enter__(self):
        self.bar = None
        if not sys.stderr.isatty():
            return None
        from sgpt_cli.term.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("scoring", total=None)

        def update(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total)

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
