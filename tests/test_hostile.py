"""The hostile battery: special files as targets, stale temporaries, names the OS refuses, hostile
model files (external data, edited metadata, escape-bearing vocabularies), oversized checkpoints,
unbounded input, closed and full streams.

Never touches real device files: FIFOs are made with mkfifo in a temporary folder; a character
device is only ever a *refused target* reached through a symbolic link to /dev/null; /dev/full is
used only as an output target (writing to it is harmless), never replaced.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SGPT, run_env
from sgpt_cli import errors
from sgpt_cli.chat_session import ChatSession
from sgpt_cli.errors import SgptError, atomic_path, atomic_write_text, clean_stale_temporaries

VOCAB = sorted(set("\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


def one_line(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message


# --- 1. the write mechanism: regular files only, mode kept, fsynced ----------------------------------

def test_a_fifo_target_is_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SgptError, match="is a FIFO .*not a regular file") as exc:
        atomic_write_text(fifo, "x")
    one_line(str(exc.value))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary left either


def test_a_symlink_to_a_character_device_is_refused_and_the_device_untouched(tmp_path):
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    before = os.stat("/dev/null")
    with pytest.raises(SgptError, match="is a character device, not a regular file"):
        atomic_write_text(link, "x")
    assert os.path.islink(link) and os.readlink(link) == "/dev/null"
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_a_symlink_to_a_regular_file_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "runs" / "real.txt"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.txt"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert os.path.islink(link) and real.read_text() == "new"


def test_an_existing_files_mode_is_kept(tmp_path):
    target = tmp_path / "secret.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and target.read_text() == "new"
    os.chmod(target, 0o640)
    atomic_write_text(target, "newer")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_a_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640


def test_hard_links_keep_the_previous_contents_as_documented(tmp_path):
    target = tmp_path / "m.txt"
    target.write_text("v1")
    os.link(target, tmp_path / "backup.txt")
    atomic_write_text(target, "v2")
    assert target.read_text() == "v2" and (tmp_path / "backup.txt").read_text() == "v1"


def test_the_temporary_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(a, b):
        calls.append(("replace", None))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "f.txt", "x")
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]


def test_a_checkpoint_save_onto_a_fifo_is_refused(tmp_path):
    from sgpt_cli import checkpoint

    fifo = tmp_path / "m.pt"
    os.mkfifo(fifo)
    with pytest.raises(SgptError, match="FIFO"):
        checkpoint.save(fifo, {"model": {}, "model_config": {}, "vocab": "[]"})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --- 11. temporaries left by kill -9 -----------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the OS reuses it, which it does not at once)


def test_stale_temporaries_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    pid = dead_pid()
    stale = [tmp_path / f".m.pt.{pid}.0123abcd.tmp", tmp_path / f".m.pt.{pid}.0123abcd.tmp.fp32"]
    for p in stale:
        p.write_bytes(b"half a model")
    quant = tmp_path / f".m.pt.{pid}.0123abcd.tmp.quant"
    quant.mkdir()
    (quant / "ort.quant.x").mkdir()
    live = tmp_path / f".m.pt.{os.getppid()}.89abcdef.tmp"  # a live process's write in progress
    live.write_bytes(b"being written")
    other = tmp_path / f".other.pt.{pid}.0123abcd.tmp"  # another target's: not this run's business
    other.write_bytes(b"x")
    mine = tmp_path / ".m.pt.notes"  # not our naming
    mine.write_bytes(b"x")
    atomic_write_text(tmp_path / "m.pt", "new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["m.pt", live.name, other.name, mine.name])


def test_a_killed_export_leaves_nothing_that_the_next_export_keeps(tmp_path, tiny_ckpt):
    """kill -9 in the middle of `sgpt export`: the hidden temporaries it leaves are gone after the
    next export to the same --out."""
    import signal
    import time

    out = tmp_path / "m.onnx"
    proc = subprocess.Popen(SGPT + ["export", str(tiny_ckpt), "--out", str(out)], env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(p.name.startswith(".m.onnx.") for p in tmp_path.iterdir())  # what kill -9 leaves
    done = subprocess.run(SGPT + ["export", str(tiny_ckpt), "--out", str(out)], env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- 12 and 14. names the OS refuses, and messages that say what is wrong ----------------------------

@pytest.mark.parametrize("name, words", [
    ("x" * 300 + ".txt", "too long a name"),
    ("a\0b.txt", "NUL byte"),
])
def test_save_with_a_name_the_os_refuses_is_one_line(tmp_path, monkeypatch, name, words):
    monkeypatch.chdir(tmp_path)
    session = ChatSession(VOCAB, 32)
    session.add_user_text("ROMEO: But soft!")
    with pytest.raises(SgptError, match=words) as exc:
        session.save(name)
    one_line(str(exc.value))
    assert len(str(exc.value)) < 300


def test_save_messages_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session = ChatSession(VOCAB, 32)
    with pytest.raises(SgptError, match="the script is empty"):
        session.save("scene.txt")
    session.add_user_text("ROMEO: But soft!")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SgptError, match=r"file\.txt is a file, not a folder"):
        session.save("file.txt/child")
    with pytest.raises(SgptError, match="names a folder; give a file name"):
        session.save("newdir/")
    assert not (tmp_path / "newdir").exists()
    with pytest.raises(SgptError, match="folder .*nonexistent/dir does not exist; create it first"):
        session.save(str(tmp_path / "nonexistent" / "dir" / "x.txt"))
    assert not (tmp_path / "nonexistent").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_piped_chat_survives_refused_save_names(tiny_onnx, tmp_path):
    long = "y" * 300
    stdin = f"ROMEO:\n/save {long}.txt\n/save newdir/\n/save ok.txt\n".encode()
    proc = subprocess.run(SGPT + ["chat", "--model", str(tiny_onnx), "--max-tokens", "5"], input=stdin,
                          capture_output=True, env=run_env(), cwd=tmp_path, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "too long a name" in err and "names a folder" in err
    assert (tmp_path / "ok.txt").read_text().startswith("ROMEO:")  # the session lived on


def test_sgpt_home_set_to_a_file_says_so(tmp_path, monkeypatch):
    from sgpt_cli.repl import _history

    blocker = tmp_path / "home-file"
    blocker.write_text("x")
    monkeypatch.setenv("SGPT_HOME", str(blocker))
    _, notice = _history(True)
    assert "$SGPT_HOME" in notice and "is a file, not a folder" in notice and "File exists" not in notice


@pytest.mark.parametrize("command", [
    ["export", "CKPT", "--out", "LONG"],
    ["train", "--preset", "tiny", "--data", "LONG"],
    ["train", "--preset", "tiny", "--data", "TEXT", "--out", "LONG"],
    ["eval", "--model", "LONG", "--data", "TEXT"],
    ["eval", "--model", "MODEL", "--data", "LONG"],
    ["complete", "--model", "LONG", "-n", "1", "x"],
    ["chat", "--model", "LONG"],
])
def test_long_names_are_one_line_errors(command, tmp_path, tiny_ckpt, tiny_onnx, text_file):
    long = str(tmp_path / ("z" * 300))
    subs = {"LONG": long, "CKPT": str(tiny_ckpt), "MODEL": str(tiny_onnx), "TEXT": str(text_file)}
    proc = subprocess.run(SGPT + [subs.get(a, a) for a in command], capture_output=True, text=True,
                          env=run_env(), cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "too long a name" in line, proc.stderr


def test_the_quantizers_temporaries_live_beside_the_output_under_our_name(tiny_onnx, tmp_path, monkeypatch):
    """ONNX Runtime's quantizer writes full model copies to tempfile's folder: that folder must be one
    of ours (cleaned as stale after kill -9), not $TMPDIR/ort.quant.*, and gone afterwards."""
    import tempfile

    import onnx
    import onnxruntime.quantization as q

    from sgpt_cli import export as exporter

    seen = []
    real = q.quantize_dynamic

    def spy(*args, **kwargs):
        seen.append(tempfile.gettempdir())
        return real(*args, **kwargs)

    monkeypatch.setattr(q, "quantize_dynamic", spy)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    dst = tmp_path / ".q.onnx.123.0123abcd.tmp"
    exporter.quantize_int8(onnx.load(str(tiny_onnx)), dst)
    assert seen == [str(dst) + ".quant"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]
