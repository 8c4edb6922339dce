"""Errors a user can cause, and how a name or a library's text is shown in their one line.

What it holds: `SgptError` (a one-line message that the CLI prints instead of a traceback; its exit
code says what kind of failure it was), `UsageError` (a bad flag or value), `first_line` (a
library's report cut to one line), `visible` (control and format characters made visible: the one
function every user- or file-controlled string passes through on its way to a terminal) and `shown`
(a name made visible, then cut).

What it does not do: write files (sgpt_cli.files does) or import torch.
"""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def library_warnings_silenced():
    """No warning a library issues inside the block reaches a terminal: torch warns on a sparse tensor in
    a checkpoint (2.14 and later), numpy on a NaN a hostile model computes, onnx on odd metadata. What
    matters of them sgpt says in its own one line; the raw multi-line text is never the user's to read.
    (`sgpt` itself ignores library warnings process-wide unless -W or PYTHONWARNINGS asks for them:
    term.app.main; this block keeps the promise for callers of the library functions too.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class SgptError(Exception):
    """A failure the user can fix; the message says how. Printed as one line, no traceback."""

    exit_code = 1


class UsageError(SgptError):
    """A bad flag or value (exit 2, as argument errors are)."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name if it has none), at most `limit`
    characters, made `visible`: what a one-line error quotes from a library's multi-line report
    (ONNX Runtime's text quotes file and node names, which may hold any character)."""
    text = str(exc).strip()
    return visible(text.split("\n")[0][:limit]) if text else type(exc).__name__


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text, keep: str = "") -> str:
    """`text` with every character a terminal could obey or hide escaped as Python writes it
    (`\\x1b`, `\\u202e`, `\\n`): C0/C1 controls, DEL, format characters (bidirectional overrides,
    zero-width ones), line and paragraph separators, lone surrogates, unassigned and private-use
    code points. THE one function through which every user- or file-controlled string reaches a
    terminal in a message (names of files, settings, ids, library error text); model text goes
    through `CharTokenizer.shown`, which keeps line breaks and tabs as text. `keep`: characters
    left as they are (a transcript of several lines keeps "\\n\\t")."""
    text = str(text)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(c if c.isprintable() or c == " " or c in keep else _escape(c) for c in text)


SHOWN_NAME = 80  # characters of a refused file name worth repeating in a one-line message


def shown(path) -> str:
    """A path (or any name) as a one-line message can hold it: made `visible`, long names cut."""
    text = visible(path)
    return text if len(text) <= SHOWN_NAME else text[:SHOWN_NAME - 1] + "…"


# --- temporaries -----------------------------------------------------------------------------------


