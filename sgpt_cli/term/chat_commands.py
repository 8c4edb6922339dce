"""`sgpt chat`'s slash commands as typed: their names, arguments and help (/help's page), and a
typed line parsed into one (`parse_command`: a one-line UsageError with a hint for anything unknown).

What it does not do: run them (sgpt_cli.term.repl does, over sgpt_cli.infer.chat_session's
session) or draw anything.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from sgpt_cli.errors import UsageError, shown
from sgpt_cli.infer.chat_session import FENCE

# --- slash commands ------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (arguments, what it does)
    "/help": ("", "this help"),
    "/set": ("NAME VALUE", "change a setting (/set alone lists them)"),
    "/show": ("", "the settings, the model file and the script's length"),
    "/reset": ("", "start a new script (the model forgets everything)"),
    "/regen": ("[N]", "drop the last reply and generate it again; with N, N alternatives at once"),
    "/pick": ("K", "keep alternative K of the last /regen N in the script"),
    "/save": ("FILE", "write the script so far to FILE as plain text"),
    "/load": ("FILE", "replace the script by FILE's text (a scene saved with /save) and go on from it"),
    "/explain": ("[N]", "what the model attended to and how its guess formed, at the script's last character "
                        "(N: the N-th character of the last reply)"),
    "/next": ("", "the next character's distribution: type a character to pick it, Enter samples one, Esc leaves"),
    "/quit": ("", "leave (so do /exit and Ctrl-D)"),
}
ALIASES = {"/exit": "/quit", "/bye": "/quit", "/?": "/help", "/clear": "/reset"}
_NO_ARGS = {"/help", "/show", "/reset", "/quit", "/next"}
MAX_ALTERNATIVES = 16  # /regen N: a screenful to choose from


@dataclass(frozen=True)
class Command:
    name: str  # canonical: "/set", "/quit", ...
    arg: str  # the rest of the line, stripped


def is_command(text: str) -> bool:
    """Slash commands are single lines starting with '/'; the corpus has no '/' to be confused with."""
    return text.startswith("/") and "\n" not in text.strip()


def parse_command(text: str) -> Command:
    """The command on a line starting with '/'; UsageError with a hint for anything unknown."""
    word, _, arg = text.strip().partition(" ")
    word = word.lower()
    name = ALIASES.get(word, word)
    if name not in COMMANDS:
        near = difflib.get_close_matches(word, list(COMMANDS) + list(ALIASES), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise UsageError(f"unknown command {shown(word)}; {hint}/help lists the commands")
    arg = arg.strip()
    if name in _NO_ARGS and arg:
        raise UsageError(f"{name} takes no arguments (got {arg!r})")
    if name in ("/save", "/load") and not arg:
        raise UsageError(f"{name} needs a file name, e.g. {name} scene.txt")
    if name == "/pick" and not arg:
        raise UsageError("/pick needs the number of an alternative, e.g. /pick 2")
    return Command(name, arg)


HELP_CONVENTION = (
    "The session is one play script that grows: what you type is added to it and the model "
    "continues it.",
    "Type a speaker's name as the plays write it (ROMEO:, First Citizen:) and the model speaks as "
    "them; 'ROMEO: But soft' begins Romeo's line and the model finishes it.",
    "A line of verse joins the script as it is; the play goes on from it, most often with another "
    "speaker answering. Enter on an empty line lets the play go on.",
    "A reply is one speech (it ends at a blank line; /set one_speech off lets it run to max_tokens; "
    "/set stop TEXT ends it at TEXT too). A reply cut at max_tokens is marked …; Enter lets it go on.",
    "/save FILE and /load FILE (or `sgpt chat FILE`) keep a scene and continue it later, exactly.",
    f"Several lines: Esc-Enter starts a new line, or open a block with a line of {FENCE} and close "
    f"it with another.",
    "Ctrl-C stops a reply (the part written so far is kept) or clears the line; Ctrl-D or /quit "
    "leaves.",
)


def help_rows() -> list[tuple[str, str]]:
    rows = [((name + " " + args).strip(), what) for name, (args, what) in COMMANDS.items()]
    rows.insert(2, ("/set top_k none", "clear top_k, top_p or seed"))
    rows.insert(3, ("/set heat on", "colour each character of a reply by the probability the model gave it"))
    return rows
