"""Reading a prompt for the model: stdin (when it is not a terminal) streamed in chunks, then an
argument, joined as simonw's `llm` joins them; what the model reads of it (the tail of known
characters), the characters it does not know, and what `sgpt complete --json` and `sgpt serve` say
about them.

stdin is streamed, never read whole: what is kept is the tail the model reads (two windows of known
characters), the characters it does not know, and at most PROMPT_KEEP characters for --json; an
`echo` stream gets each chunk as it arrives. A UTF-8 byte order mark at the start is dropped (here,
once, for every reader).

What it does not do: parse flags or write anything but the echo (sgpt_cli.term.complete), sample or
run ONNX (sgpt_cli.infer.engine does), import numpy, Typer, rich or torch.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, TextIO

from sgpt_cli.files import without_bom

PROMPT_CHUNK = 1 << 16  # bytes of stdin read at a time: the prompt streams, it is never read whole
PROMPT_KEEP = 1 << 20  # characters of the prompt kept for --json's "prompt" (its tail, if longer)


class StreamedPrompt:
    """The prompt as it arrives: stdin (when it is not a terminal) in chunks, then the argument,
    joined as simonw's `llm` joins them (with a space), except that a stdin ending in whitespace (a
    line break, usually) is not given a space after it. `pieces()` yields it once, a chunk at a time."""

    def __init__(self, stdin: BinaryIO | None, argument: str | None):
        self.stdin = stdin if stdin is not None and not stdin.isatty() else None
        self.argument = argument

    def pieces(self) -> Iterator[str]:
        last = ""
        if self.stdin is not None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            first = True
            read = getattr(self.stdin, "read1", self.stdin.read)
            while True:
                chunk = read(PROMPT_CHUNK)
                text = decoder.decode(chunk or b"", final=not chunk)
                if first and text:
                    text, first = without_bom(text), False
                if text:
                    last = text[-1]
                    yield text
                if not chunk:
                    break
        if self.argument:
            if last and not last.isspace():
                yield " "
            yield self.argument


@dataclass
class PromptRead:
    """What complete keeps of a streamed prompt: never more than a window and PROMPT_KEEP."""

    fed: str  # the known characters' tail, at most two windows: all the engine reads
    kept: str  # the prompt itself, or its last PROMPT_KEEP characters
    chars: int  # the prompt's length
    unknown: list[str]  # characters the model does not know, each once, in order of appearance
    any_known: bool
    last: str  # the prompt's last character ("" when empty)


def read_for_model(pieces: Iterable[str], stoi: dict, window: int, echo: TextIO | None = None,
                   bold: bool = False) -> PromptRead:
    """Consume the prompt's pieces, echoing each to `echo` as it comes, keeping only the tail the
    model reads (Windows line ends made plain when the model has no '\r'), the characters it does
    not know, and PROMPT_KEEP characters for --json."""
    plain_crlf = "\r" not in stoi
    fed, kept, chars, last, pending = "", "", 0, "", ""
    unknown: dict[str, None] = {}
    any_known = started = False
    for piece in pieces:
        if not piece:
            continue
        if echo is not None:
            if bold and not started:
                echo.write("\x1b[1m")
            started = True
            echo.write(piece)
            echo.flush()
        chars += len(piece)
        last = piece[-1]
        kept = (kept + piece)[-PROMPT_KEEP:]
        text = pending + piece
        pending = ""
        if plain_crlf:
            if text.endswith("\r"):  # its line break may come in the next piece
                text, pending = text[:-1], "\r"
            text = text.replace("\r\n", "\n")
        fed, any_known = _known_tail(text, stoi, unknown, fed, window, any_known)
    if pending:
        fed, any_known = _known_tail(pending, stoi, unknown, fed, window, any_known)
    if echo is not None and bold and started:
        echo.write("\x1b[0m")
        echo.flush()
    return PromptRead(fed, kept, chars, list(unknown), any_known, last)


def _known_tail(text: str, stoi: dict, unknown: dict, fed: str, window: int, any_known: bool) -> tuple[str, bool]:
    new = set(text).difference(stoi)  # set operations: a 50 MB prompt costs no Python loop per character
    if new:
        # in order of first appearance, in one pass (dict.fromkeys keeps it, at C speed): sorting by
        # text.index searched the text once per character, quadratic in a prompt of many distinct ones
        fresh = new.difference(unknown)
        order = dict.fromkeys(text) if len(fresh) > 16 else sorted(fresh, key=text.index)
        unknown.update(dict.fromkeys(filter(fresh.__contains__, order)))
        text = text.translate(dict.fromkeys(map(ord, new)))
    return (fed + text)[-2 * window:], any_known or bool(text)


def unknown_note(read: PromptRead) -> str | None:
    """What `warn_unknown` says about the characters the model does not know (None when none were
    dropped): `sgpt serve` gives the same words in its responses."""
    if not read.unknown:
        return None
    shown = "".join(read.unknown[:20]) + ("..." if len(read.unknown) > 20 else "")
    then = "" if read.any_known else "; none is left, so it starts from a line break"
    return f"dropped characters the model does not know: {shown!r}{then}"
