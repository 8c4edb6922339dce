"""What every command shares: its flags built from declarations (`typer_command`), and user errors,
Ctrl-C and closed pipes turned into one line and an exit status. Light imports only: this runs at
start-up of every command (Typer is imported inside the functions that need it).

Exit statuses, the same for every command:
    0    done (also when the reader of our output went away: `| head`)
    1    a failure: a missing or damaged file, a model that cannot run, a chat input refused in a pipe
    2    a usage error: an unknown flag, a value out of range, a bad combination
    130  interrupted (Ctrl-C, or SIGTERM/SIGHUP during training/export)
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

from sgpt_cli.errors import SgptError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def err(message: str) -> None:
    """One line on stderr, prefixed so it is clearly sgpt's; nothing when stderr cannot take it."""
    from sgpt_cli.errors import visible

    try:  # every one-line error, whatever name or library text it quotes, shown safely
        sys.stderr.write(f"sgpt: error: {visible(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # 2>/dev/full, 2>&-: nowhere to say it
        silence(2)


# --- unusable standard streams ----------------------------------------------------------------------

# commands whose result is what they write on stdout: with stdout closed they have nothing to do
STDOUT_COMMANDS = ("complete", "eval", "chat", "explain")
# commands whose result is files: a failing stdout (their progress and report) must not stop them
FILE_COMMANDS = ("train", "export")
LOST_STDOUT: list[OutputFailed] = []  # the failure a FILE_COMMAND went on after, said at exit


def silence(fd: int) -> None:
    """Point descriptor `fd` at /dev/null: what is still buffered for it goes nowhere, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def reopen_closed_streams() -> set[str]:
    """Descriptors 0-2 closed at start (`<&-`, `>&-`, `2>&-`) are opened on /dev/null and named in the
    result: our reads see an empty input and our writes vanish instead of failing, and no file sgpt
    opens later can take descriptor 1 or 2 (a checkpoint must never become stdout)."""
    closed = set()
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        except OSError:
            continue
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", encoding="utf-8", errors="replace", closefd=False))
        closed.add(name)
    return closed


class OutputFailed(SgptError):
    """stdout or stderr refused a write that was not a closed pipe: a full disk, /dev/full, EIO."""

    def __init__(self, name: str, exc: OSError):
        super().__init__(f"cannot write to {name}: {exc.strerror or exc}")
        self.fd = 1 if name == "stdout" else 2


class _GuardedStream(io.TextIOWrapper):
    """A standard stream whose write failures (other than a closed pipe) are handled: on stdout they
    become OutputFailed, an SgptError, so every command says it in one line instead of a traceback;
    on stderr (warnings, progress) they are dropped and the command goes on, its output intact."""

    stream_name = "stdout"
    lenient = False  # stdout of a FILE_COMMAND: note the failure, keep working
    past_closed_pipe = False  # export goes on when its reader leaves (training ends: its design)

    def _failed(self, exc: OSError, result):
        if self.stream_name == "stderr":
            silence(2)  # diagnostics with nowhere to go are not worth the command's output
            return result
        if self.lenient:
            if not LOST_STDOUT:
                LOST_STDOUT.append(OutputFailed(self.stream_name, exc))
            silence(1)
            return result
        raise OutputFailed(self.stream_name, exc) from None

    def _gone(self, result):
        if not self.past_closed_pipe:
            raise BrokenPipeError  # the reader went away (`| head`): the command ends quietly
        silence(1)  # export: the reader of its progress left; the file it writes still matters
        return result

    def write(self, text):
        try:
            return super().write(text)
        except BrokenPipeError:
            return self._gone(len(text))
        except OSError as exc:
            return self._failed(exc, len(text))

    def flush(self):
        try:
            return super().flush()
        except BrokenPipeError:
            return self._gone(None)
        except OSError as exc:
            return self._failed(exc, None)


def guard_streams(lenient_stdout: bool = False, past_closed_pipe: bool = False) -> set[str]:
    """At start of every command: reopen closed descriptors on /dev/null (`reopen_closed_streams`)
    and make stdout's and stderr's write failures one-line errors (`lenient_stdout`: noted in
    LOST_STDOUT while the command goes on). Returns the closed streams."""
    closed = reopen_closed_streams()
    for name in ("stdout", "stderr"):
        old = getattr(sys, name)
        if isinstance(old, _GuardedStream) or not isinstance(old, io.TextIOWrapper):
            continue
        old.flush()
        new = _GuardedStream(old.buffer, encoding=old.encoding, errors=old.errors,
                             line_buffering=old.line_buffering, write_through=old.write_through)
        new.stream_name = name
        new.lenient = lenient_stdout and name == "stdout"
        new.past_closed_pipe = past_closed_pipe and name == "stdout"
        _REPLACED.append(old)  # the old wrapper must stay alive: collecting it would close the buffer
        setattr(sys, name, new)
    return closed


_REPLACED: list = []


def use_color(stream=sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Map SgptError to its message and exit status, Ctrl-C to 130, a closed stdout to a quiet exit."""
    import typer  # here, not at the top: `sgpt complete`'s fast path uses this module without Typer

    try:
        yield
    except (SgptError, KeyboardInterrupt, BrokenPipeError) as exc:
        raise typer.Exit(report(exc)) from None


def report(exc: BaseException) -> int:
    """Say what went wrong in one line (nothing for a closed pipe) and return the exit status."""
    if isinstance(exc, SgptError):
        if isinstance(exc, OutputFailed):
            silence(exc.fd)  # what is still buffered for it must not fail again at exit
        err(str(exc))
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("\nsgpt: interrupted\n")
        return EXIT_INTERRUPTED
    quiet_broken_pipe()
    return EXIT_OK


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`): silence the flush Python attempts at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# the signals that end a command as Ctrl-C does, so that it unwinds (temporaries removed, what is
# finished kept): SIGTERM (`kill`, `timeout`, a scheduler) and SIGHUP (the terminal was closed)
END_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


# the commands that, once running, end on SIGTERM and SIGHUP as on Ctrl-C (train's stop request,
# export's and serve's terminate_as_interrupt); the others keep the signals' default action
END_AS_INTERRUPT = ("train", "export", "serve")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def start_signals(command: str) -> None:
    """At `main`'s first line, before any heavy import (Typer, rich, onnxruntime, torch: up to 1.5 s):
    SIGTERM and SIGHUP unwind as Ctrl-C for the commands that treat them so once running, so a signal
    during their imports ends them as one later would (exit 130, "interrupted", no traceback) instead of
    by the default action (143, 129). Ctrl-C itself is Python's KeyboardInterrupt from the start, which
    `main` turns into that line."""
    if command not in END_AS_INTERRUPT or threading.current_thread() is not threading.main_thread():
        return
    for sig in END_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup: the user asked for it to be ignored
                signal.signal(sig, _raise_interrupt)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (END_SIGNALS) unwind like Ctrl-C, so temporary files are removed on the way
    out instead of being left behind by the default handler's instant exit (exit status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in END_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the optional extras -------------------------------------------------------------------------

TRAIN_EXTRA = {"train": ("torch", "matplotlib"), "export": ("torch", "onnx")}
SERVE_EXTRA = {"serve": ("uvicorn", "starlette", "sse_starlette")}
EXTRA_OF = {"train": ("train", "training extra"), "export": ("train", "training extra"),
            "serve": ("serve", "serve extra")}


def install_line(extra: str) -> str:
    return f"pip install 'sgpt[{extra}]' (from a source checkout: pip install -e '.[{extra}]')"


def require_extra(command: str) -> None:
    """`sgpt train` and `sgpt export` need the `train` extra (torch, onnx, matplotlib), `sgpt serve`
    the `serve` extra (uvicorn, starlette, sse-starlette), which the runtime install leaves out: say
    in one line how to install it, before any work."""
    import importlib.util

    extra, called = EXTRA_OF[command]
    for module in {**TRAIN_EXTRA, **SERVE_EXTRA}[command]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as none
            found = False
        if not found:
            raise SgptError(f"sgpt {command} needs {module}, which is not installed: it comes with the "
                            f"{called}; install it with {install_line(extra)}")



# --- flags: a command's Typer options and its argparse parser, both from its declarations -----------

def typer_option(setting):
    """The Typer option (or, for a setting without flags, argument) of a declared setting."""
    import typer

    if not setting.flags:
        return typer.Argument(setting.default, help=setting.help, show_default=False, metavar=setting.metavar)
    default = None if setting.repeat else setting.default
    return typer.Option(default, *setting.flags, help=setting.help_text(), show_default=False,
                        metavar=None if setting.kind is bool else setting.metavar)


def typer_command(name: str, doc: str, settings: Sequence, worker: Callable[..., int | None], *,
                  check: bool = True, errors: Callable = None) -> Callable:
    """A function Typer turns into the command `name`: its parameters are `settings` (sgpt_cli.settings
    declarations; those without flags are positional arguments, in order), its help is `doc`.
    The command checks the values against the declarations (check=False: the worker does) and calls
    `worker(**values)` inside `errors` (a context manager; `user_errors` unless given); the worker
    returns the exit status."""
    import inspect

    import typer

    from sgpt_cli.settings import FLAG, check_values

    def command(**values) -> None:
        with (errors or user_errors)():
            if check:
                values = check_values(settings, values, FLAG, from_command_line=True)
            code = worker(**values)
        raise typer.Exit(code or 0)

    params = [inspect.Parameter(s.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=typer_option(s),
                                annotation=s.annotation(command_line=True)) for s in settings]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    command.__doc__ = doc
    return command


def argparse_parser(settings: Sequence, prog: str, positional: Sequence[str] = (),
                    parser_class=None):
    """An argparse parser for `settings` (plus optional positionals): the Typer-free fast path.
    Values come out raw; `check_values(..., from_command_line=True)` checks them."""
    import argparse

    parser_class = parser_class or argparse.ArgumentParser
    parser = parser_class(prog=prog, add_help=False, allow_abbrev=False)
    for name in positional:
        parser.add_argument(name, nargs="?", default=None)
    for s in settings:
        if s.kind is bool:
            on, _, off = s.flags[0].partition("/")
            parser.add_argument(on, *s.flags[1:], dest=s.name, action="store_true", default=s.default)
            if off:
                parser.add_argument(off, dest=s.name, action="store_false")
        elif s.repeat:
            parser.add_argument(*s.flags, dest=s.name, type=s.kind, action="append", default=None)
        else:
            parser.add_argument(*s.flags, dest=s.name, type=str if s.worded else s.kind, default=s.default)
    return parser
