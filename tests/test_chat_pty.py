"""`sgpt chat` at a real pseudo-terminal (pexpect): the banner, a streamed reply, Ctrl-C during a
reply and at the prompt, the up arrow, /quit and Ctrl-D. Timeouts are generous (a loaded machine);
nothing here measures time."""

from __future__ import annotations

import sys

import pytest

from conftest import run_env

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

TIMEOUT = 90


def spawn(tiny_onnx, home, *args: str, color: bool = False):
    env = run_env(SGPT_HOME=home, TERM="xterm-256color", COLUMNS="120", LINES="40",
                  # pexpect answers no cursor-position request; without this prompt-toolkit waits
                  # for one and then prints a warning
                  PROMPT_TOOLKIT_NO_CPR="1")
    if color:
        env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "sgpt_cli", "chat", "--model", str(tiny_onnx), *args],
                          env=env, dimensions=(40, 120), timeout=TIMEOUT, encoding="utf-8",
                          codec_errors="replace")
    child.expect("sgpt chat")
    child.expect_exact(str(tiny_onnx))  # the banner names the model file in use
    child.expect("Ctrl-D or /quit to leave")
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
