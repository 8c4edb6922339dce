"""Reading `sgpt chat`'s input, two ways: `PromptReader` (prompt-toolkit with history, auto-suggest,
multi-line editing and a lexer that colours speakers and commands) and `LineReader` (plain lines
from a pipe, for `printf ... | sgpt chat`); the history file with its in-memory fallback.

What it does not do: draw replies (sgpt_cli.term.chat_reply) or run the loop (sgpt_cli.term.repl).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from sgpt_cli.errors import shown
from sgpt_cli.infer.chat_session import (
    SETTING_NAMES, SPEAKER_AND_TEXT, block_is_open, history_path, is_speaker_line, set_completions,
)
from sgpt_cli.term.chat_commands import COMMANDS

PROMPT = ">>> "
CONTINUATION = "... "
PLACEHOLDER = "a speaker (ROMEO:), a line of verse, Enter to go on, or /help"
SHORT_PLACEHOLDER = "ROMEO:, a line, Enter, or /help"  # narrow terminals; none below that
CTRL_C_HINT = "(Ctrl-C clears the line; Ctrl-D or /quit leaves)"


# --- reading input ---------------------------------------------------------------------------------

class LineReader:
    """Input from a pipe or a file: one line per read, no editing, no history."""

    interactive = False

    def __init__(self, stream: TextIO):
        self.stream = stream

    def read(self, block_open: bool = False) -> str:
        line = self.stream.readline()
        if not line:
            raise EOFError
        return line[:-1] if line.endswith("\n") else line

    def take_notice(self) -> None:
        return None


def _history(enabled: bool):
    """(history, notice): the file under $SGPT_HOME when it can be written, else memory."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    if not enabled:
        return InMemoryHistory(), None

    class SafeFileHistory(FileHistory):
        """prompt-toolkit's file history, which falls back to memory if the file goes bad later."""

        failed: OSError | None = None

        def load_history_strings(self):
            try:
                return list(super().load_history_strings())
            except OSError as exc:
                self.failed = exc
                return []

        def store_string(self, string: str) -> None:
            if self.failed is None:
                try:
                    super().store_string(string)
                except OSError as exc:
                    self.failed = exc

    try:
        path = history_path()
    except RuntimeError as exc:  # no home folder to be found, and no $SGPT_HOME
        return InMemoryHistory(), f"history is kept for this session only: {exc}; set $SGPT_HOME"
    blocker = next((p for p in reversed([path.parent, *path.parent.parents]) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would only say "File exists"
        what = "$SGPT_HOME " if blocker == path.parent and os.environ.get("SGPT_HOME") else ""
        return InMemoryHistory(), (f"history is kept for this session only: {what}{blocker} is a file, not a "
                                   "folder; point $SGPT_HOME at a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except (OSError, ValueError) as exc:
        return InMemoryHistory(), history_notice(path, exc)
    return SafeFileHistory(str(path)), None


def history_notice(path: Path, exc: Exception) -> str:
    return f"history is kept for this session only: cannot write {shown(path)} ({getattr(exc, 'strerror', None) or exc})"


def _prompt_parts():
    """The lexer, completer, key bindings and style of the prompt (prompt-toolkit imported here)."""
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.lexers import Lexer
    from prompt_toolkit.application import get_app
    from prompt_toolkit.styles import Style

    class PlayLexer(Lexer):
        """Speakers' names and slash commands in their colours, the rest in the user's style."""

        def lex_document(self, document):
            lines = document.lines

            def line(i: int):
                text = lines[i]
                if i == 0 and text.startswith("/") and len(lines) == 1:
                    return [("class:command", text)]
                if text.strip() == '"""':
                    return [("class:fence", text)]
                if is_speaker_line(text):
                    return [("class:speaker", text)]
                named = SPEAKER_AND_TEXT.match(text)
                if named:  # 'ROMEO: But soft' -> the name as a speaker, the rest as text
                    cut = named.end(1) + 1
                    return [("class:speaker", text[:cut]), ("class:user", text[cut:])]
                return [("class:user", text)]

            return line

    class SlashCompleter(Completer):
        """Tab completes command names, then /set's setting names and their on/off values."""

        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            words = text.split(" ")
            if len(words) == 1:
                for name in list(COMMANDS) + ["/exit"]:
                    if name.startswith(words[0].lower()):
                        yield Completion(name, -len(words[0]), display_meta=COMMANDS.get(name, ("", "leave"))[1][:40])
            elif words[0].lower() == "/set" and len(words) == 2:
                for name in SETTING_NAMES:
                    if name.startswith(words[1].lower()):
                        yield Completion(name + " ", -len(words[1]), display=name)
            elif words[0].lower() == "/set" and len(words) == 3:
                for value in set_completions(words[1]):
                    if value.startswith(words[2].lower()):
                        yield Completion(value, -len(words[2]))

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event) -> None:
        """Esc-Enter (Alt-Enter) starts a new line instead of sending."""
        event.current_buffer.insert_text("\n")

    @bindings.add("enter", filter=Condition(lambda: block_is_open(get_app().current_buffer.text)))
    def _block_line(event) -> None:
        """Inside a \"\"\" block Enter starts a new line; the closing \"\"\" line sends the block."""
        buffer = event.current_buffer
        if buffer.document.current_line.strip() == '"""' and buffer.document.cursor_position_row > 0:
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    style = Style.from_dict({
        "prompt": "ansigreen bold",
        "continuation": "ansigreen",
        "user": "bold",
        "speaker": "ansiyellow bold",
        "command": "ansimagenta bold",
        "fence": "ansibrightblack",
        "placeholder": "ansibrightblack italic",
        "auto-suggestion": "ansibrightblack",
    })
    return PlayLexer(), SlashCompleter(), bindings, style


def placeholder_for(columns: int) -> str:
    """The grey hint on an empty prompt line that fits `columns` after the prompt ("" if none does)."""
    for text in (PLACEHOLDER, SHORT_PLACEHOLDER):
        if len(PROMPT) + len(text) < columns:
            return text
    return ""


class PromptReader:
    """Input from a person at a terminal, through prompt-toolkit."""

    interactive = True

    def __init__(self, history: bool = True):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.application import get_app
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.shortcuts import CompleteStyle

        self.history, self.notice = _history(history)
        self.failure_told = False
        lexer, completer, bindings, style = _prompt_parts()
        self.prompt_session = PromptSession(
            history=self.history, auto_suggest=AutoSuggestFromHistory(), lexer=lexer,
            # Tab completes as readline does: a unique match at once, else the matches listed below
            completer=completer, complete_while_typing=False, complete_style=CompleteStyle.READLINE_LIKE,
            key_bindings=bindings, style=style, multiline=False, enable_open_in_editor=False,
            # "... " starts a line of its own only; a row that a long line wraps onto gets nothing
            prompt_continuation=lambda width, line_number, wrap_count:
                [] if wrap_count else [("class:continuation", CONTINUATION)],
            # shown while the line is empty, and gone from the line once it is sent; never wider
            # than the terminal (a wrapped hint looked like a second input line)
            placeholder=lambda: [] if get_app().is_done else
                [("class:placeholder", placeholder_for(get_app().output.get_size().columns))],
        )

    def read(self, block_open: bool = False) -> str:
        message = CONTINUATION if block_open else PROMPT
        return self.prompt_session.prompt([("class:prompt", message)])

    def take_notice(self) -> str | None:
        """A notice to show once: the history file could not be written (at start, or later)."""
        notice, self.notice = self.notice, None
        failed = getattr(self.history, "failed", None)
        if notice is None and failed is not None and not self.failure_told:
            self.failure_told = True
            notice = history_notice(Path(self.history.filename), failed)
        return notice
