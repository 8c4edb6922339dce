"""`sgpt chat`: the flags, and a call into sgpt_cli.term.repl inside the command.

An optional SCENE file starts the session from a saved script. The flags are chat's settings (sgpt_cli.settings.CHAT_SETTINGS: the sampling settings with chat's
defaults, one_speech, verbose and heat; /set changes the same ones) and the shared --model and --device.
rich, prompt_toolkit and ONNX Runtime load only when the command runs.
"""

from __future__ import annotations

from sgpt_cli.term.common import typer_command
from sgpt_cli.settings import CHAT_SETTINGS, DEVICE, MODEL, Setting

NO_HISTORY = Setting("no_history", ("--no-history",), bool, False,
                     "Neither read nor write the input history ($SGPT_HOME/chat_history; $SGPT_HOME is "
                     "$XDG_DATA_HOME/sgpt or ~/.local/share/sgpt unless set).")
SCRIPT = Setting("script", (), str, None,  # none: a new, empty script
                 "A play script to continue (a scene written by /save, or any text): the session starts "
                 "from it, as /load FILE does. [default: none, a new script]", metavar="SCENE")
OPTIONS = (SCRIPT, MODEL, DEVICE, NO_HISTORY) + CHAT_SETTINGS

DOC = """Talk to the model: a REPL in which you and the model write one play script together.

Type a speaker's name (ROMEO:) and the model speaks as them; /help inside lists the commands.
With stdin from a pipe it reads one input per line and writes the transcript to stdout.

\b
sgpt chat
sgpt chat --seed 7 --temperature 0.6
sgpt chat scene.txt              (go on with a scene saved by /save)
printf 'ROMEO:\\n/save scene.txt\\n' | sgpt chat
"""


def _run(script, model, device, no_history, **values) -> int:
    from sgpt_cli.infer.chat_session import ChatSettings
    from sgpt_cli.term.repl import run_chat

    return run_chat(ChatSettings(**values), model=model, device=device, history=not no_history, script=script)


chat = typer_command("chat", DOC, OPTIONS, _run)
