"""The `sgpt` command line: a thin Typer layer over the library.

Each command's worker is imported inside the command, so `sgpt complete` never pays for torch.
`main` also sends `sgpt complete ...` straight to sgpt_cli.term.complete, which parses the same options
(one table) with argparse, so a shell pipeline starts without loading Typer; help and usage errors
still come from Typer, each usage error as one line. The Typer app is built on first use (`build_app()`, or `app` as an attribute).
"""

from __future__ import annotations

import functools
import sys


@functools.lru_cache(maxsize=None)
def build_app():
    import typer

    from sgpt_cli import __version__
    from sgpt_cli.term.chat import chat
    from sgpt_cli.term.complete import complete_cmd
    from sgpt_cli.term.eval import eval_cmd
    from sgpt_cli.term.explain import explain_cmd
    from sgpt_cli.term.export import export_cmd
    from sgpt_cli.term.serve import serve_cmd
    from sgpt_cli.term.train import train

    app = typer.Typer(
        name="sgpt",
        help="shakespeareGPT: train a character-level GPT, export it to ONNX, and talk to it.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
        rich_markup_mode=None,  # plain click help: no `<bool>` after on/off flags, rich not loaded for --help
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    def _version(value: bool) -> None:
        if value:
            typer.echo(f"sgpt {__version__}")
            raise typer.Exit()

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ) -> None:
        """shakespeareGPT: train a character-level GPT, export it to ONNX, and talk to it."""

    for name, command in (("train", train), ("export", export_cmd), ("chat", chat), ("complete", complete_cmd),
                          ("eval", eval_cmd), ("explain", explain_cmd), ("serve", serve_cmd)):
        app.command(name, short_help=SUMMARIES[name])(command)
    return app


# `sgpt --help`'s one line per command, whole: click cuts a docstring's first sentence to fit an
# 80-column help (80 - 6 - the longest name leaves 66 characters), mid-word with "..."
SUMMARIES = {
    "train": "Train the GPT on a text (tiny-shakespeare by default).",
    "export": "Export a checkpoint to one ONNX file, verified against PyTorch.",
    "chat": "Talk to the model: a REPL where you write a play together.",
    "complete": "Continue stdin and/or PROMPT; the text streams to stdout.",
    "eval": "Score a text: loss in nats per character, and perplexity.",
    "explain": "Show what the model attends to and how its guess forms.",
    "serve": "Serve the model over HTTP with OpenAI's API (streaming, batching).",
}


def __getattr__(name: str):
    """`from sgpt_cli.term.app import app` keeps working; the app is built only when asked for."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    try:
        try:
            _main()
        except KeyboardInterrupt as exc:  # Ctrl-C (or an ending signal) before a command's own handler: its imports
            from sgpt_cli.term.common import report

            _leave(report(exc))
    except KeyboardInterrupt:  # another one while the first was being said: the same ending
        from sgpt_cli.term.common import EXIT_INTERRUPTED

        _leave(EXIT_INTERRUPTED)


def _leave(code: int) -> None:
    """Exit with `code`. Leaving as interrupted, a Ctrl-C still pending (or pressed again) is ignored:
    one escaping into the interpreter would end the process by SIGINT itself (-2, not 130)."""
    import contextlib
    import signal

    from sgpt_cli.term.common import EXIT_INTERRUPTED

    if code == EXIT_INTERRUPTED:
        with contextlib.suppress(ValueError):  # not the main thread (an embedding caller): nothing to do
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def _main() -> None:
    from sgpt_cli.term.common import (FILE_COMMANDS, LOST_STDOUT, STDOUT_COMMANDS, err, guard_streams, report,
                                      start_signals)
    from sgpt_cli.errors import SgptError

    start_signals(sys.argv[1] if len(sys.argv) > 1 else "")  # first: the imports below take up to 1.5 s
    if not sys.warnoptions:  # -W or PYTHONWARNINGS: someone asked to see them
        import warnings

        # a library's warning (torch on a hostile checkpoint, numpy on a NaN) is several raw lines a
        # user cannot act on; sgpt says what matters in its own one line (errors.library_warnings_silenced)
        warnings.simplefilter("ignore")
    argv = sys.argv[1:]
    command = argv[0] if argv else ""
    closed = guard_streams(lenient_stdout=command in FILE_COMMANDS, past_closed_pipe=command == "export")
    if "stdout" in closed and argv[:1] and argv[0] in STDOUT_COMMANDS and not {"-h", "--help"} & set(argv):
        err(f"stdout is closed (>&-): `sgpt {argv[0]}` writes its result there; give it a file or a pipe")
        sys.exit(1)
    try:
        code = dispatch(argv)
    except (SgptError, KeyboardInterrupt) as exc:  # raised outside a command's own handler: --help into a
        code = report(exc)  # full stdout, Ctrl-C while Typer and the command's modules are imported
    if LOST_STDOUT and code == 0:  # train/export went on and wrote their files; the report was lost
        code = report(LOST_STDOUT[0])
    _leave(code)


def dispatch(argv: list[str]) -> int:
    if argv[:1] == ["complete"]:
        from sgpt_cli.term.complete import fast_main

        code = fast_main(argv[1:])
        if code is not None:
            return code
    if argv[:1] == ["explain"]:  # Typer-free too: its whole run is meant to take half a second
        from sgpt_cli.term.explain import fast_main as explain_fast

        code = explain_fast(argv[1:])
        if code is not None:
            return code
    return run_app(argv)


def run_app(argv: list[str]) -> int:
    """Run the Typer app and return the exit status. Usage errors (a bad flag, a bad value, an unknown
    command) become one line on stderr with the --help to read, instead of Typer's framed box."""
    import typer

    try:
        from typer import TyperException as ClickException  # Typer >= 0.2x vendors click under this base
    except ImportError:  # older Typer releases depend on click itself
        from click import ClickException

    from sgpt_cli.term.common import err

    command = typer.main.get_command(build_app())
    try:
        status = command.main(args=argv, prog_name="sgpt", standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sgpt`: the overview is what was asked for
            sys.stdout.write(exc.format_message() + "\n")
            return 0
        message = " ".join(exc.format_message().split())
        ctx = getattr(exc, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err(message + where)
        return exc.exit_code
    except typer.Abort:  # click's word for a Ctrl-C in its own code: said as every other one
        from sgpt_cli.term.common import report

        return report(KeyboardInterrupt())
    return status if isinstance(status, int) else 0
