"""Drawing `sgpt chat`'s replies: `ReplyPrinter` streams a reply with rich, a character at a time,
colouring a speaker's name once its line is complete, or with `/set heat on` each character by the
probability the model gave it (`HEAT`, five bins); the chat's styles and console; Ctrl-C during a
reply (`StopOnCtrlC`, `keyboard_quiet`).

What it does not do: read input (sgpt_cli.term.chat_input) or run the loop (sgpt_cli.term.repl).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from typing import Iterator, TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from sgpt_cli.infer.chat_session import is_speaker_line
from sgpt_cli.term.common import use_color
from sgpt_cli.settings import HEAT  # declared once, for the page too
from sgpt_cli.term.console import Console as _Console

# rich styles for what is printed; the prompt-toolkit styles below match them
REPLY = "cyan"
SPEAKER = "bold yellow"
DIM = "dim"
HINT = "yellow"
CUT = "…"  # drawn (not written into the script) where max_tokens cut a reply
# a reply is drawn in batches, every 20 ms (50 per second, smooth to the eye): rich costs about as
# much per call as the model per character, so drawing each character alone halved the chat's speed
FLUSH_S = 0.02
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
