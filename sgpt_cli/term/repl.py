"""The `sgpt chat` REPL: reads what the user types, runs slash commands, streams the model's replies.

What it holds: the loop (`Repl`), the two ways of reading input (`PromptReader`: prompt-toolkit
with history, auto-suggest, multi-line editing and a lexer that colours speakers and commands;
`LineReader`: plain lines from a pipe, for `printf ... | sgpt chat`), `ReplyPrinter` (streams a reply
with rich, a character at a time, colouring a speaker's name once its line is complete, or with
`/set heat on` each character by the probability the model gave it: `HEAT`, five bins), the
history file with its in-memory fallback, and Ctrl-C handling during a reply. `run_chat` is what
the command calls.

What it does not do: keep the script or parse commands (sgpt_cli.infer.chat_session), sample (engine).
rich and prompt_toolkit are imported here, and this module is imported only when `sgpt chat` runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from sgpt_cli.infer.chat_session import (
    COMMANDS, HELP_CONVENTION, MAX_ALTERNATIVES, SETTING_NAMES, ChatSession, ChatSettings, InputJoiner,
    block_is_open, count_argument, SPEAKER_AND_TEXT, help_rows, history_path, is_command, is_speaker_line, parse_command, set_completions,
)
from sgpt_cli.term.common import use_color
from sgpt_cli.term.console import Console as _Console
from sgpt_cli.errors import SgptError, shown, visible

# rich styles for what is printed; the prompt-toolkit styles below match them
REPLY = "cyan"
SPEAKER = "bold yellow"
DIM = "dim"
HINT = "yellow"
PROMPT = ">>> "
CONTINUATION = "... "
PLACEHOLDER = "a speaker (ROMEO:), a line of verse, Enter to go on, or /help"
SHORT_PLACEHOLDER = "ROMEO:, a line, Enter, or /help"  # narrow terminals; none below that
CUT = "…"  # drawn (not written into the script) where max_tokens cut a reply
CTRL_C_HINT = "(Ctrl-C clears the line; Ctrl-D or /quit leaves)"
# a reply is drawn in batches, every 20 ms (50 per second, smooth to the eye): rich costs about as
# much per call as the model per character, so drawing each character alone halved the chat's speed
FLUSH_S = 0.02
TAIL_SHOWN = 400  # characters of a loaded script shown: where it goes on
STOP_WORDS = {"stop": "end of speech", "max_tokens": "max_tokens reached", "interrupted": "stopped by Ctrl-C"}
# /set heat on: a character's colour is the probability the model gave it (its own softmax, before
# temperature and the other settings), in five bins: (lowest probability, style, legend)
HEAT = ((0.9, "bright_blue", "90% or more"), (0.6, "cyan", "60–90%"), (0.3, "green", "30–60%"),
        (0.1, "yellow", "10–30%"), (0.0, "red", "under 10%"))
NO_COLOR_HEAT = "this terminal shows no colour (NO_COLOR, or not a terminal), so replies stay plain text"


def heat_style(p: float | None) -> str:
    """The style of a character the model gave probability p (None: not known, the reply's own)."""
    if p is None:
        return REPLY
    for low, style, _ in HEAT:
        if p >= low:
            return style
    return HEAT[-1][1]


def heat_legend_parts() -> list[Text]:
    """/help's and `/set heat on`'s legend as the parts a row may break between: a swatch stays with its words."""
    return [Text("heat (/set heat on): each character's colour is the probability the model gave it:", style=DIM)] + \
        [Text("■ " + words, style=style) for _, style, words in HEAT]


def heat_legend() -> Text:
    """The legend as one line: what each colour means."""
    parts = heat_legend_parts()
    return Text.assemble(parts[0], " ", Text("  ").join(parts[1:]))


def print_parts(console: Console, parts: list[Text], sep: Text) -> None:
    """`parts` joined by `sep` in as few rows as a terminal's width allows, breaking only between parts,
    so no figure is cut from its label; one line elsewhere. A part wider than a row wraps at its words;
    one with a word wider than a row (a long path) is left to the terminal to wrap: no line break is
    put inside the word, so it copies whole."""
    if not on_a_terminal(console):
        console.print(sep.join(parts), soft_wrap=True)
        return
    rows: list[Text] = []
    for part in parts:
        if rows and rows[-1].cell_len + sep.cell_len + part.cell_len <= console.width:
            rows[-1] = Text.assemble(rows[-1], sep, part)
        else:
            rows.append(part.copy())
    for row in rows:
        console.print(row, soft_wrap=max(map(cell_len, row.plain.split(" "))) > console.width)


def styled(text: str, style) -> Text:
    """`text` in one style, or in one style per character (a list: runs of one style share a span)."""
    if not isinstance(style, str) and len(set(style)) < 2:
        style = style[0] if style else REPLY
    if isinstance(style, str):
        return Text(text, style=style)
    out, i = Text(), 0
    for one, run in itertools.groupby(style):
        n = sum(1 for _ in run)
        out.append(text[i:i + n], one)
        i += n
    if i < len(text):  # characters beyond the styles given: the reply's own
        out.append(text[i:], REPLY)
    return out


def make_console(stream: TextIO, color: bool | None = None) -> Console:
    """A console that writes no escape codes at all unless colour is wanted (a tty, no NO_COLOR)."""
    if color is None:
        color = use_color(stream)
    return _Console(file=stream, force_terminal=color, color_system="auto" if color else None,
                    highlight=False, markup=False, emoji=False)


# --- streaming a reply -----------------------------------------------------------------------------

def on_a_terminal(console: Console) -> bool:
    """The console writes to a terminal, in colour or not (NO_COLOR makes rich call it no terminal)."""
    try:
        return console.file.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class ReplyPrinter:
    """Prints a reply as it streams, each piece at once; a line that turns out to name a speaker is
    redrawn in the speaker's colour when its line break arrives (colour terminals only).

    On a terminal it wraps at word boundaries, as it streams: a word that would cross the right
    edge is taken back from the row (carriage return, cursor forward, erase to the end of the row)
    and written on the next one. The width is read at every write, so a resize mid-reply wraps at
    the new width from then on. Elsewhere (a pipe, a file) the text goes out exactly as made.

    With heat (and colour), each character written with its probability gets that probability's
    colour (HEAT), and speakers' names are not redrawn (every colour then means one thing)."""

    def __init__(self, console: Console, wrap: bool | None = None, heat: bool = False):
        self.console = console
        self.heat = heat and console.color_system is not None and not console.no_color  # else plain text
        self.restyle = console.is_terminal and console.color_system is not None and not self.heat
        self.wrap = on_a_terminal(console) if wrap is None else wrap
        self.line = ""  # the script's current line as plain text
        self.col = 0  # cells used on the screen's current row
        self.word = ""  # the characters since the row's last space (what a wrap moves down)
        self.word_styles: list[str] = []  # their styles
        self.breakable = False  # the row has a space before `word`

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.console.file.fileno()).columns or self.console.width
        except (AttributeError, OSError, ValueError):
            return self.console.width

    def begin(self, partial_line: str = "") -> None:
        """Start on a fresh line, showing (dim) the unfinished line the model is about to continue."""
        self.line = ""
        self.col, self.word, self.word_styles, self.breakable = 0, "", [], False
        self._text(partial_line, DIM)
        self.line = partial_line

    def write(self, piece: str, style: str = REPLY, probs=None) -> None:
        """`piece` in `style`; with heat, `probs` (one probability per character, None where not
        known) colours each character instead."""
        styles = [heat_style(p) for p in probs] if self.heat and probs is not None else None
        at = 0
        for i, part in enumerate(piece.split("\n")):
            if i:
                self.newline()
                at += 1
            if part:
                self._text(part, style if styles is None else styles[at:at + len(part)])
                self.line += part
            at += len(part)

    def _text(self, text: str, style) -> None:
        """Text without line breaks onto the screen, wrapped at word boundaries on a terminal.
        `style`: one rich style, or a list of one per character (heat)."""
        if not text:
            return
        each = None if isinstance(style, str) else style
        if not self.wrap:
            self.console.print(styled(text, style), end="", soft_wrap=True)
            return
        width = max(self.width(), 2)
        run: list[str] = []  # characters not drawn yet, all on the current row
        run_styles: list[str] = []

        def flush() -> None:
            if run:
                self.console.print(styled("".join(run), style if each is None else run_styles), end="",
                                   soft_wrap=True)
                run.clear()
                run_styles.clear()

        for i, c in enumerate(text):
            one = style if each is None else (each[i] if i < len(each) else REPLY)
            w = cell_len(c)
            if c == " ":
                if self.col + 1 > width:  # a space at the edge is the break itself
                    flush()
                    self._row_break()
                    continue
                run.append(c)
                run_styles.append(one)
                self.col += 1
                self.word, self.word_styles, self.breakable = "", [], True
                continue
            if self.col + w > width:
                flush()
                word = self.word
                if self.breakable and cell_len(word) + w <= width:
                    start = self.col - cell_len(word)  # >= 1: a space comes before the word
                    self.console.file.write(f"\r\x1b[{start}C\x1b[K")  # take the word back
                    styles = self.word_styles
                    self._row_break()
                    self.console.print(styled(word, styles), end="", soft_wrap=True)
                    self.col, self.word, self.word_styles = cell_len(word), word, styles
                else:  # a word longer than the row: break it where it reaches the edge
                    self._row_break()
            run.append(c)
            run_styles.append(one)
            self.col += w
            self.word += c
            self.word_styles.append(one)
        flush()

    def _row_break(self) -> None:
        self.console.print()
        self.col, self.word, self.word_styles, self.breakable = 0, "", [], False

    def newline(self) -> None:
        if (self.restyle and is_speaker_line(self.line) and cell_len(self.line) < self.width()
                and self.col == cell_len(self.line)):
            self.console.file.write("\r\x1b[2K")  # the name fits on this row: redraw it in place
            self.console.print(Text(self.line, style=SPEAKER), end="", soft_wrap=True)
        self.console.print()
        self.line = ""
        self.col, self.word, self.word_styles, self.breakable = 0, "", [], False

    def end(self) -> None:
        """Leave the cursor at the start of a line."""
        if self.line or self.col:
            self.newline()


class StopOnCtrlC:
    """During a reply, the first Ctrl-C asks the loop to stop after the current character (a flag,
    so it never lands in the middle of drawing); a second one interrupts at once."""

    def __init__(self) -> None:
        self.pressed = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self) -> "StopOnCtrlC":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Ctrl-C stays a KeyboardInterrupt
            self.previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


@contextlib.contextmanager
def keyboard_quiet(stream) -> Iterator[None]:
    """While the model writes, keys the user presses are not echoed into the reply (and Ctrl-C is
    not drawn as ^C); they still reach the next prompt. Does nothing when `stream` is no terminal."""
    try:
        import termios

        fd = stream.fileno()
        if not stream.isatty():
            raise OSError
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    # NOFLSH: Ctrl-C must not throw away what was typed meanwhile (a /show typed during a long
    # reply runs at the next prompt)
    quiet[3] |= getattr(termios, "NOFLSH", 0)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        yield
    finally:
        with contextlib.suppress(OSError):
            termios.tcsetattr(fd, termios.TCSANOW, saved)


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


# --- the loop --------------------------------------------------------------------------------------

class Repl:
    """Reads inputs, runs commands, streams replies. `out` gets the conversation; `err` gets
    notices and hints (the same console on a terminal; stderr when stdin is a pipe)."""

    def __init__(self, session: ChatSession, engine, reader, out: Console, err: Console | None = None,
                 summary: dict | None = None):
        self.session = session
        self.engine = engine
        self.reader = reader
        self.out = out
        self.err = err or out
        self.summary = summary or {}
        self.joiner = InputJoiner()
        self.failures = 0  # commands and inputs refused (piped input exits 1 if any)
        self.open_shown = False  # a pipe: the script's open last line ends the transcript (from /load)

    # output helpers ----------------------------------------------------------------------------

    def notice(self, message: str) -> None:
        # a terminal: wrapped at words; a pipe or a log: one line, whatever the width
        self.err.print(Text(visible(message), style=DIM), soft_wrap=not on_a_terminal(self.err))

    def hint(self, message: str) -> None:
        self.failures += 1
        self.err.print(Text(visible(message), style=HINT), soft_wrap=not on_a_terminal(self.err))

    def rows(self, rows: list[tuple[str, str]]) -> None:
        """Two aligned columns; a long value wraps under its own column."""
        from rich.table import Table

        if not on_a_terminal(self.out):  # a pipe or a file: a row a line, nothing padded to a width
            wide = max((cell_len(visible(label)) for label, _ in rows), default=0)
            for label, value in rows:
                line = Text.assemble((visible(label), "bold"), " " * (wide - cell_len(visible(label)) + 2), visible(value))
                line.rstrip()
                self.out.print(line, soft_wrap=True)
            return
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for label, value in rows:
            table.add_row(Text(visible(label)), Text(visible(value)))  # no markup, no raw controls
        self.out.print(table)

    # the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Until /quit or end of input: 0, or 1 when piped input had a refused line."""
        while True:
            notice = self.reader.take_notice()
            if notice:
                self.notice(notice)
            try:
                text = self.reader.read(self.joiner.open)
            except KeyboardInterrupt:
                if not self.reader.interactive:
                    raise
                self.joiner.cancel()
                self.notice(CTRL_C_HINT)
                continue
            except EOFError:
                if self.reader.interactive:
                    self.out.print()
                break
            if not self.reader.interactive:
                self.echo(text)
            for item in self.joiner.feed(text):
                if self.handle(item) == "quit":
                    return self.exit_status()
        return self.exit_status()

    def exit_status(self) -> int:
        if self.open_shown:  # the transcript ends on the scene's open line: the shell's prompt goes below
            self.open_shown = False
            self.out.print()
        return 1 if self.failures and not self.reader.interactive else 0

    def echo(self, text: str) -> None:
        """Piped input is not on the screen: write it into the transcript as a prompt line."""
        if self.open_shown:
            if not text and not self.joiner.open:
                return  # Enter: the reply goes on on the open line, as the transcript shows it once
            self.open_shown = False
            self.out.print()
        marker = CONTINUATION if self.joiner.open else PROMPT
        self.out.print(Text.assemble((marker, "bold green"), (visible(text, keep="\n\t"), "bold")), soft_wrap=True)

    def handle(self, text: str) -> str | None:
        """One complete input: a command or text for the script. "quit" ends the loop."""
        if is_command(text):
            try:
                return self.command(text)
            except SgptError as exc:
                self.hint(str(exc))
                return None
        added = self.session.add_user_text(text)
        if added.dropped:
            shown = ", ".join(repr(c) for c in added.dropped[:12]) + (", ..." if len(added.dropped) > 12 else "")
            self.notice(f"dropped characters the model does not know: {shown}")
        if text.strip() and not added.text:
            self.hint("nothing left to send: the model knows none of those characters")
            return None
        self.reply()
        return None

    def command(self, text: str) -> str | None:
        cmd = parse_command(text)
        if cmd.name == "/quit":
            return "quit"
        if cmd.name == "/help":
            self.help()
        elif cmd.name == "/set":
            if not cmd.arg:
                self.rows(self.session.show_rows()[:len(SETTING_NAMES)])
                self.notice("change one with /set NAME VALUE, e.g. /set temperature 0.6")
            else:
                name, _, value = cmd.arg.partition(" ")
                name, value = self.session.set(name, value)
                self.notice(f"{name} = {value}")
                if name == "heat" and self.session.settings.heat:
                    self.heat_legend()
        elif cmd.name == "/show":
            self.rows(self.session.show_rows(self.summary))
            self.out.print()
        elif cmd.name == "/reset":
            self.session.reset()
            self.notice("a new script: the model has forgotten everything")
        elif cmd.name == "/regen" and cmd.arg:
            self.alternatives(count_argument("/regen", cmd.arg, 2, MAX_ALTERNATIVES))
        elif cmd.name == "/regen":
            self.session.drop_last_reply()
            self.notice("(the last reply again)")
            self.reply()
        elif cmd.name == "/pick":
            self.session.pick(count_argument("/pick", cmd.arg, 1, MAX_ALTERNATIVES))
            self.notice(f"(alternative {cmd.arg.strip()} is the reply in the script now)")
        elif cmd.name == "/save":
            path = self.session.save(cmd.arg)
            self.notice(f"saved {len(self.session.script):,} characters to {shown(path)}")
        elif cmd.name == "/load":
            self.loaded(self.session.load(cmd.arg))
        return None

    def loaded(self, loaded) -> None:
        """What /load (or `sgpt chat FILE`) read: its tail, dim, so the user sees where it goes on."""
        if loaded.dropped:
            kinds = ", ".join(repr(c) for c in loaded.dropped[:12]) + (", ..." if len(loaded.dropped) > 12 else "")
            self.notice(f"dropped characters the model does not know: {kinds}")
        tail = self.session.script[-TAIL_SHOWN:]
        if len(self.session.script) > len(tail) and "\n" in tail:
            tail = tail[tail.index("\n") + 1:]
        said = f"(loaded {loaded.chars:,} characters from {shown(loaded.path)}; type, or press Enter and the play " \
               "goes on from here)"
        if not self.reader.interactive:  # a pipe: said first, so that the tail's open line can stay open
            self.notice(said)
        if tail:
            printer = ReplyPrinter(self.out)
            printer.write(tail, DIM)
            if self.reader.interactive or tail.endswith("\n"):
                printer.end()
            else:  # a pipe cannot redraw a line: it stays open for the reply to go on (echo, reply)
                self.open_shown = True
        if self.reader.interactive:
            self.notice(said)

    def help(self) -> None:
        self.rows(help_rows())
        self.out.print()
        for line in HELP_CONVENTION:  # a terminal wraps them at words; a pipe gets each on one line
            self.out.print(Text(line, style=DIM), soft_wrap=not on_a_terminal(self.out))
        self.heat_legend()
        self.out.print()

    def heat_legend(self) -> None:
        """What heat's colours mean; where there is no colour, that replies stay plain."""
        print_parts(self.out, heat_legend_parts(), Text("  "))
        if self.out.color_system is None:
            self.notice(f"({NO_COLOR_HEAT})")

    def printer(self) -> ReplyPrinter:
        return ReplyPrinter(self.out, heat=self.session.settings.heat)

    def alternatives(self, n: int) -> None:
        """/regen N: the alternatives, numbered, each streamed as it is made (the first at once;
        the others, made alongside it, as soon as the one before is done). One Ctrl-C stops them
        all at once and keeps every text as far as it got."""
        stream = self.session.alternatives(self.engine, n)  # the last reply is dropped now
        line = self.session.current_line()  # so this is the line the alternatives continue
        self.notice(f"({n} alternatives of the last reply, made together; /pick K keeps one)")
        drawn_upto = [0] * n
        state = {"k": 0, "printer": None}

        def catch_up(final: bool = False) -> None:
            """Draw what is new, alternative by alternative, in order."""
            while state["k"] < n:
                k = state["k"]
                if state["printer"] is None:
                    self.out.print(Text.assemble((f"[{k + 1}]", HINT),
                                                 (f" seed {self.session.choice_seeds[k]}", DIM)))
                    state["printer"] = self.printer()
                    state["printer"].begin(line)
                text = self.session.choices[k]
                probs = self.session.choice_probs[k] if self.session.choice_probs else None
                state["printer"].write(text[drawn_upto[k]:], probs=probs and probs[drawn_upto[k]:len(text)])
                drawn_upto[k] = len(text)
                end = self.session.choice_ends[k]
                if end is None and not final:
                    return
                if end in (None, "interrupted", "max_tokens"):
                    state["printer"].write(CUT if end == "max_tokens" else " (stopped)", DIM)
                state["printer"].end()
                state["printer"] = None
                state["k"] += 1

        drawn = [time.perf_counter()]

        def each(event) -> None:
            now = time.perf_counter()
            if event.done or now - drawn[0] >= FLUSH_S:
                catch_up()
                drawn[0] = now

        until_ctrl_c(stream, each)
        catch_up(final=True)
        done = sum(end not in (None, "interrupted") for end in self.session.choice_ends)
        if done < n:
            self.notice(f"(stopped: {done} of {n} alternatives finished; /pick K keeps any of them, a "
                        "stopped one as far as it got)")
        self.out.print()

    def reply(self) -> None:
        """Stream the model's continuation of the script; Ctrl-C stops it and keeps what came."""
        printer = self.printer()
        if self.open_shown:  # already the transcript's last line (a pipe, after /load)
            printer.line, self.open_shown = self.session.current_line(), False
        else:
            printer.begin(self.session.current_line())
        stream = self.session.stream_reply(self.engine)
        pending: list[str] = []  # pieces not drawn yet: drawn together every FLUSH_S
        drawn = [time.perf_counter(), 0]  # when the screen was last drawn; characters drawn

        def draw() -> None:
            text = "".join(pending)
            pending.clear()
            start = drawn[1]
            drawn[1] += len(text)
            # heat: the probabilities of these characters (the session keeps them as the reply grows)
            printer.write(text, probs=self.session.reply_probs[start:drawn[1]] if printer.heat else None)

        def each(piece: str) -> None:
            pending.append(piece)
            now = time.perf_counter()
            if now - drawn[0] >= FLUSH_S:
                draw()
                drawn[0] = now

        until_ctrl_c(stream, each)
        draw()
        stats = self.session.last_stats  # None: stopped before the engine's last event
        cut = stats is not None and stats.stop_reason == "max_tokens" and stats.chars > 0
        if cut:
            printer.write(CUT, DIM)  # on the screen only: the script holds what the model wrote
        printer.end()
        if stats is None or stats.stop_reason == "interrupted":
            self.notice("(stopped: the part written so far stays in the script; /regen tries again)")
        elif cut:
            self.notice(f"(cut at max_tokens = {self.session.settings.max_tokens:,}; Enter on an empty line "
                        "lets it go on, /set max_tokens N gives longer replies)")
        if stats is not None and self.session.settings.verbose:
            self.notice(f"{stats.chars:,} characters in {stats.seconds:.2f} s · first after "
                        f"{stats.ttft_s * 1000:.0f} ms · {stats.chars_per_s:,.0f} characters/s · "
                        f"{STOP_WORDS.get(stats.stop_reason, stats.stop_reason)} · seed "
                        f"{self.params_seed()}")
        self.out.print()

    def params_seed(self):
        """The seed the last reply used (the session's seed plus the replies before it)."""
        seed = self.session.settings.seed
        return None if seed is None else (seed + self.session.replies - 1) % 2**64


def until_ctrl_c(stream, each) -> None:
    """`each(item)` for every item of `stream` until it ends or Ctrl-C is pressed (typed keys kept for
    the next prompt); the stream is closed either way, so the engine leaves nothing in flight."""
    with StopOnCtrlC() as ctrl_c, keyboard_quiet(sys.stdin):
        try:
            for item in stream:
                each(item)
                if ctrl_c.pressed:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one that landed inside the engine
            pass
        finally:
            with contextlib.suppress(KeyboardInterrupt):
                stream.close()


# --- the command's worker --------------------------------------------------------------------------

def banner(console: Console, summary: dict, source: str, interactive: bool, load_s: float | None,
           seed: int | None = None) -> None:
    loss = summary.get("val_loss")
    parts = [Text("sgpt chat", style="bold"), Text.assemble((shown(summary["path"]), "bold"), (f" ({source})", DIM)),
             Text(summary["device"]), Text(f"val loss {loss:.4f}" if loss is not None else "val loss unknown")]
    if seed is not None:
        parts.append(Text(f"seed {seed}"))
    if load_s is not None:
        parts.append(Text(f"loaded in {load_s:.2f} s", style=DIM))
    print_parts(console, parts, Text("  ·  ", style=DIM))  # a terminal breaks it between facts, never in one
    if interactive:
        console.print(Text("Type a speaker (ROMEO:) and the model speaks as them; a line of verse joins the "
                           "script and the play goes on, often with another speaker; Enter on an empty line "
                           "and the play goes on.", style=DIM))
        console.print(Text("/help for help · Esc-Enter for a new line · Ctrl-C stops a reply · "
                           "Ctrl-D or /quit to leave", style=DIM))
        console.print()


def run_chat(settings: ChatSettings, model: str | None = None, device: str = "auto",
             history: bool = True, stdin: TextIO | None = None, stdout: TextIO | None = None,
             stderr: TextIO | None = None, script: str | None = None) -> int:
    """The whole `sgpt chat`: load the model, pick the reader, run the loop; the exit status."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.model_lookup import find_model
    from sgpt_cli.infer.onnx_model import OnnxModel, model_summary

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    settings.validate()
    if hasattr(stdout, "reconfigure"):  # a model's odd character never crashes a narrow locale
        stdout.reconfigure(errors="replace")
    t0 = time.perf_counter()
    path, source = find_model(model)
    engine = Engine(OnnxModel(path, device=device))
    load_s = time.perf_counter() - t0
    summary = model_summary(engine.model)
    session = ChatSession(engine.model.tokenizer.chars, engine.model.block_size, settings)
    loaded = session.load(script) if script is not None else None  # a bad file: one line, before the REPL

    interactive = stdin.isatty() and stdout.isatty()
    out = make_console(stdout)
    if interactive:
        reader = PromptReader(history)
        err = out
    else:
        if hasattr(stdin, "reconfigure"):  # odd bytes become U+FFFD, dropped with a notice
            stdin.reconfigure(errors="replace")
        reader = LineReader(stdin)
        err = make_console(stderr)
    banner(err, summary, source, interactive, load_s if settings.verbose else None, session.settings.seed)
    repl = Repl(session, engine, reader, out, err, summary)
    if loaded is not None:
        repl.loaded(loaded)
    return repl.run()
