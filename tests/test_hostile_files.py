"""What cannot be a model is refused in bounded work before it is read
whole; a file of another known kind (a PyTorch checkpoint) is named as such with the command that
makes a model of it; /save's message names the file, not the command; SIGHUP ends a command as
SIGTERM does (temporaries removed, exit 130)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import SGPT, run_env
from sgpt_cli.infer import onnx_file
from sgpt_cli.errors import SgptError
from sgpt_cli.infer.onnx_file import MalformedModel, Refused, check_structure
from sgpt_cli.infer.onnx_model import check_file


def sgpt(*args, cwd=None, stdin=b"") -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + list(args), input=stdin, capture_output=True, env=run_env(NO_COLOR="1"), cwd=cwd,
                          timeout=300)


class Counted(onnx_file._Budget):
    """A walk's budget that remembers how many fields were read."""

    made: list["Counted"] = []

    def __init__(self, fields=None):
        super().__init__(fields)
        Counted.made.append(self)

    @property
    def read(self) -> int:
        return self.limit - self.left


@pytest.fixture
def counted(monkeypatch):
    Counted.made = []
    monkeypatch.setattr(onnx_file, "_Budget", Counted)
    return Counted.made


# --- 10. refusals in bounded work ------------------------------------------------------------------

def test_zeros_with_location_at_the_end_are_refused_at_the_first_field(tmp_path, counted):
    path = tmp_path / "zeros.onnx"
    path.write_bytes(bytes(20_000_000) + b"location")
    with pytest.raises(MalformedModel, match="field number 0"):
        check_structure(path)
    assert sum(b.read for b in counted) == 1  # not 10 million fields


def test_a_flood_of_tiny_fields_is_refused_at_the_field_budget(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(onnx_file, "MAX_FIELDS", 5_000)
    path = tmp_path / "flood.onnx"
    path.write_bytes(bytes([0x98, 0x06, 0x00]) * 100_000)  # field 99 (unknown, allowed), value 0, again and again
    with pytest.raises(MalformedModel, match="more than 5,000 protobuf fields"):
        check_structure(path)
    assert sum(b.read for b in counted) == 5_001


def test_the_field_budget_is_far_above_what_a_real_model_uses(tiny_onnx, counted):
    assert check_structure(tiny_onnx) == []
    assert sum(b.read for b in counted) * 20 < onnx_file.MAX_FIELDS


def test_a_file_larger_than_protobuf_allows_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used, nothing to read
    with pytest.raises(SgptError, match=r"refused .*3\.0 GiB, more than one protobuf file can hold"):
        check_file(path)


def test_a_sparse_file_with_a_plausible_header_is_refused_at_its_first_empty_field(tmp_path, counted):
    """A graph field claiming 1.5 GiB of zeros: the walk stops inside it at once, touching a page,
    not mapping 1.5 GiB into memory."""
    path = tmp_path / "sparse.onnx"
    n = 3 << 29
    header = bytes([0x3A]) + bytes([(n >> (7 * i) & 0x7F) | (0x80 if i < 4 else 0) for i in range(5)])
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)
    with pytest.raises(MalformedModel, match="field number 0"):
        check_structure(path)
    assert sum(b.read for b in counted) == 2


def test_a_command_refuses_a_zero_filled_model_in_one_line(tmp_path):
    path = tmp_path / "zeros.onnx"
    path.write_bytes(bytes(20_000_000) + b"location")
    done = sgpt("complete", "--model", str(path), "hi")
    err = done.stderr.decode()
    assert done.returncode == 1 and len(err.strip().splitlines()) == 1 and "not a well-formed ONNX file" in err, err


# --- 12. messages that help ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [["complete", "--model", "{pt}", "x"], ["eval", "--model", "{pt}", "--data", "{data}"],
                                     ["chat", "--model", "{pt}"]], ids=["complete", "eval", "chat"])
def test_a_pytorch_checkpoint_given_as_the_model_says_how_to_export_it(command, tiny_ckpt, tmp_path, text_file):
    done = sgpt(*[a.format(pt=tiny_ckpt, data=text_file) for a in command], cwd=tmp_path)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "PyTorch checkpoint" in lines[0] and f"sgpt export {tiny_ckpt}" in lines[0]
    assert "INVALID_PROTOBUF" not in lines[0]


def test_the_shipped_checkpoint_as_model_says_so(tmp_path):
    shipped = Path(__file__).resolve().parents[1] / "models" / "shakespeare.pt"
    if not shipped.exists():
        pytest.skip("no shipped checkpoint in this checkout")
    with pytest.raises(Refused, match="PyTorch checkpoint"):
        check_structure(shipped)


def test_a_pickle_checkpoint_is_named_too(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(SgptError, match="PyTorch checkpoint \\(a pickle\\)"):
        check_file(path)


def test_save_failures_name_the_file_not_the_command(tmp_path, monkeypatch):
    from sgpt_cli.infer.chat_session import ChatSession

    monkeypatch.chdir(tmp_path)
    session = ChatSession(sorted(set("ROMEO: But soft!")), 32)
    session.add_user_text("ROMEO: But soft!")
    for target in ["/nonexist/x.txt", str(tmp_path / "missing" / "y.txt")]:
        with pytest.raises(SgptError) as exc:
            session.save(target)
        message = str(exc.value)
        assert f"cannot write file {target}" in message and "/save" not in message, message
    (tmp_path / "dir").mkdir()
    with pytest.raises(SgptError) as exc:
        session.save("dir")
    assert "/save dir" not in str(exc.value) and "dir is a directory" in str(exc.value)


# --- 11. SIGHUP is SIGTERM ----------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_end_signals_unwind_as_ctrl_c(signum):
    from sgpt_cli.term.common import END_SIGNALS, terminate_as_interrupt

    assert signum in END_SIGNALS
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
            for _ in range(1000):
                pass
    assert signal.getsignal(signum) == before


def test_sighup_during_export_exits_130_and_leaves_no_temporary(tiny_ckpt, tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.Popen([*SGPT, "export", str(tiny_ckpt), "--out", "out/q.onnx"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(NO_COLOR="1"))
    for line in proc.stdout:
        if line.startswith("writing the decoder graph"):
            proc.send_signal(signal.SIGHUP)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "sgpt: interrupted"
    left = [p.name for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert left == [], left
