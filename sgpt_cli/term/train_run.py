"""`sgpt train` behind the flags: find the data, build the config, run the trainer, draw progress.

The rich live display lives here and only here; the trainer reports plain events.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.live import Live
from rich.markup import escape as _markup_escape
from rich.text import Text

from sgpt_cli.train import checkpoint
from sgpt_cli.config import TrainConfig, build_train_config, idle_figures
from sgpt_cli.term.console import Console as _Console
from sgpt_cli.train.plot import can_draw
from sgpt_cli.train.precision import cache_path, cpu_name
from sgpt_cli.data import default_data, read_text
from sgpt_cli.infer.model_lookup import shipped_or_given
from sgpt_cli.errors import SgptError, visible
from sgpt_cli.settings import export_out_for
from sgpt_cli.files import check_writable_target, probe
from sgpt_cli.term.fetch import fetch_default_data
from sgpt_cli.train.stop import Stop


def escape(text) -> str:
    """A name or value inside rich markup: its control and format characters made visible
    (errors.visible), its brackets taken literally."""
    return _markup_escape(visible(text))


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


LOG_EVERY_S = 60.0  # without a terminal, a plain status line this often


class TrainDisplay:
    """Renders trainer events: a live status line on a terminal; evaluations, samples and the
    summary as plain lines everywhere (so logs and pipes get them too)."""

    def __init__(self, console: Console, errors: Console | None = None, data: Path | None = None,
                 out: Path | None = None):
        self.console = console
        self.errors = errors or console
        self.live = Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else None
        self.val = None
        self.last_line = 0.0
        self.data, self.out = data, out
        self.budget = 0.0
        self.device, self.world, self.precision = "cpu", 1, "float32"
        self.bars = ("█", "░") if can_draw(console, "█░") else ("#", "-")

    def __call__(self, e) -> None:
        if e.kind == "start":
            self._header(e)
            if self.live:
                self.live.start()
        elif e.kind == "warning":
            self.errors.print(visible(f"sgpt: warning: {e.info['message']}"), markup=False, highlight=False)
        elif e.kind == "final":
            self.console.print(
                f"[bold]val loss {e.val_loss:.4f}[/bold] on the whole validation split "
                f"({e.info['val_chars']:,} characters; checkpoint of iteration {e.info['best_iter']})")
        elif e.kind == "step":
            if self.live:
                self.live.update(self._table(e))
            elif e.elapsed - self.last_line >= LOG_EVERY_S:  # a log file (nohup) still shows progress
                self.last_line = e.elapsed
                self.console.print(self._table(e, width=200), markup=False)
        elif e.kind == "eval":
            self.val = e.val_loss
            mark = " [green]saved best[/green]" if e.saved else ""
            batches = e.info.get("batches")
            few = (f" ({batches} batch{'' if batches == 1 else 'es'})"  # fewer than --eval-iters: the budget's
                   if batches and batches < e.info["eval_iters"] else "")
            self.console.print(
                f"[bold cyan]iter {e.iter:>6}[/bold cyan]  estimates{few}: train {e.train_loss:.4f}  "
                f"val {e.val_loss:.4f}  best {e.best_val_loss:.4f}  {_fmt_time(e.elapsed)}{mark}"
            )
            if e.sample:
                self.console.print(Text(e.sample.strip("\n")[:400], style="italic dim"), soft_wrap=False)
        elif e.kind == "end" and self.live:
            self.live.stop()

    def _header(self, e) -> None:
        """What is happening, in two lines: the model and where it runs; the text and where it goes."""
        i = e.info
        self.budget = i.get("time_budget") or 0.0
        self.device, self.world, self.precision = i["device"], i["world"], i["precision"]
        what = f"resuming from iteration {e.iter}:" if i["resumed"] else "training"
        init = f", starting from {escape(i['init_from'])}" if i.get("init_from") else ""
        budget = ""
        if i.get("time_budget") and i["resumed"]:  # --time-budget on --resume means this much more
            budget = f", time budget {_fmt_time(i['budget_added'])} more, {_fmt_time(i['time_budget'])} in all"
        elif i.get("time_budget"):
            budget = f", time budget {_fmt_time(i['time_budget'])}"
        self.console.print(
            f"[bold]{what}[/bold] preset {escape(i['preset'])} ({i['optimizer']}, {i['precision']}{budget}{init}): "
            f"{i['params'] / 1e6:.2f}M parameters on {escape(i['hardware'])}"
            + (f" x{i['world']} processes" if i["world"] > 1 else "")
        )
        data = escape(str(self.data)) if self.data else "the text"
        if i.get("precision_why"):  # auto on a CPU: the probe's verdict, or the width rule
            self.console.print(f"  precision {escape(i['precision_why'])}")
        self.console.print(
            f"  data {data}: {i['train_chars']:,} train / {i['val_chars']:,} val characters, vocab "
            f"{i['vocab_size']} -> {escape(str(self.out))}"
        )

    def _table(self, e, width: int | None = None) -> Text:
        """One status line that fits the terminal: the essentials first, extras only where room is left."""
        width = width or self.console.width
        val = f"val est {self.val:.4f}" if self.val is not None else "val est -"  # an estimate, not the measure
        parts = [f"iter {e.iter}" if self.budget else f"iter {e.iter}/{e.max_iters}", f"loss {e.loss:.4f}", val, f"{e.tokens_per_s:,.0f} tok/s",
                 f"elapsed {_fmt_time(e.elapsed)}", f"eta {_fmt_time(e.eta)}"]
        fits = lambda ps: len("  ".join(ps)) <= width  # noqa: E731
        if e.best_val_loss is not None and fits(parts + ["(best 0.0000)"]):
            parts[2] = f"{val} (best {e.best_val_loss:.4f})"
        with_lr = parts[:4] + [f"lr {e.lr:.1e}"] + parts[4:]
        if fits(with_lr):
            parts = with_lr
        line = "  ".join(parts)
        room = width - len(line) - 2
        if room >= 12:  # a progress bar too, up to 30 cells
            cells = min(room, 30)
            pct = min(e.elapsed / self.budget if self.budget else e.iter / max(e.max_iters, 1), 1.0)
            filled = int(pct * cells)
            full, empty = self.bars
            line = f"{parts[0]}  {full * filled}{empty * (cells - filled)}  " + "  ".join(parts[1:])
        return Text(line, no_wrap=True, overflow="ellipsis")


def _check_out(out: Path) -> None:
    """Refuse an --out that can never be written, without creating anything yet."""
    probe(out, "--out")  # a name the OS refuses (too long, a NUL byte) is one line, not a traceback
    if out.is_dir():
        raise SgptError(f"--out {out} is a folder; give a file name such as {out / 'model.pt'}")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise SgptError(f"cannot write --out {out}: {ancestor} is a file, not a folder; choose another --out")
    if not os.access(ancestor if ancestor.exists() else Path("."), os.W_OK | os.X_OK):
        raise SgptError(f"cannot write --out {out}: folder {ancestor} is not writable; choose another --out")


class StopRequest(Stop):
    """Ctrl-C, SIGTERM (`timeout`, systemd, a scheduler's preemption) or SIGHUP (the terminal was
    closed) stops the run within
    seconds: an estimate in progress is abandoned, a step in progress too (the last whole step is
    kept), and the resumable checkpoint is saved. A checkpoint being written is always finished
    first (`Stop.critical`), however many signals come. Under torchrun (`escalate` False) a
    repeated signal is not a second request: the terminal and torchrun's agent both send one."""

    signalled = False  # any signal seen in this process (the DDP ranks' exit path reads it)

    def __init__(self, announce: bool, escalate: bool = True):
        super().__init__()
        self.announce = announce
        self.escalate = escalate

    def say(self, message: bytes) -> None:
        if self.announce:  # os.write: the only output that is safe inside a signal handler
            os.write(2, message)

    def handle(self, signum, frame) -> None:
        first = not self.requested
        self.requested = StopRequest.signalled = True
        if self.mode == "critical":
            self.say(b"\nsgpt: finishing the checkpoint being written, then stopping\n")
        elif self.mode == "abortable" or (not first and self.escalate):
            raise KeyboardInterrupt
        elif first:
            self.say(b"\nsgpt: stopping after this step to save a checkpoint\n")

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        from sgpt_cli.term.common import END_SIGNALS

        # Ctrl-C, SIGTERM and SIGHUP (the terminal closed): the same stop, the same saved checkpoint
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, *END_SIGNALS)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def idle_comparison(cfg: TrainConfig, result, device: str, world: int, default_data: bool,
                    precision: str, cpu: str | None = None) -> str | None:
    """How far this run is from what its preset does on an idle machine, and why: its iterations
    and characters per second against the idle figures (config.IDLE_FIGURES); the val loss too when
    the run was the one those figures measure (the preset's budget on tiny-shakespeare). On another
    CPU than the figures' (`cpu`: this one's, precision.cpu_name()) it names both instead of
    calling the run slow: another CPU is another pace, not a busy machine."""
    figures = idle_figures(cfg)
    if figures is None or device != "cpu" or world != 1 or result.elapsed <= 0 or result.iters == 0:
        return None
    cpu = cpu_name() if cpu is None else cpu
    chars = cfg.batch_size * cfg.block_size
    rate, idle = result.iters / result.elapsed, figures.iters_per_s
    line = f"this run: {result.iters:,} iterations at {rate:.2f}/s ({rate * chars:,.0f} tokens/s), "
    slower = idle / rate
    same_cpu = " ".join(cpu.split()).casefold() == " ".join(figures.cpu.split()).casefold()
    if not same_cpu:
        line += "against"
    else:
        line += f"{slower:.1f}x slower than" if slower >= 1.25 else "the pace of"
    line += f" the {cfg.preset} preset on {figures.machine}"
    expected = f", ~{idle * cfg.time_budget:,.0f} iterations in this budget" if cfg.time_budget else ""
    line += f" (~{idle:.2f}/s, {idle * chars:,.0f} tokens/s{expected})"
    if not same_cpu:
        line += f"; figures measured on {figures.cpu}; this is {cpu}"
        if precision != figures.precision:
            line += f", its matmuls {precision}"
    elif slower >= 1.25:
        why = "a busy machine or fewer cores gives fewer steps"
        if precision != figures.precision:
            why = (f"this run's matmuls were {precision}, the figures' {figures.precision} (--precision, or "
                   f"auto's probe, whose verdict {cache_path()} keeps: delete it to measure again), and {why}")
        line += f"; {why}"
    if default_data and cfg.time_budget == figures.budget:
        val, kind = (result.val_loss, "") if result.val_loss is not None else (result.best_val_loss, " estimate")
        if val is not None and math.isfinite(val):
            line += f"; val{kind} {val:.4f} vs {figures.val_loss:.4f} there ({val - figures.val_loss:+.4f})"
    return line


def _interrupted_line(result, cfg: TrainConfig, device: str, out: Path, data: Path | None) -> str:
    """What an interrupted run says: the iteration saved and how to resume, or why nothing was saved."""
    if result.saved_iter is not None:
        return (f"sgpt: interrupted; iteration {result.saved_iter} is saved in {result.last}. "
                f"Resume with: {_resume_hint(out, data)}")
    hint = "; --preset cpu is the one made for CPUs" if device == "cpu" and cfg.preset == "gpu" else ""
    if result.iters == 0:
        ran = (f" (it had run {result.unfinished_step:.0f} s; a step takes longer than that here{hint})"
               if result.unfinished_step is not None and result.unfinished_step >= 0.5 else "")
        return f"sgpt: interrupted before the first step finished{ran}, so there was nothing to save"
    step = f" (a step takes {result.step_seconds:.1f} s here)" if result.step_seconds else ""
    return f"sgpt: interrupted at iteration {result.iters}, before anything was saved{step}"


def _resume_hint(out: Path, data: Path | None) -> str:
    launcher = "torchrun ... -m sgpt_cli train" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "sgpt train"
    data_flag = f" --data {shlex.quote(str(data))}" if data is not None else ""
    return f"{launcher} --resume --out {shlex.quote(str(out))}{data_flag}"


def run_train(*, data: Path | None, preset: str, out: Path, resume: bool, force: bool, device: str,
              overrides: dict, init_from: Path | None = None) -> int:
    """Check every input before any work or any file is written, then train and draw progress.

    Returns the exit status: 0 when the run ended by --max-iters or --time-budget, 130 when
    interrupted (after saving). User errors raise SgptError.
    """
    from sgpt_cli.train import trainer  # torch: only now
    from sgpt_cli.train.resume import config_for_init, load_resume_state

    master = int(os.environ.get("RANK", "0")) == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    console = _Console(soft_wrap=True, highlight=False) if master else Console(file=io.StringIO())
    errors = _Console(stderr=True, soft_wrap=True, highlight=False) if master else console
    cfg = build_train_config(preset, overrides)  # validates flags before any work
    trainer.resolve_device(device)
    out = Path(out)
    if resume and force:
        raise SgptError("--resume and --force contradict each other; pick one")
    if resume and init_from is not None:
        raise SgptError("--resume continues a run, --init-from starts a new one from other weights; pick one")
    _check_out(out)
    if master:
        checkpoint.check_unlocked(out)  # a run in progress is the likelier story than a finished one
    if not resume and not force and checkpoint.last_path(out).exists():
        raise SgptError(f"{out} already holds a checkpoint; pass --resume to continue it or --force to start over")
    if not resume and not force and out.exists():  # weights only: --resume has nothing to continue
        raise SgptError(f"{out} already holds a model's weights (no resumable {checkpoint.last_path(out).name}); "
                        f"pass --force to start over, or fine-tune it with --init-from {out} --out ANOTHER.pt")

    data_path = Path(data) if data is not None else default_data()
    if data is None and not data_path.exists():
        if not master:
            raise SgptError(f"{data_path} is missing; run `sgpt eval` (or one `sgpt train`) once to write it "
                            "before launching torchrun")
        fetch_default_data(data_path, console)
    text, sha = read_text(data_path)

    resume_ckpt = init = None
    if resume:
        resume_ckpt, cfg = load_resume_state(out, sha, None, overrides, text=text)
    if init_from is not None:
        init_from = shipped_or_given(init_from)  # models/shakespeare.pt from any folder: the shipped weights
        init = {**checkpoint.load(init_from), "source": str(init_from)}
        cfg = config_for_init(cfg, init, overrides)
    trainer.check_text_length(cfg, text)
    check_writable_target(out)  # creates the folder: only now that every input is known to be good

    display = TrainDisplay(console, errors, data_path, out)
    lock = checkpoint.training_lock(out) if master else contextlib.nullcontext()
    try:
        with lock, StopRequest(announce=master, escalate=world == 1).installed() as stop:
            result = trainer.train(cfg, text, sha, out, device=device, resume=resume_ckpt, init=init,
                                   data_path=str(data_path.resolve()), callback=display, should_stop=stop)
    finally:
        if display.live and display.live.is_started:
            display.live.stop()
    if not master:
        return 130 if result.status == "interrupted" else 0
    metrics = checkpoint.metrics_path(out)
    if metrics.exists():
        from sgpt_cli.train.plot import render_curves

        try:
            console.print(render_curves(metrics, checkpoint.curve_path(out), ascii_only=not display.bars[0] == "█",
                                        val_loss=result.val_loss))  # the picture's title: the run's one val loss
        except OSError as exc:
            errors.print(f"sgpt: warning: could not write the loss curve: {exc.strerror or exc}", markup=False)
    if result.status == "interrupted":
        errors.print(visible(_interrupted_line(result, cfg, display.device, out, data)), markup=False)
        return 130
    why = "time budget spent" if result.status == "time" else "done"
    if result.val_loss is not None:
        val = f"val loss {result.val_loss:.4f} (whole validation split)"
    else:
        val = f"val loss not measured ({escape(result.val_note)}; `sgpt export` measures it)"
    console.print(
        f"[bold green]{why}[/bold green]: {result.iters} iterations in {_fmt_time(result.elapsed)}, "
        f"{val} -> {escape(str(out))}"
    )
    comparison = idle_comparison(cfg, result, display.device, display.world,
                                 default_data=data is None and init is None, precision=display.precision)
    if comparison:
        console.print(visible(f"  {comparison}"), markup=False)  # it names this CPU, as the OS reports it
    console.print(visible(f"next: sgpt export {shlex.quote(str(out))}   (writes {export_out_for(out)})"), markup=False)
    return 0
