"""What every command shares: turning user errors, Ctrl-C and closed pipes into one line and an exit
status. Light imports only: this runs at start-up of every command."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from sgpt_cli.errors import SgptError


def err(message: str) -> None:
    """One line on stderr, prefixed so it is clearly sgpt's."""
    sys.stderr.write(f"sgpt: error: {message}\n")
    sys.stderr.flush()


def use_color(stream=sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def user_errors(error_code: int | None = None) -> Iterator[None]:
    """Map SgptError to its message and exit status, Ctrl-C to 130, a closed stdout to a quiet exit."""
    import typer  # here, not at the top: `sgpt complete`'s fast path uses this module without Typer

    try:
        yield
    except (SgptError, KeyboardInterrupt, BrokenPipeError) as exc:
        raise typer.Exit(report(exc, error_code)) from None


def report(exc: BaseException, error_code: int | None = None) -> int:
    """Say what went wrong in one line (nothing for a closed pipe) and return the exit status."""
    if isinstance(exc, SgptError):
        err(str(exc))
        return error_code or exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("\nsgpt: interrupted\n")
        return 130
    quiet_broken_pipe()
    return 0


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`): silence the flush Python attempts at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler) unwinds like Ctrl-C, so temporary files are removed on the way
    out instead of being left behind by the default handler's instant exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
