"""`sgpt export`: flags, the progress display and the report; the work (sgpt_cli.train.onnx_export, which needs
torch) is imported inside the command.

On a terminal (and without NO_COLOR) a rich spinner names the stage; otherwise each stage is one plain
line on stdout, so a log reads top to bottom. Errors are one line on stderr (cli_common.user_errors).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from typing import Iterator

from sgpt_cli.config import heads_text
from sgpt_cli.errors import visible
from sgpt_cli.term.common import require_extra, terminate_as_interrupt, typer_command, use_color
from sgpt_cli.settings import CHECKPOINT, DATA, EXPORT_OUT, QUANTIZE


OPTIONS = (
    CHECKPOINT,
    EXPORT_OUT,
    QUANTIZE,
    DATA.but(help="The checkpoint's training text (SHA-256 checked), whose whole validation split measures the "
                  "loss recorded in the file (and, with --quantize, the int8 loss change).",
             shown="the path recorded at training if its SHA-256 still matches, else data/tinyshakespeare.txt "
                   "if it is that text (unpacked from sgpt's copy when missing)"),
)

DOC = """Turn a checkpoint into one self-contained ONNX file and verify it against PyTorch.

The file follows the sgpt ONNX interface (docs/onnx-interface.md, format 2: standard ONNX, a fixed
key/value cache updated in place, vocabulary and configuration in its metadata). It is written under a temporary name
and appears only after ONNX Runtime has matched PyTorch's logits; a failed check leaves no file.
"""


def _run(checkpoint, out, quantize, data) -> int:
    require_extra("export")
    with terminate_as_interrupt():
        from sgpt_cli.train.onnx_export import export

        with stage_display() as (status, progress):
            report = export(checkpoint, out, quantize=quantize, data=data, status=status,
                            progress=progress, fetch=_fetch)
        sys.stdout.write(render(report))
        sys.stdout.flush()
    return 0


export_cmd = typer_command("export", DOC, OPTIONS, _run)


@contextlib.contextmanager
def stage_display() -> Iterator[tuple]:
    """(status, progress) callbacks: a transient spinner on a terminal, plain lines elsewhere."""
    if not use_color(sys.stdout):
        def plain(message: str) -> None:
            sys.stdout.write(f"{visible(message)} ...\n")  # a full stdout: cli_common notes it, the export goes on
            sys.stdout.flush()

        yield plain, None
        return
    from sgpt_cli.term.console import Console

    console = Console()
    stage = {"text": ""}
    with console.status("", spinner="dots") as spinner:
        def status(message: str) -> None:
            stage["text"] = message = visible(message)  # "loading NAME": shown safely
            spinner.update(message)

        def progress(done: int, total: int) -> None:
            spinner.update(f"{stage['text']} ({done}/{total} batches)")

        yield status, progress


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fetch(path) -> None:
    """The default corpus, downloaded as `sgpt eval` does, the bar on stderr (stdout is the report)."""
    from rich.console import Console

    from sgpt_cli.term.fetch import fetch_default_data

    fetch_default_data(path, Console(stderr=True, highlight=False))


def render(r: dict) -> str:
    """The plain report: one fact a line, the same on a terminal and in a pipe."""
    lines = [
        f"wrote       {r['out']}: {_size(r['bytes'])}, opset {r['opset']}, one file (weights inside)",
        f"model       {r['params']:,} parameters: {r['n_layer']} layers, {heads_text(r['n_head'], r['n_kv_head'])}, "
        f"width {r['n_embd']}, "
        f"block {r['block_size']}, vocabulary {r['vocab_size']} (from {r['checkpoint']})",
        f"verified    max |ONNX - PyTorch| logits {r['max_abs_diff']:.1e} (limit {r['tolerance']:.0e}) at lengths "
        f"{', '.join(map(str, r['lengths']))} x batch {' and '.join(map(str, r['batches']))}; "
        f"rows of {', '.join(map(str, r['prefill_lengths']))} prefilled, {r['decode_steps']} steps together (the window "
        f"rolling) = PyTorch's rolling cache; batched rows {'bitwise' if r['batch_bitwise'] else 'NOT bitwise'} alone",
    ]
    if "explain_attention_diff" in r:  # sgpt explain's numbers (sgpt_cli.train.explain_check)
        lines.append(f"explain     attention weights within {r['explain_attention_diff']:.1e} of PyTorch's, rows summing "
                     f"to 1 within {r['explain_row_sum_diff']:.1e}, none on later positions; the last layer's lens "
                     "equal to the logits")
    if not r.get("quantize") and r.get("val_source") == "measured":
        lines.append(f"val loss    {r['val_loss']:.4f} nats/char on the whole validation split of {r['data']} "
                     f"({r['val_chars']:,} characters), recorded in the file")
    elif not r.get("quantize") and r.get("val_loss") is not None:
        lines.append(f"val loss    {r['val_loss']:.4f} nats/char, as the checkpoint records it ({r['val_source']}): "
                     "its training text was not found (pass --data to measure this file)")
    if r.get("quantize"):
        saved = 1 - r["bytes"] / r["fp32_bytes"]
        lines += [
            f"int8        {r['int8_matrices']} weight matrices: {_size(r['fp32_bytes'])} -> {_size(r['bytes'])} "
            f"({saved:.0%} smaller); max |ONNX - PyTorch| logits {r['int8_max_abs_diff']:.2f} (limit {r['int8_limit']:.2f}); "
            f"batched rows {'bitwise' if r['int8_batch_bitwise'] else 'NOT bitwise'} alone",
            f"val loss    {r['val_loss_fp32']:.4f} -> {r['val_loss_int8']:.4f} nats/char ({r['val_loss_delta']:+.4f}, "
            f"limit +{r['max_loss_delta']}) on the validation split of {r['data']} ({r['val_chars']:,} characters)",
        ]
    lines += [
        f"time        {r['seconds']:.1f} s",
        f"next        sgpt chat --model {shlex.quote(r['out'])}",
    ]
    return "\n".join(visible(line) for line in lines) + "\n"  # names shown safely (errors.visible)
