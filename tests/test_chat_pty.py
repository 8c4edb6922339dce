"""`sgpt chat` at a real pseudo-terminal (pexpect): the banner, a streamed reply, Ctrl-C during a
reply and at the prompt, the up arrow, /quit and Ctrl-D, word wrap, /regen N, /set heat (in colour
and without). Timeouts are generous (a loaded machine);
nothing here measures time."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import run_env

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

TIMEOUT = 90


def spawn(tiny_onnx, home, *args: str, color: bool = False, columns: int = 120, fixed: bool = True):
    """`sgpt chat` at a pty `columns` wide; fixed=False leaves $COLUMNS unset, so a resize counts."""
    env = run_env(SGPT_HOME=home, TERM="xterm-256color", COLUMNS=str(columns), LINES="40",
                  # pexpect answers no cursor-position request; without this prompt-toolkit waits
                  # for one and then prints a warning
                  PROMPT_TOOLKIT_NO_CPR="1")
    if not fixed:
        env.pop("COLUMNS")
        env.pop("LINES")
    if color:
        env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "sgpt_cli", "chat", "--model", str(tiny_onnx), *args],
                          env=env, dimensions=(40, columns), timeout=TIMEOUT, encoding="utf-8",
                          codec_errors="replace")
    child.expect("sgpt chat")
    child.expect_exact(str(tiny_onnx))  # the banner names the model file in use
    child.expect(r"Ctrl-D\s+or\s+/quit\s+to\s+leave")  # a narrow terminal wraps the banner's words
    child.expect(">>> ")
    return child


def command(child, line: str, answer: str) -> None:
    child.send(line + "\r")
    child.expect_exact(answer)
    child.expect(">>> ")


def finish(child, keys: str = "/quit\r") -> int:
    child.send(keys)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_pty_banner_reply_and_quit(tiny_onnx, isolated_home):
    child = spawn(tiny_onnx, isolated_home, "--seed", "1", "-n", "60", "--verbose")
    child.send("ROMEO:\r")
    child.expect(r"(\d+) characters in .* characters/s")  # the reply streamed, then its stats line
    assert 0 < int(child.match.group(1)) <= 60
    child.expect(">>> ")
    assert finish(child) == 0
    assert (isolated_home / "chat_history").read_text(encoding="utf-8").count("+ROMEO:") == 1


def test_pty_ctrl_c_stops_a_long_reply_and_keeps_the_part_written(tiny_onnx, isolated_home, tmp_path):
    child = spawn(tiny_onnx, isolated_home, "--seed", "2")
    command(child, "/set max_tokens 100000", "max_tokens = 100000")
    command(child, "/set one_speech off", "one_speech = off")
    child.send("JULIET:\r")
    child.expect_exact("JULIET:")  # after the prompt's placeholder, so what follows is the reply
    child.expect(r"[a-z]{2}")  # the reply is streaming
    child.sendintr()
    child.expect_exact("(stopped: the part written so far stays in the script")
    child.expect(">>> ")
    saved = tmp_path / "partial.txt"
    command(child, f"/save {saved}", "saved ")
    assert finish(child) == 0
    text = saved.read_text(encoding="utf-8")
    assert text.startswith("JULIET:\n") and len(text) > len("JULIET:\n") + 2
    assert len(text) < len("JULIET:\n") + 100000  # it stopped long before max_tokens


def test_pty_ctrl_c_at_the_prompt_hints_how_to_leave_and_ctrl_d_leaves(tiny_onnx, isolated_home):
    child = spawn(tiny_onnx, isolated_home)
    child.send("ROMEO: half typed")
    child.sendintr()
    child.expect_exact("(Ctrl-C clears the line; Ctrl-D or /quit leaves)")
    child.expect(">>> ")
    child.send("/show\r")
    child.expect(r"script +0 characters")  # the cleared line never reached the script
    child.expect(">>> ")
    assert finish(child, "\x04") == 0


def test_pty_up_arrow_recalls_and_exit_leaves(tiny_onnx, isolated_home):
    child = spawn(tiny_onnx, isolated_home, color=True)
    command(child, "/set seed 11", "seed = 11")
    child.send("\x1b[A")  # the up arrow
    child.expect_exact("/set seed 11")
    child.send("\r")
    child.expect_exact("seed = 11")
    child.expect(">>> ")
    assert finish(child, "/exit\r") == 0


# --- /regen N and Ctrl-C, word wrap, an open speaker's line ---------------------------------------

def screen_rows(stream: str, width: int) -> list[str]:
    """The rows a terminal `width` wide shows for `stream`: printable characters (wrapping at the
    edge), CR, LF, cursor forward (CSI n C) and erase to the end of the row (CSI K, CSI 2K); other
    escape sequences change nothing here."""
    rows, col, i = [[]], 0, 0
    while i < len(stream):
        c = stream[i]
        if c == "\x1b":
            m = re.match(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b.", stream[i:])
            arg, cmd = (m.group(1), m.group(2)) if m.group(2) else ("", "")
            if cmd == "C":
                col = min(col + int(arg or 1), width - 1)
            elif cmd == "K":
                row = rows[-1]
                rows[-1] = [] if arg == "2" else row[:col]
            i += m.end()
            continue
        if c == "\r":
            col = 0
        elif c == "\n":
            rows.append([])
            col = 0
        elif c.isprintable():
            if col >= width:
                rows.append([])
                col = 0
            row = rows[-1]
            row.extend(" " * (col + 1 - len(row)))
            row[col] = c
            col += 1
        i += 1
    return ["".join(r).rstrip() for r in rows]


def assert_whole_words(rows: list[str], text: str, width: int) -> None:
    """The rows hold the text's characters in order, and a word is cut only if it is longer than
    a row (the tiny model writes some)."""
    shown = " ".join(rows).replace("…", "").split()
    words = text.split()
    assert "".join(shown) == "".join(words)
    whole = set(words)
    cut = [w for w in shown if w not in whole]
    assert all(any(w in long for long in words if len(long) > width) for w in cut), cut


def reply_rows(child, tiny_onnx, width: int, send: str):
    """Send `send`, capture the reply up to its max_tokens notice, and return its rows on screen."""
    child.send(send + "\r")
    child.expect_exact(send)
    child.expect_exact("(cut at max_tokens")
    rows = screen_rows(child.before.split("\n", 1)[1], width)  # from the row after the input's
    child.expect(">>> ")
    return [r for r in rows if r]


def saved_reply(child, tmp_path, head: str) -> str:
    saved = tmp_path / "scene.txt"
    command(child, f"/save {saved}", "saved ")
    text = saved.read_text(encoding="utf-8")
    assert text.startswith(head)
    return text[len(head):]


def test_pty_replies_wrap_at_word_boundaries_at_40_columns(tiny_onnx, isolated_home, tmp_path):
    """At 40 columns a reply wraps at spaces: no row is wider than the terminal and no word is split
    across rows (`the sure moc` / `k'd`)."""
    child = spawn(tiny_onnx, isolated_home, "--seed", "3", "-n", "400", "--no-one-speech", columns=40, fixed=False)
    rows = reply_rows(child, tiny_onnx, 40, "ROMEO:")
    text = saved_reply(child, tmp_path, "ROMEO:\n")
    assert finish(child) == 0
    assert len(rows) >= 5 and all(len(r) <= 40 for r in rows), rows
    assert_whole_words(rows, text, 40)


def test_pty_a_resize_mid_reply_wraps_at_the_new_width(tiny_onnx, isolated_home, tmp_path):
    child = spawn(tiny_onnx, isolated_home, "--seed", "4", "-n", "100000", "--no-one-speech", columns=70,
                  fixed=False)
    child.send("ROMEO:\r")
    child.expect_exact("ROMEO:")
    child.expect(r"[a-z]{2}")  # streaming
    child.setwinsize(40, 30)
    before = child.before + child.after
    for _ in range(5):  # well after the resize
        child.expect(r"\n")
        before += child.before + child.after
    child.sendintr()
    child.expect(r"\(stopped:\s+the\s+part\s+written")  # the notice wraps at 30 columns too
    rows = [r for r in screen_rows((before + child.before).split("\n", 1)[1], 70) if r]
    child.expect(">>> ")
    text = saved_reply(child, tmp_path, "ROMEO:\n")
    assert finish(child) == 0
    assert all(len(r) <= 70 for r in rows)
    assert max(len(r) for r in rows[-10:]) <= 30, rows[-10:]  # the end came after the resize
    assert_whole_words(rows, text, 30)


def test_pty_the_hint_on_an_empty_line_fits_a_narrow_terminal(tiny_onnx, isolated_home):
    """The grey hint fits the terminal's width (shorter, or none, on narrow ones): it never wraps onto
    a `...` row that looks like input."""
    from sgpt_cli.term.chat_input import PLACEHOLDER, placeholder_for

    assert placeholder_for(120) == PLACEHOLDER and len(placeholder_for(40)) + 4 < 40 and placeholder_for(20) == ""
    child = spawn(tiny_onnx, isolated_home, columns=40)
    child.send("/help\r")
    child.expect(">>> ")
    child.expect_exact(placeholder_for(40))
    assert "... " not in child.before
    assert finish(child) == 0


def a_reply_then_endless_ones(child) -> None:
    """A first short reply (for /regen), then replies that run until Ctrl-C."""
    child.send("ROMEO:\r")
    child.expect(">>> ")
    command(child, "/set max_tokens 100000", "max_tokens = 100000")
    command(child, "/set one_speech off", "one_speech = off")


def test_pty_ctrl_c_stops_regen_n_at_once_keeps_the_parts_and_typed_keys(tiny_onnx, isolated_home, tmp_path):
    """With long alternatives, the first alternative streams at once, one Ctrl-C stops them all
    within moments, a /show typed meanwhile runs next, and /pick takes a stopped one (each partial
    text kept)."""
    child = spawn(tiny_onnx, isolated_home, "--seed", "5", "-n", "20")
    a_reply_then_endless_ones(child)
    child.send("/regen 3\r")
    child.expect_exact("[1] seed 6")
    child.expect(r"[a-z]{2}")  # the first alternative streams before any is finished
    child.send("/show\r")  # typed while the model writes: not echoed, not lost
    child.sendintr()
    child.expect_exact("(stopped: 0 of 3 alternatives finished")
    child.expect(r"script +[\d,]+ characters")  # the /show typed during the alternatives ran
    child.expect(">>> ")
    command(child, "/pick 2", "alternative 2 is the reply")
    text = saved_reply(child, tmp_path, "ROMEO:\n")
    assert finish(child) == 0
    assert 2 < len(text) < 100000  # part of alternative 2, stopped long before max_tokens


def test_pty_romeo_but_soft_is_finished_on_the_same_line(tiny_onnx, isolated_home, tmp_path):
    """`ROMEO: But soft` leaves Romeo's line open: the script holds `ROMEO:\nBut soft` with no line
    break after it, and the reply goes on in that line."""
    child = spawn(tiny_onnx, isolated_home, "--seed", "6", "-n", "30", "--no-one-speech")
    child.send("ROMEO: But soft\r")
    child.expect_exact("(cut at max_tokens")
    child.expect(">>> ")
    reply = saved_reply(child, tmp_path, "ROMEO:\nBut soft")  # no line break after the user's words
    assert finish(child) == 0
    assert len(reply) == 30


# --- /set heat colours each character by its probability -------------------------------------------

HEAT_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(94|36|32|33|31)m")  # the five bins' colours, as rich writes them


def test_pty_heat_colours_a_wrapped_reply_by_probability_and_shows_its_legend(tiny_onnx, isolated_home, tmp_path):
    child = spawn(tiny_onnx, isolated_home, "--seed", "3", "-n", "400", "--no-one-speech", color=True, fixed=False)
    child.setwinsize(40, 40)  # after the banner, whose coloured words a narrow terminal breaks apart
    command(child, "/set heat on", "under 10%")  # turning it on shows the legend
    child.send("ROMEO:\r")
    child.expect_exact("ROMEO:")
    child.expect_exact("(cut at max_tokens")
    raw = child.before.split("\n", 1)[1]
    rows = [r for r in screen_rows(raw, 40) if r]
    child.expect(">>> ")
    text = saved_reply(child, tmp_path, "ROMEO:\n")
    assert finish(child) == 0
    assert len(set(HEAT_SGR.findall(raw))) >= 2  # the tiny, barely trained model: spaces likelier than letters
    assert len(rows) >= 5 and all(len(r) <= 40 for r in rows), rows
    assert_whole_words(rows, text, 40)  # words still wrap whole, each character in its own colour


def test_pty_heat_with_ctrl_c_and_regen_n(tiny_onnx, isolated_home, tmp_path):
    child = spawn(tiny_onnx, isolated_home, "--seed", "5", "-n", "20", "--heat", color=True)
    a_reply_then_endless_ones(child)
    child.send("JULIET:\r")
    child.expect_exact("JULIET:")
    child.expect(HEAT_SGR)  # the reply streams in heat's colours
    child.sendintr()
    child.expect_exact("(stopped: the part written so far stays in the script")
    child.expect(">>> ")
    child.send("/regen 2\r")
    child.expect(r"\[1\](\x1b\[[0-9;]*m)* seed")  # in colour: the number and the seed in their styles
    child.expect(HEAT_SGR)
    child.sendintr()
    child.expect_exact("(stopped: 0 of 2 alternatives finished")
    child.expect(">>> ")
    command(child, "/pick 2", "alternative 2 is the reply")
    assert finish(child) == 0


def test_pty_heat_without_colour_is_plain_text_and_says_so(tiny_onnx, isolated_home):
    child = spawn(tiny_onnx, isolated_home, "--seed", "3", "-n", "60", "--no-one-speech")  # NO_COLOR is set
    command(child, "/set heat on", "replies stay plain text")
    child.send("ROMEO:\r")
    child.expect_exact("ROMEO:")
    child.expect_exact("(cut at max_tokens")
    raw = child.before.split("\n", 1)[1]
    child.expect(">>> ")
    assert finish(child) == 0
    assert not HEAT_SGR.search(raw) and any(screen_rows(raw, 120))  # the reply, in no colour
