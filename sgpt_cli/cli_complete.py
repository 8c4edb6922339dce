"""`sgpt complete`: the Typer face of sgpt_cli.complete, for --help and usage errors.

The flags, defaults and help texts come from `sgpt_cli.complete.OPTIONS`, the table the fast
(Typer-free) path parses too; only the parameter names and types are written out below, and a test
checks they match the table. The worker is imported when the command runs.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from sgpt_cli.complete import OPTIONS, PROMPT_HELP

_BY_NAME = {opt.name: opt for opt in OPTIONS}


def _opt(name: str):
    opt = _BY_NAME[name]
    default = None if opt.repeat else opt.default
    help_text = opt.help_with_default.replace("[", "\\[")  # rich would read [default: ...] as markup
    return typer.Option(default, *opt.flags, help=help_text, show_default=False, metavar=opt.metavar)


def complete(
    prompt: Optional[str] = typer.Argument(None, help=PROMPT_HELP.replace("[", "\\["), show_default=False),
    max_tokens: int = _opt("max_tokens"),
    temperature: float = _opt("temperature"),
    top_k: Optional[int] = _opt("top_k"),
    top_p: Optional[float] = _opt("top_p"),
    repetition_penalty: float = _opt("repetition_penalty"),
    seed: Optional[int] = _opt("seed"),
    stop: Optional[List[str]] = _opt("stop"),
    model: Optional[str] = _opt("model"),
    device: str = _opt("device"),
    echo: bool = _opt("echo"),
    as_json: bool = _opt("as_json"),
    verbose: bool = _opt("verbose"),
) -> None:
    """Continue a text: the prompt is stdin, then PROMPT; the continuation streams to stdout.

    \b
    printf 'ROMEO:' | sgpt complete -n 200
    sgpt complete --seed 7 --stop '\\n\\n' 'JULIET:'
    cat scene.txt | sgpt complete --json -n 100 'HAMLET:' | jq -r .text
    """
    values = dict(locals())  # exactly the parameters: the keywords sgpt_cli.complete.run takes
    from sgpt_cli.complete import run

    raise typer.Exit(run(values))
