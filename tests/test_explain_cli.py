"""`sgpt explain` as a user runs it: the plain view in a pipe and without colour, the colour view at a
pseudo-terminal, --json, --image, every bad input as one line (exit 2 or 1, nothing written), and
no torch on its way."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import SGPT, run_env

PROMPT = "ROMEO:\nBut soft"


def sgpt(*args: str, stdin: bytes = b"", **env) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + ["explain", *args], input=stdin, capture_output=True, env=run_env(**env),
                          timeout=300)


def test_plain_view_in_a_pipe_has_bars_lens_and_digit_weights_under_the_text(tiny_onnx):
    proc = sgpt("--model", str(tiny_onnx), PROMPT)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "\x1b" not in out
    heads = [out.index(s) for s in ("next character", "logit lens", "attention of t (position 14)")]
    assert heads == sorted(heads)
    assert re.search(r"^  layer 2 ", out, re.M) and re.search(r"^  embedding ", out, re.M)
    text_line = "ROMEO:↵But soft"
    lines = out.splitlines()
    rows = [i for i, line in enumerate(lines) if line.endswith(text_line)]
    assert len(rows) == 2 * 2  # the tiny model: 2 layers x 2 heads
    for i in rows:
        digits = lines[i + 1].strip()
        assert len(digits) == len(text_line) and set(digits) <= set(".0123456789")
        assert lines[i + 2].strip().startswith("strongest: ")


def test_focus_on_one_layer_and_head(tiny_onnx):
    out = sgpt("--model", str(tiny_onnx), "--layer", "2", "--head", "1", "--at", "5", PROMPT).stdout.decode()
    assert "layer 1\n" not in out and "layer 2\n" in out
    assert out.count("head 1") == 1 and "head 2" not in out
    assert "attention of : (position 5)" in out


def test_json_holds_every_number(tiny_onnx):
    proc = sgpt("--model", str(tiny_onnx), "--json", stdin=PROMPT.encode())
    obj = json.loads(proc.stdout)
    assert obj["at"] == len(PROMPT) - 1 and obj["window"]["characters"] == list(PROMPT)
    assert abs(sum(x["prob"] for x in obj["next"]) - 1) < 1e-6
    assert [x["layer"] for x in obj["lens"]] == [0, 1, 2]
    for layer in obj["attention"]:
        for head in layer["heads"]:
            assert len(head["weights"]) == len(PROMPT) and abs(sum(head["weights"]) - 1) < 1e-5


def test_image_draws_the_attention_maps(tiny_onnx, tmp_path):
    out = tmp_path / "maps.png"
    proc = sgpt("--model", str(tiny_onnx), "--image", str(out), "--json", PROMPT)
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]  # no temporary left


@pytest.mark.parametrize("args, stdin, code, says", [
    ((), b"", 1, "the prompt is empty"),
    (("\x01\x02",), b"", 1, "no character the model knows"),
    (("--at", "99", "ROMEO"), b"", 2, "--at 99 is outside the prompt"),
    (("--layer", "3", "ROMEO"), b"", 2, "--layer 3 is out of range: this model has 2 layers"),
    (("--head", "0", "ROMEO"), b"", 2, "--head"),
    (("--image", "/", "ROMEO"), b"", 1, "--image / is a directory"),
])
def test_bad_input_is_one_line(tiny_onnx, args, stdin, code, says):
    proc = sgpt("--model", str(tiny_onnx), *args, stdin=stdin)
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.startswith("sgpt: error: ") and err.count("\n") == 1 and says in err, err
    assert proc.stdout == b""


def test_a_file_that_is_not_a_model_or_not_sgpts_graph_is_refused_in_one_line(tiny_onnx, tmp_path):
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x80\x02not a model")
    proc = sgpt("--model", str(junk), "ROMEO")
    assert proc.returncode == 1 and proc.stderr.decode().count("\n") == 1 and "PyTorch checkpoint" in proc.stderr.decode()
    proto = onnx.load(str(tiny_onnx))
    next(n for n in proto.graph.node if n.op_type == "Attention").attribute.append(
        onnx.helper.make_attribute("qk_matmul_output_mode", 1))
    edited = tmp_path / "edited.onnx"
    edited.write_bytes(proto.SerializeToString())
    proc = sgpt("--model", str(edited), "--image", str(tmp_path / "x.png"), "ROMEO")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1 and "cannot explain" in err and "sgpt export" in err, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flags", [["--json"], []])
def test_explain_imports_neither_torch_nor_typer(tiny_onnx, flags):
    from test_no_torch import imported_by

    proc, heavy = imported_by("explain", "--model", str(tiny_onnx), *flags, "ROMEO")
    assert proc.returncode == 0, proc.stderr.decode()
    assert heavy == set()  # no torch or onnx ever; no Typer or rich on the fast path into a pipe


pexpect = pytest.importorskip("pexpect")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("color", [True, False])
def test_at_a_terminal_weights_are_shaded_in_colour_and_digits_without(tiny_onnx, color):
    env = run_env(TERM="xterm-256color", COLUMNS="100", LINES="40")
    if color:
        env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, SGPT[1:] + ["explain", "--model", str(tiny_onnx), "--layer", "1", PROMPT],
                          env=env, dimensions=(40, 100), timeout=120, encoding="utf-8", codec_errors="replace")
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "next character" in out and "logit lens" in out
    shaded = re.search(r"\x1b\[[0-9;]*48;(2|5);", out)  # a background colour (truecolor or 256)
    assert bool(shaded) == color
    assert ("strongest: " in out) != color  # the plain form names them on a line of their own


def test_image_without_matplotlib_says_which_extra_to_install(tiny_onnx, tmp_path):
    from test_no_torch import without

    proc = subprocess.run(SGPT + ["explain", "--model", str(tiny_onnx), "--image", "maps.png", "ROMEO"],
                          capture_output=True, text=True, env=without(tmp_path, "matplotlib"), cwd=tmp_path,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert "--image needs matplotlib" in proc.stderr and "pip install 'sgpt[train]'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing written
