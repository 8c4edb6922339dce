"""What every command shares: turning user errors, Ctrl-C and closed pipes into one line and an exit
status. Light imports only: this runs at start-up of every command."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import typer

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
    try:
        yield
    except SgptError as exc:
        err(str(exc))
        raise typer.Exit(error_code or exc.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("\nsgpt: interrupted\n")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        quiet_broken_pipe()
        raise typer.Exit(0) from None


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`): silence the flush Python attempts at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
