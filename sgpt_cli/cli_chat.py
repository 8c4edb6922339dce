"""`sgpt chat`: the flags, and a call into sgpt_cli.repl inside the command.

The flags are chat's settings (sgpt_cli.settings.CHAT_SETTINGS: the sampling settings with chat's
defaults, one_speech and verbose; /set changes the same ones) and the shared --model and --device.
rich, prompt_toolkit and ONNX Runtime load only when the command runs.
"""

from __future__ import annotations

from sgpt_cli.cli_common import typer_command
from sgpt_cli.settings import CHAT_SETTINGS, DEVICE, MODEL, Setting

NO_HISTORY = Setting("no_history", ("--no-history",), bool, False,
                     "Neither read nor write the input history ($SGPT_HOME/chat_history; $SGPT_HOME is "
                     "$XDG_DATA_HOME/sgpt or ~/.local/share/sgpt unless set).")
OPTIONS = (MODEL, DEVICE, NO_HISTORY) + CHAT_SETTINGS

DOC = """Talk to the model: a REPL in which you and the model write one play script together.

Type a speaker's name (ROMEO:) and the model speaks as them; /help inside lists the commands.
With stdin from a pipe it reads one input per line and writes the transcript to stdout.

\b
sgpt chat
sgpt chat --seed 7 --temperature 0.6
printf 'ROMEO:\\n/save scene.txt\\n' | sgpt chat
"""


def _run(model, device, no_history, **values) -> int:
    from sgpt_cli.chat_session import ChatSettings
    from sgpt_cli.repl import run_chat

    return run_chat(ChatSettings(**values), model=model, device=device, history=not no_history)


chat = typer_command("chat", DOC, OPTIONS, _run)
