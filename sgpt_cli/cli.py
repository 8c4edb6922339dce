"""The `sgpt` command line: a thin Typer layer over the library.

Each command's worker is imported inside the command, so `sgpt complete` never pays for torch.
`main` also sends `sgpt complete ...` straight to sgpt_cli.complete, which parses the same options
(one table) with argparse, so a shell pipeline starts without loading Typer; help and usage errors
still come from Typer. The Typer app is built on first use (`build_app()`, or `app` as an attribute).
"""

from __future__ import annotations

import functools
import sys


@functools.lru_cache(maxsize=None)
def build_app():
    import typer

    from sgpt_cli import __version__
    from sgpt_cli.cli_chat import chat
    from sgpt_cli.cli_complete import complete
    from sgpt_cli.cli_eval import eval_cmd
    from sgpt_cli.cli_export import export_cmd
    from sgpt_cli.cli_train import train

    app = typer.Typer(
        name="sgpt",
        help="shakespeareGPT: train a character-level GPT, export it to ONNX, and talk to it.",
        no_args_is_help=True,
        add_completion=False,
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

    app.command("train")(train)
    app.command("export")(export_cmd)
    app.command("chat")(chat)
    app.command("complete")(complete)
    app.command("eval")(eval_cmd)
    return app


def __getattr__(name: str):
    """`from sgpt_cli.cli import app` keeps working; the app is built only when asked for."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["complete"]:
        from sgpt_cli.complete import fast_main

        code = fast_main(argv[1:])
        if code is not None:
            sys.exit(code)
    build_app()(prog_name="sgpt")
