"""The chat's /explain and /next at a real pseudo-terminal (pexpect), and /explain in a pipe.
Timeouts are generous (a loaded machine); nothing here measures time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import SGPT, run_env
from test_chat_pty import command, finish, spawn

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


def test_next_picks_characters_with_keys_samples_with_enter_and_esc_leaves(tiny_onnx, isolated_home, tmp_path):
    child = spawn(tiny_onnx, isolated_home, "--seed", "3", "-n", "5")
    child.send("ROMEO:\r")
    child.expect(">>> ")
    child.send("/next\r")
    child.expect_exact("Enter samples one")
    child.send("Q")  # picked: joins the script as if the model wrote it
    child.expect_exact("Q")
    child.expect_exact("Enter samples one")
    child.send("z")
    child.expect_exact("Enter samples one")
    child.send("\r")  # one sampled character
    child.expect_exact("Enter samples one")
    child.send("\x1b")
    child.expect_exact("3 characters added to the script")
    child.expect(">>> ")
    saved = tmp_path / "scene.txt"
    command(child, f"/save {saved}", "saved")
    assert finish(child) == 0
    text = saved.read_text(encoding="utf-8")
    assert "Qz" in text and text.index("Qz") == len(text) - 3  # two picked, then one sampled


def test_explain_in_the_chat_shows_the_view_of_the_last_reply(tiny_onnx, isolated_home):
    child = spawn(tiny_onnx, isolated_home, "--seed", "3", "-n", "8")
    child.send("ROMEO:\r")
    child.expect(">>> ")
    child.send("/explain 2\r")
    child.expect_exact("logit lens")
    child.expect_exact("attention of")
    child.expect(">>> ")
    command(child, "/explain 99", "/explain takes a whole number from 1 to")
    assert finish(child) == 0


def test_help_lists_explain_and_next_and_a_pipe_refuses_next_in_one_line(tiny_onnx):
    script = "ROMEO:\n/help\n/explain\n/next\n"
    proc = subprocess.run(SGPT + ["chat", "--model", str(tiny_onnx), "-n", "4", "--seed", "1"], input=script.encode(),
                          capture_output=True, env=run_env(), timeout=300)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "/explain [N]" in out and "/next" in out
    assert "logit lens" in out and "digits under the characters" in out  # the plain form: no colour in a pipe
    assert "/next reads single keys: it needs a terminal" in err
    assert proc.returncode == 1  # a refused line in piped input
