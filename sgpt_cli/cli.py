"""The `sgpt` command line: a thin Typer layer over the library.

Each command's worker is imported inside the command, so `sgpt complete` never pays for torch.
"""

from __future__ import annotations

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


def main() -> None:
    app(prog_name="sgpt")
