"""Every user- or file-controlled string that reaches a terminal goes
through one function (sgpt_cli.errors.visible, with `shown` cutting long names) that makes control
and format characters visible; model text goes through the tokenizer's `shown`; a vocabulary that
holds no text (a lone surrogate) is refused when the file is opened."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SGPT, run_env
from sgpt_cli.errors import SgptError, shown, visible

# a title-setting OSC, a screen clear, a BEL, a right-to-left override, a line break, a C1 CSI
HOSTILE = "x\x1b]0;PWNED\x07\x1b[2J\u202e\u2028\x9b\n.onnx"
RAW = ("\x1b", "\x07", "\u202e", "\u2028", "\x9b")


def raw_controls(data: str) -> list[str]:
    return [c for c in RAW if c in data]


def sgpt(*args, stdin: bytes = b"", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + list(args), input=stdin, capture_output=True, env=run_env(NO_COLOR="1"),
                          cwd=cwd, timeout=300)


def assert_one_safe_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.decode("utf-8")
    lines = err.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert not raw_controls(err + proc.stdout.decode("utf-8")), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- the function ---------------------------------------------------------------------------------

def test_visible_escapes_every_character_a_terminal_obeys_or_hides():
    assert visible(HOSTILE) == "x\\x1b]0;PWNED\\x07\\x1b[2J\\u202e\\u2028\\x9b\\n.onnx"
    for c in ["\x00", "\x7f", "\x85", "\u200b", "\u200f", "\u2066", "\ufeff", "\ud800", "\U000e0001", "\t", "\r"]:
        assert c not in visible(f"a{c}b"), repr(c)


def test_visible_leaves_text_alone_and_is_idempotent():
    for text in ["models/shakespeare.onnx", "café/naïve — «ok» 日本語 ÆØÅ", "a b", "C:\\path\\x.txt", ""]:
        assert visible(text) == text
    assert visible(visible(HOSTILE)) == visible(HOSTILE)


def test_shown_cuts_long_names_after_making_them_visible():
    name = "\x1b" * 100
    out = shown(name)
    assert len(out) <= 80 and "\x1b" not in out and out.endswith("…")


def test_every_one_line_error_is_made_visible_whatever_raised_it(capsys):
    """cli_common.err: the one place a one-line error is written; it shows names safely even when
    the raiser forgot (an ONNX Runtime message quoting a path, a library's text)."""
    from sgpt_cli.term.common import report

    assert report(SgptError(f"ONNX Runtime cannot load {HOSTILE}: bad")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not raw_controls(err) and "\\x1b]0;PWNED" in err


# --- every route a name takes to the terminal -------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["complete", "--model", HOSTILE, "hi"],
    ["complete", "--batch", HOSTILE],
    ["eval", "--model", HOSTILE],
    ["chat", "--model", HOSTILE],
], ids=["complete --model", "--batch", "eval --model", "chat --model"])
def test_a_missing_file_with_a_hostile_name_is_one_safe_line(args, tmp_path, tiny_onnx):
    if args[1] == "--batch":
        args = ["complete", "--model", str(tiny_onnx), "--batch", HOSTILE]
    assert_one_safe_line(sgpt(*args, cwd=tmp_path), "x\\x1b]0;PWNED")


def test_export_and_train_missing_files_with_hostile_names_are_one_safe_line(tmp_path):
    pytest.importorskip("torch")
    line = assert_one_safe_line(sgpt("export", HOSTILE, "--out", "o.onnx", cwd=tmp_path), "does not exist")
    assert line.count("x\\x1b]0;PWNED") == 2  # the name, and the command that would make it
    assert_one_safe_line(sgpt("train", "--data", HOSTILE, "--out", "t.pt", cwd=tmp_path), "x\\x1b]0;PWNED")


def test_onnx_runtimes_own_error_text_stays_one_safe_line(tmp_path):
    """A file our walk accepts but ONNX Runtime cannot load: its message quotes the path, with the
    path's line break, which would split the one-line error in two."""
    bad = tmp_path / HOSTILE
    bad.write_bytes(b"\x08\x07")  # ir_version 7, and nothing else: no graph
    assert_one_safe_line(sgpt("complete", "--model", str(bad), "hi", cwd=tmp_path))


def test_a_model_without_sgpt_metadata_named_hostilely_is_one_safe_line(tmp_path, tiny_onnx):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    path = tmp_path / HOSTILE
    onnx.save(proto, str(path))
    assert_one_safe_line(sgpt("complete", "--model", str(path), "hi", cwd=tmp_path))


@pytest.fixture
def hostile_copy(tiny_onnx, tmp_path) -> Path:
    path = tmp_path / HOSTILE
    shutil.copy(tiny_onnx, path)
    return path


def test_complete_verbose_and_the_eval_report_show_the_models_name_safely(hostile_copy, tmp_path, text_file):
    done = sgpt("complete", "--model", str(hostile_copy), "-v", "-n", "5", "--seed", "1", "hi", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not raw_controls(done.stderr.decode()) and "x\\x1b]0;PWNED" in done.stderr.decode()
    data = tmp_path / ("d\x1b[2J" + text_file.name)
    shutil.copy(text_file, data)
    done = sgpt("eval", "--model", str(hostile_copy), "--data", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = done.stdout.decode()
    assert not raw_controls(report) and "x\\x1b]0;PWNED" in report and "d\\x1b[2J" in report


def test_the_chat_banner_show_save_and_unknown_command_show_names_safely(hostile_copy, tmp_path):
    script = ("ROMEO:\n/show\n/bogus\x1b[2J\x07\n/save " + "s\x1b]0;T\x07.txt" + "\n/quit\n").encode()
    done = sgpt("chat", "--model", str(hostile_copy), "--seed", "1", "--max-tokens", "20", stdin=script, cwd=tmp_path)
    out = (done.stdout + done.stderr).decode("utf-8")
    assert not raw_controls(out), out
    assert "x\\x1b]0;PWNED" in out  # /show (its table cuts a long path to the width)
    assert "unknown command /bogus\\x1b[2j\\x07" in out  # (commands are read in lower case)
    assert "saved" in out and "s\\x1b]0;T\\x07.txt" in out
    assert (tmp_path / "s\x1b]0;T\x07.txt").exists()  # the file has the name asked for; only its display is escaped


def test_train_header_and_done_line_show_names_safely(tmp_path, text_file):
    pytest.importorskip("torch")
    data = tmp_path / "d\x1b[2J.txt"
    shutil.copy(text_file, data)
    out = tmp_path / "m\x1b]0;T\x07.pt"
    done = sgpt("train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-iters", "2",
                "--eval-interval", "2", "--eval-iters", "1", "--sample-chars", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (done.stdout + done.stderr).decode("utf-8")
    assert not raw_controls(text), text
    assert "d\\x1b[2J.txt" in text and "m\\x1b]0;T\\x07.pt" in text
    assert out.exists()


# --- 6. vocabularies that are not text ---------------------------------------------------------------

def test_a_vocabulary_with_a_lone_surrogate_is_refused_when_opened(tiny_onnx, tmp_path):
    from test_hostile import edited_model

    from sgpt_cli.infer.onnx_model import OnnxModel
    from sgpt_cli.infer.tokenizer import CharTokenizer

    with pytest.raises(SgptError, match="U\\+D800"):
        CharTokenizer(["a", "\ud800"])
    chars = OnnxModel(tiny_onnx, device="cpu").tokenizer.chars
    path = edited_model(tiny_onnx, tmp_path / "surrogate.onnx",
                        sgpt_vocab=json.dumps(["\ud800" if c == "e" else c for c in chars]))
    done = sgpt("complete", "--model", str(path), "hi")
    assert_one_safe_line(done, "the vocabulary is damaged", "U+D800")


def test_format_controls_from_a_vocabulary_are_shown_not_obeyed():
    from sgpt_cli.infer.tokenizer import CharTokenizer, printable

    for c in ["\u202e", "\u202d", "\u2066", "\u200b", "\u200f", "\ufeff", "\u2028", "\u2029", "\u00ad"]:
        assert printable(c) == "\ufffd", repr(c)
    assert [printable(c) for c in "é日\u00a0"] == list("é日\u00a0")  # letters and spaces are text
    assert CharTokenizer(["\u202e", "a"]).decode([0, 1]) == "\ufffda"


def test_a_batch_id_with_c1_and_format_controls_is_written_escaped_and_reads_back(capsys):
    from test_batch_cli import Log, Scripted, stats

    from sgpt_cli.term.batch import iter_batch, run_batch
    from sgpt_cli.infer.engine import Event as RowEvent
    from sgpt_cli.settings import SamplingParams

    hostile_id = "id\x9b2J\u202e\u2028\ud800"
    lines = list(iter_batch([json.dumps({"prompt": "a", "id": hostile_id})], SamplingParams()))
    out = Log()
    assert run_batch(Scripted([RowEvent(0, "ok", stats())]), lines, out, Log(), None) == 0
    (line,) = out.lines
    assert not any(c in line for c in "\x9b\u202e\u2028\ud800") and "\\u009b" in line
    assert json.loads(line)["id"] == hostile_id


@pytest.mark.parametrize("args", [["complete", "--bogus\x1b[2J", "hi"], ["complete", "--temperature", "\x1b]0;T\x07"],
                                  ["complete", "--device", "\u202ecuda"], ["eval", "--split", "\x9b2J"]],
                         ids=["unknown flag", "bad number", "bad choice", "bad split"])
def test_usage_errors_quoting_hostile_values_are_one_safe_line(args, tmp_path):
    done = sgpt(*args, cwd=tmp_path)
    err = done.stderr.decode("utf-8")
    assert done.returncode == 2 and len(err.strip().splitlines()) == 1 and not raw_controls(err), err
