"""`sgpt train` behind the flags: find the data, build the config, run the trainer, draw progress.

The rich live display lives here and only here; the trainer reports plain events.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sgpt_cli import checkpoint
from sgpt_cli.config import build_train_config
from sgpt_cli.data import DEFAULT_DATA, ensure_default_data, read_text
from sgpt_cli.errors import SgptError, check_writable_target


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _download_with_bar(path: Path, console: Console) -> Path:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console.print(f"[dim]{path} is missing: downloading tiny-shakespeare…[/dim]")
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("tinyshakespeare.txt", total=None)
        ensure_default_data(path, progress=lambda done, total: progress.update(task, completed=done, total=total))
    return path


class TrainDisplay:
    """Renders trainer events: a live status table on a terminal, plain lines otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else None
        self.last_step = None
        self.best = None

    def __call__(self, e) -> None:
        if e.kind == "start":
            i = e.info
            what = "resuming" if i["resumed"] else "training"
            self.console.print(
                f"[bold]{what}[/bold] {i['params'] / 1e6:.2f}M parameters on {i['hardware']}"
                + (f" x{i['world']} processes" if i["world"] > 1 else "")
                + f" | vocab {i['vocab_size']} | {i['train_chars']:,} train / {i['val_chars']:,} val characters"
            )
            if self.live:
                self.live.start()
        elif e.kind == "step":
            self.last_step = e
            if self.live:
                self.live.update(self._table(e))
        elif e.kind == "eval":
            mark = " [green]saved best[/green]" if e.saved else ""
            self.console.print(
                f"[bold cyan]iter {e.iter:>6}[/bold cyan]  train {e.train_loss:.4f}  "
                f"[bold]val {e.val_loss:.4f}[/bold]  best {e.best_val_loss:.4f}  {_fmt_time(e.elapsed)}{mark}"
            )
            if e.sample:
                self.console.print(Text(e.sample.strip("\n")[:400], style="italic dim"))
        elif e.kind == "end" and self.live:
            self.live.stop()

    def _table(self, e) -> Table:
        t = Table.grid(padding=(0, 2))
        pct = e.iter / e.max_iters if e.max_iters else 0
        bar = "█" * int(pct * 30) + "░" * (30 - int(pct * 30))
        t.add_row(
            f"iter [bold]{e.iter}[/bold]/{e.max_iters}", bar,
            f"loss [bold]{e.loss:.4f}[/bold]",
            f"best val {e.best_val_loss:.4f}" if e.best_val_loss else "best val -",
            f"{e.tokens_per_s:,.0f} tok/s", f"lr {e.lr:.2e}",
            f"elapsed {_fmt_time(e.elapsed)}", f"eta {_fmt_time(e.eta)}",
        )
        return t


def run_train(*, data: Path | None, preset: str, out: Path, resume: bool, force: bool, device: str,
              overrides: dict) -> int:
    from sgpt_cli import trainer  # torch: only now

    master = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=False) if master else Console(file=open(os.devnull, "w"))
    cfg = build_train_config(preset, overrides)  # validates flags before any work
    out = Path(out)
    if resume and force:
        raise SgptError("--resume and --force contradict each other; pick one")
    check_writable_target(out)
    if not resume and not force and (out.exists() or checkpoint.last_path(out).exists()):
        raise SgptError(f"{out} already holds a checkpoint; pass --resume to continue it or --force to start over")

    if data is None:
        data = DEFAULT_DATA
        if not data.exists():
            if not master:
                raise SgptError(f"{data} is missing; download it once before launching torchrun")
            _download_with_bar(data, console)
    text, sha = read_text(data)

    resume_ckpt = None
    if resume:
        from sgpt_cli.tokenizer import CharTokenizer

        resume_ckpt, cfg = trainer.load_resume_state(out, sha, CharTokenizer.from_text(text), overrides)

    display = TrainDisplay(console)
    try:
        result = trainer.train(cfg, text, sha, out, device=device, resume=resume_ckpt, callback=display)
    finally:
        if display.live and display.live.is_started:
            display.live.stop()
    if not master:
        return 0 if result.status != "interrupted" else 130
    if result.best_val_loss < float("inf") and checkpoint.metrics_path(out).exists():
        from sgpt_cli.plot import render_curves

        png = out.with_name(out.stem + ".loss.png")
        console.print(render_curves(checkpoint.metrics_path(out), png))
    if result.status == "interrupted":
        console.print(
            f"[yellow]interrupted at iteration {result.iters}[/yellow]; state saved to {result.last}. "
            f"Resume with: sgpt train --out {out} --resume"
        )
        return 130
    why = "time budget spent" if result.status == "time" else "done"
    console.print(
        f"[bold green]{why}[/bold green]: {result.iters} iterations in {_fmt_time(result.elapsed)}, "
        f"best val loss {result.best_val_loss:.4f} -> {out}\nnext: sgpt export {out}"
    )
    return 0
