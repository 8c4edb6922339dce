"""The chat's /explain and /next (sgpt_cli.term.repl hands them here).

/explain: `sgpt explain`'s view of the script's last character; /explain N: of the N-th character of
the last reply. /next: the next character's distribution, then one key at a time: a character the
model knows is picked and joins the script as if the model had written it (Ctrl-J: a line break),
Enter samples one with the chat's settings, Esc (or Ctrl-C, Ctrl-D) leaves; after each the new
distribution is shown, so a reply can be steered a character at a time.

What it does not do: generate a reply (Enter samples a single character) or keep state of its own
beyond the explain graph, opened at the first use and kept on the REPL.
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.text import Text

from sgpt_cli.errors import UsageError
from sgpt_cli.term.explain_view import glyph, label

ESC, CTRL_C, CTRL_D, ENTER, LINE_FEED = "\x1b", "\x03", "\x04", "\r", "\n"
NEXT_BARS = 10
NEXT_KEYS = "keys: type a character to pick it (Ctrl-J: a line break) · Enter samples one · Esc leaves"


def explainer(repl):
    from sgpt_cli.infer.explain import ExplainModel

    if getattr(repl, "_explainer", None) is None:
        repl._explainer = ExplainModel(repl.engine.model)
    return repl._explainer


def explanation(repl, end: int):
    """The script's character at index `end` explained (its window is all the model saw)."""
    from sgpt_cli.infer.explain import explain

    model = repl.engine.model
    script = repl.session.script
    start = max(0, end + 1 - model.block_size)
    e = explain(model, script[start:end + 1], -1, explainer=explainer(repl))
    e.first, e.at, e.length = e.first + start, e.at + start, len(script)  # counted in the whole script
    return e


def command(repl, cmd) -> None:
    """/explain [N] or /next, on the REPL `repl` (its session, engine and consoles)."""
    if cmd.name == "/next":
        if cmd.arg:
            raise UsageError("/next takes no arguments")
        return next_loop(repl)
    script = repl.session.script
    if not script:
        raise UsageError("the script is empty: type something first, then /explain")
    end = len(script) - 1
    if cmd.arg:
        from sgpt_cli.infer.chat_session import count_argument

        start = repl.session.reply_start
        if start is None or start >= len(script):
            raise UsageError("there is no reply yet; /explain N explains the N-th character of the last reply")
        n = count_argument("/explain", cmd.arg, 1, len(script) - start)
        end = start + n - 1
    show(repl.out, explanation(repl, end), repl.summary.get("path", "the model"))


def show(console, e, name: str) -> None:
    """The view on the REPL's console: in colour when it has colour, else the plain form."""
    from pathlib import Path

    from sgpt_cli.term.explain_view import render_plain, render_rich

    layers, heads = list(range(e.attention.shape[0])), list(range(e.attention.shape[1]))
    if console.color_system:
        render_rich(console, e, Path(name).name, layers, heads)
    else:
        for line in render_plain(e, Path(name).name, layers, heads, console.size.width).splitlines():
            console.print(Text(line), soft_wrap=True)
    console.print()


def bars(console, e, tail: str) -> None:
    import numpy as np

    console.print(Text.assemble(("next after ", "dim"), ("…" + "".join(glyph(c) for c in tail[-40:]), "bold")),
                  soft_wrap=True)
    order = np.argsort(-e.probs, kind="stable")[:NEXT_BARS]
    for i in order:
        c, p = e.vocab[i], float(e.probs[i])
        key = "^J" if c == "\n" else label(c)
        console.print(Text.assemble((f"  [{key}]", "bold"), f" {p * 100:6.2f}% ", ("█" * round(p * 30), "cyan")),
                      soft_wrap=True)
    console.print(Text(NEXT_KEYS, style="dim"), soft_wrap=True)


@contextlib.contextmanager
def raw_keys(stream):
    """The terminal in cbreak mode (one key at a time, no echo, Ctrl-C a byte), restored after."""
    import termios
    import tty

    fd = stream.fileno()
    before = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, before)


def read_key(fd) -> str:
    """One key: a whole UTF-8 character; an escape sequence (an arrow key) reads as Esc."""
    first = os.read(fd, 1)
    if not first:
        return CTRL_D
    need = 1 if first[0] < 0x80 else 2 if first[0] >> 5 == 6 else 3 if first[0] >> 4 == 14 else 4
    data = first + (os.read(fd, need - 1) if need > 1 else b"")
    return data.decode("utf-8", errors="replace")


def sample_one(repl) -> str:
    """One character as a reply's would be drawn (the chat's sampling settings, its next seed)."""
    from dataclasses import replace

    params = replace(repl.session.sampling_params(), max_tokens=1, stop=(), logprobs=None)
    repl.session.replies += 1
    text = "".join(event.text for event in repl.engine.stream(repl.session.context(), params))
    return text[:1]


def next_loop(repl) -> None:
    session, out = repl.session, repl.out
    if not repl.reader.interactive:
        raise UsageError("/next reads single keys: it needs a terminal (stdin and stdout)")
    if not session.script:
        raise UsageError("the script is empty: type something first, then /next")
    session.choices = []  # the script moves on: /pick would rewrite what came after
    session.reply_start = len(session.script)  # what is picked here is the last reply
    picked = 0
    while True:
        e = explanation(repl, len(session.script) - 1)
        bars(out, e, session.script)
        with raw_keys(sys.stdin) as fd:
            key = read_key(fd)
        if key in (ESC, CTRL_C, CTRL_D):
            break
        char = sample_one(repl) if key == ENTER else key
        if char not in e.vocab:
            repl.notice(f"the model does not know {label(char)!r}: type one of its characters, Enter or Esc")
            continue
        session.script += char
        picked += 1
    repl.notice(f"({picked} character{'s' * (picked != 1)} added to the script; type, or Enter and the play "
                "goes on from here)")
