"""`sgpt chat`: the flags, and a call into sgpt_cli.repl inside the command.

The sampling flags share their names and help with `sgpt complete` (sgpt_cli.complete.OPTIONS); the
defaults are chat's own (`ChatSettings`), and every help text states its default. rich,
prompt_toolkit and ONNX Runtime load only when the command runs.
"""

from __future__ import annotations

from typing import Optional

import typer

from sgpt_cli.chat_session import ChatSettings
from sgpt_cli.complete import OPTIONS

_SHARED = {opt.name: opt for opt in OPTIONS}
_DEFAULTS = ChatSettings()


def _opt(name: str, help_text: str | None = None, shown: str | None = None, default=...):
    """A flag of `sgpt complete` with chat's default, its help ending in [default: ...]."""
    opt = _SHARED[name]
    if default is ...:
        default = getattr(_DEFAULTS, name) if hasattr(_DEFAULTS, name) else opt.default
    if shown is None:
        shown = opt.shown_default if default is None and opt.shown_default else str(default)
    text = f"{help_text or opt.help} \\[default: {shown}]"  # rich would read [default: ...] as markup
    return typer.Option(default, *opt.flags, help=text, show_default=False, metavar=opt.metavar)


def chat(
    model: Optional[str] = _opt("model"),
    device: str = _opt("device"),
    no_history: bool = typer.Option(
        False, "--no-history", show_default=False,
        help="Neither read nor write the input history ($SGPT_HOME/chat_history; $SGPT_HOME is "
             "$XDG_DATA_HOME/sgpt or ~/.local/share/sgpt unless set). \\[default: off]"),
    temperature: float = _opt("temperature"),
    top_k: Optional[int] = _opt("top_k"),
    top_p: Optional[float] = _opt("top_p"),
    repetition_penalty: float = _opt("repetition_penalty"),
    max_tokens: int = _opt("max_tokens", "Characters per reply, at most."),
    seed: Optional[int] = _opt("seed", "Random seed: the same seed and inputs give the same session.",
                               shown="random"),
    one_speech: bool = typer.Option(
        _DEFAULTS.one_speech, "--one-speech/--no-one-speech", show_default=False,
        help="End each reply at the end of a speech (a blank line), or let it run to --max-tokens. "
             f"\\[default: {'on' if _DEFAULTS.one_speech else 'off'}]"),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", show_default=False,
        help="After each reply, a line with its length, time to first character and speed. \\[default: off]"),
) -> None:
    """Talk to the model: a REPL in which you and the model write one play script together.

    Type a speaker's name (ROMEO:) and the model speaks as them; /help inside lists the commands.
    With stdin from a pipe it reads one input per line and writes the transcript to stdout.

    \b
    sgpt chat
    sgpt chat --seed 7 --temperature 0.6
    printf 'ROMEO:\\n/save scene.txt\\n' | sgpt chat
    """
    from sgpt_cli.cli_common import user_errors

    settings = ChatSettings(temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed,
                            one_speech=one_speech, verbose=verbose)
    with user_errors():
        from sgpt_cli.repl import run_chat

        code = run_chat(settings, model=model, device=device, history=not no_history)
    raise typer.Exit(code)
