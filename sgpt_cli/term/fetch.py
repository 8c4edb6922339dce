"""Downloading the default corpus with a progress bar: shared by `sgpt train` and `sgpt eval`.

Torch-free (eval runs without torch); rich is imported by the caller's Console only.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sgpt_cli.errors import visible

from sgpt_cli import data as corpus


def fetch_default_data(path: Path, console: Console) -> Path:
    """Write tiny-shakespeare to `path` (SHA-256 checked, atomically) from the copy inside the
    package, or, without one, download it, saying so on `console`: a transfer bar on a terminal,
    two plain lines in a log or a pipe."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if corpus.default_data_source() == "packaged":
        corpus.ensure_default_data(path)
        console.print(f"[dim]{escape(visible(path))} was missing: unpacked tiny-shakespeare from the copy inside "
                      "sgpt (SHA-256 verified)[/dim]", soft_wrap=True)
        return path

    console.print(f"[dim]{escape(visible(path))} is missing: downloading tiny-shakespeare from "
                  f"{escape(corpus.TINY_SHAKESPEARE_URL)}[/dim]", soft_wrap=True)
    if not console.is_terminal:
        corpus.ensure_default_data(path)
    else:
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(path.name, total=None)
            corpus.ensure_default_data(
                path, progress=lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"[dim]saved {escape(visible(path))} (SHA-256 verified)[/dim]", soft_wrap=True)
    return path
