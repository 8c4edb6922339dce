"""`sgpt eval`: flags and the report; the scoring (sgpt_cli.infer.evaluate) is imported inside the command.

A progress bar is drawn on stderr when stderr is a terminal, never into a pipe or a log file.
"""

from __future__ import annotations

import sys

from sgpt_cli.errors import visible
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
    from sgpt_cli.infer.evaluate import evaluate
    from sgpt_cli.infer.model_lookup import find_model

    model_path, source = find_model(model)  # a missing model is said before any text is written
    default = default_data()
    if data is None and not default.exists():  # the README's claim is checkable in one command
        from sgpt_cli.term.console import Console

        from sgpt_cli.term.fetch import fetch_default_data

        fetch_default_data(default, Console(stderr=True, highlight=False))

    with progress_bar() as progress:
        result = evaluate(model_path, data, split, device, batch=batch_size, progress=progress, source=source)
    if as_json:
        from sgpt_cli.jsonout import dumps

        sys.stdout.write(dumps(result) + "\n")
    else:
        sys.stdout.write(render(result))
    sys.stdout.flush()
    return 0


eval_cmd = typer_command("eval", DOC, OPTIONS, _run)


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
