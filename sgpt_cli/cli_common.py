"""What every command shares: its flags built from declarations (`typer_command`), and user errors,
Ctrl-C and closed pipes turned into one line and an exit status. Light imports only: this runs at
start-up of every command (Typer is imported inside the functions that need it).

Exit statuses, the same for every command:
    0    done (also when the reader of our output went away: `| head`)
    1    a failure: a missing or damaged file, a model that cannot run, a chat input refused in a pipe
    2    a usage error: an unknown flag, a value out of range, a bad combination
    130  interrupted (Ctrl-C, or SIGTERM during training/export)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

from sgpt_cli.errors import SgptError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def err(message: str) -> None:
    """One line on stderr, prefixed so it is clearly sgpt's."""
    sys.stderr.write(f"sgpt: error: {message}\n")
    sys.stderr.flush()


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


# --- flags: one way to declare them for every command ----------------------------------------------

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
                                annotation=s.annotation()) for s in settings]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    command.__doc__ = doc
    return command
