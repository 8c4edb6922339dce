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

import numpy as np
import pytest

from conftest import SGPT, run_env
from sgpt_cli.infer.chat_session import ChatSession
from sgpt_cli.settings import SamplingParams
from sgpt_cli.errors import SgptError
from sgpt_cli.files import atomic_write_text

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
    from sgpt_cli.train import checkpoint

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
    from sgpt_cli.term.chat_input import _history

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


# --- 2, 3, 4. hostile model files ----------------------------------------------------------------------

def edited_model(tiny_onnx: Path, dest: Path, edit=None, **meta) -> Path:
    """A copy of the tiny model with metadata entries replaced (key sgpt_x for sgpt.x) and `edit`
    applied to its ModelProto."""
    import onnx

    proto = onnx.load(str(tiny_onnx))
    for entry in proto.metadata_props:
        key = entry.key.replace(".", "_")
        if key in meta:
            entry.value = str(meta[key])
    if edit is not None:
        edit(proto)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dest))
    return dest


def sgpt(*args, stdin: bytes | None = b"", cwd=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + list(args), input=stdin, capture_output=True, env=run_env(), cwd=cwd,
                          timeout=300, **kwargs)


def external(location: str):
    def edit(proto):
        from onnx import TensorProto

        tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "64")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return edit


def external_in_a_constant(location: str):
    def edit(proto):
        from onnx import TensorProto, helper

        value = helper.make_tensor("c", TensorProto.FLOAT, [16], [0.0] * 16)
        value.ClearField("float_data")
        value.data_location = TensorProto.EXTERNAL
        entry = value.external_data.add()
        entry.key, entry.value = "location", location
        proto.graph.node.insert(0, helper.make_node("Constant", [], ["hostile_constant"], value=value))
    return edit


@pytest.mark.parametrize("edit", [
    external("/etc/passwd"), external("../../x"), external("sub/../../x"), external_in_a_constant("/etc/passwd"),
], ids=["absolute", "dotdot", "dotdot-inside", "constant-node"])
def test_a_model_reading_data_from_outside_its_folder_is_refused(tiny_onnx, tmp_path, edit):
    from sgpt_cli.infer.onnx_model import OnnxModel

    path = edited_model(tiny_onnx, tmp_path / "m" / "hostile.onnx", edit)
    with pytest.raises(SgptError, match="read data from outside its folder") as exc:
        OnnxModel(path, device="cpu")
    one_line(str(exc.value))
    proc = sgpt("complete", "--model", str(path), "-n", "20", "ROMEO:")
    assert proc.returncode == 1 and proc.stdout == b"" and b"outside its folder" in proc.stderr


def test_a_symlink_in_the_folder_pointing_out_is_refused(tiny_onnx, tmp_path):
    from sgpt_cli.infer.onnx_model import OnnxModel

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").symlink_to("/etc/passwd")
    path = edited_model(tiny_onnx, tmp_path / "m" / "hostile.onnx", external("weights.bin"))
    with pytest.raises(SgptError, match="outside its folder"):
        OnnxModel(path, device="cpu")


def test_external_data_inside_the_folder_still_loads(tiny_onnx, tmp_path):
    import onnx

    from sgpt_cli.infer.onnx_model import OnnxModel

    proto = onnx.load(str(tiny_onnx))
    onnx.save_model(proto, str(tmp_path / "split.onnx"), save_as_external_data=True, location="split.data")
    from sgpt_cli.infer.onnx_file import external_locations

    assert set(external_locations(tmp_path / "split.onnx")) == {"split.data"}
    model = OnnxModel(tmp_path / "split.onnx", device="cpu")
    assert model.forward(np.zeros((1, 3), dtype=np.int64))[0].shape[-1] == model.tokenizer.vocab_size


def test_the_protobuf_walk_finds_what_onnx_finds(tiny_onnx, tmp_path):
    """The hand-written reader against the onnx library, on a model with tensors in every place."""
    from sgpt_cli.infer.onnx_file import external_locations

    assert external_locations(tiny_onnx) == []
    path = edited_model(tiny_onnx, tmp_path / "two.onnx",
                        lambda p: (external("a.bin")(p), external_in_a_constant("b/c.bin")(p)))
    assert sorted(external_locations(path)) == ["a.bin", "b/c.bin"]
    truncated = tmp_path / "cut.onnx"  # cut inside the tensors, after a "location" key
    data = path.read_bytes()
    truncated.write_bytes(data[:data.rindex(b"location") + 20])
    from sgpt_cli.infer.onnx_model import OnnxModel

    with pytest.raises(SgptError, match="not a well-formed ONNX file"):
        OnnxModel(truncated, device="cpu")


def test_a_fifo_as_model_is_refused_without_blocking(tmp_path):
    from sgpt_cli.infer.onnx_model import OnnxModel

    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(SgptError, match="not a regular file"):
        OnnxModel(tmp_path / "m.onnx", device="cpu")


BAD_METADATA = {
    "block_size 0": ({"sgpt_block_size": 0}, "sgpt.block_size 0 is not from 1 to 65536"),
    "block_size -5": ({"sgpt_block_size": -5}, "sgpt.block_size -5"),
    "block_size 1e12": ({"sgpt_block_size": 10**12}, "sgpt.block_size 1000000000000"),
    "n_head 0": ({"sgpt_n_head": 0}, "each must be at least 1"),
    "n_head 3": ({"sgpt_n_head": 3}, "sgpt.n_embd 32, sgpt.n_head 3, sgpt.n_kv_head 2: each must divide"),
    "n_embd 64": ({"sgpt_n_embd": 64}, "sgpt.n_kv_head 2 x 32 features, but the cache is 32 wide"),
    "n_kv_head 0": ({"sgpt_n_kv_head": 0}, "each must be at least 1"),
    "n_kv_head 3": ({"sgpt_n_kv_head": 3}, "each must divide the one before"),
    "n_kv_head 1": ({"sgpt_n_kv_head": 1}, "sgpt.n_kv_head 1 x 16 features, but the cache is 32 wide"),
    "n_kv_head text": ({"sgpt_n_kv_head": "two"}, "damaged sgpt metadata"),
    # a file whose cache declares its slots (block_size there, as the first format-2 files did)
    "block_size 16, slots 32": ({"sgpt_block_size": 16, "slots": 32}, "sgpt.block_size 16, but the cache holds 32 positions"),
    "n_layer 0": ({"sgpt_n_layer": 0}, "each must be at least 1"),
    "n_layer -1": ({"sgpt_n_layer": -1}, "each must be at least 1"),
    "n_layer 3": ({"sgpt_n_layer": 3}, "sgpt.n_layer 3, but the graph has 2 layers"),
    "n_layer 1": ({"sgpt_n_layer": 1}, "sgpt.n_layer 1, but the graph has 2 layers"),
    "short vocabulary": ({"sgpt_vocab": "VOCAB20"}, "20 characters in sgpt.vocab, but the logits are"),
    "huge number": ({"sgpt_n_layer": "9" * 400}, "sgpt.n_layer 999"),
}


def fixed_slots(n: int):
    def edit(proto):
        for vi in list(proto.graph.input) + list(proto.graph.output):
            if vi.name.startswith(("past_key_values.", "present.")):
                vi.type.tensor_type.shape.dim[1].dim_value = n
    return edit


def test_a_window_edited_smaller_runs_the_graph_with_that_window_only(tiny_onnx, tmp_path):
    """A graph with a slots axis runs any window up to its rotary tables' 65,536 positions, so an
    edited sgpt.block_size cannot mislead a shape: it only changes the window the engine keeps."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel

    model = OnnxModel(edited_model(tiny_onnx, tmp_path / "w16.onnx", sgpt_block_size=16), device="cpu")
    assert model.block_size == 16 and not model.slots_fixed
    events = list(Engine(model).stream("ROMEO: " * 10, SamplingParams(max_tokens=50, seed=1)))
    assert sum(len(e.text) for e in events) == 50 and events[-1].stats.prompt_chars == 16


def test_a_file_from_before_key_value_heads_runs_with_one_per_head(tiny_onnx, tmp_path):
    """sgpt.n_kv_head is absent from format-2 files written before grouped-query attention: it means n_head."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel

    def drop(proto):
        kept = [p for p in proto.metadata_props if p.key != "sgpt.n_kv_head"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)

    old = OnnxModel(edited_model(tiny_onnx, tmp_path / "old.onnx", edit=drop), device="cpu")
    assert "sgpt.n_kv_head" not in old.meta and old.n_kv_head == old.n_head == 2 and old.kv_width == 32
    params = SamplingParams(max_tokens=40, seed=3)
    same = [[e.text for e in Engine(m).stream("ROMEO:", params)] for m in (old, OnnxModel(tiny_onnx, device="cpu"))]
    assert same[0] == same[1]


@pytest.mark.parametrize("name", BAD_METADATA)
def test_metadata_that_does_not_fit_the_graph_is_refused(name, tiny_onnx, tmp_path):
    import json

    from sgpt_cli.infer.onnx_model import OnnxModel

    meta, words = dict(BAD_METADATA[name][0]), BAD_METADATA[name][1]
    if meta.get("sgpt_vocab") == "VOCAB20":
        meta = {"sgpt_vocab": json.dumps(OnnxModel(tiny_onnx, device="cpu").tokenizer.chars[:20])}
    slots = meta.pop("slots", None)
    path = edited_model(tiny_onnx, tmp_path / "bad.onnx", edit=slots and fixed_slots(slots), **meta)
    with pytest.raises(SgptError, match="re-export") as exc:
        OnnxModel(path, device="cpu")
    assert words in str(exc.value), str(exc.value)
    one_line(str(exc.value))
    assert len(str(exc.value)) < 400


@pytest.mark.parametrize("name", ["short vocabulary", "block_size 0", "n_layer 3"])
def test_eval_and_complete_refuse_edited_metadata_in_one_line(name, tiny_onnx, tmp_path, text_file):
    import json

    from sgpt_cli.infer.onnx_model import OnnxModel

    meta, words = dict(BAD_METADATA[name][0]), BAD_METADATA[name][1]
    if meta.get("sgpt_vocab") == "VOCAB20":
        meta = {"sgpt_vocab": json.dumps(OnnxModel(tiny_onnx, device="cpu").tokenizer.chars[:20])}
    slots = meta.pop("slots", None)
    path = edited_model(tiny_onnx, tmp_path / "bad.onnx", edit=slots and fixed_slots(slots), **meta)
    for proc in (sgpt("eval", "--model", str(path), "--data", str(text_file)),
                 sgpt("complete", "--model", str(path), "-n", "50", "ROMEO:")):
        err = proc.stderr.decode()
        assert proc.returncode != 0 and "Traceback" not in err and words in err
        assert len(err.strip().splitlines()) == 1


def test_eval_wraps_onnx_runtime_errors(tiny_onnx, monkeypatch):
    from sgpt_cli.infer.onnx_model import OnnxModel, score_ids

    model = OnnxModel(tiny_onnx, device="cpu")

    class Failing:
        def run(self, *a, **k):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : boom\nsecond line")

    model._prefill = Failing()  # the session scoring runs on
    with pytest.raises(SgptError, match="ONNX Runtime failed while scoring .*boom") as exc:
        score_ids(model, np.arange(10) % model.tokenizer.vocab_size)
    one_line(str(exc.value))


def escape_vocab(tiny_onnx: Path, dest: Path) -> Path:
    """The tiny model with its space and 'e' turned into ESC and BEL, its 'a' into CSI (0x9b)."""
    import json

    from sgpt_cli.infer.onnx_model import OnnxModel

    chars = OnnxModel(tiny_onnx, device="cpu").tokenizer.chars
    swap = {" ": "\x1b", "e": "\x07", "a": "\x9b"}
    return edited_model(tiny_onnx, dest, sgpt_vocab=json.dumps([swap.get(c, c) for c in chars]))


def test_no_control_sequence_reaches_the_terminal_from_complete_or_chat(tiny_onnx, tmp_path):
    path = escape_vocab(tiny_onnx, tmp_path / "esc.onnx")
    outs = [sgpt("complete", "--model", str(path), "-n", "200", "--seed", "1", "ROMEO:"),
            sgpt("complete", "--model", str(path), "-n", "200", "--seed", "1", "--json", "ROMEO:"),
            sgpt("chat", "--model", str(path), "--seed", "1", "--max-tokens", "200", "--no-one-speech",
                 stdin=b"ROMEO:\n\n\n")]
    for proc in outs:
        assert proc.returncode == 0, proc.stderr
        data = (proc.stdout + proc.stderr).decode("utf-8")
        assert not any(c in data for c in "\x1b\x07\x9b\r"), data[:200]
    text = outs[0].stdout.decode()
    assert "\u241b" in text and "\u2407" in text  # ESC and BEL shown as their control pictures
    assert "\n" in outs[2].stdout.decode()


def test_printable_keeps_text_and_pictures_controls():
    from sgpt_cli.infer.tokenizer import CharTokenizer, printable

    assert [printable(c) for c in "a\n\t é"] == list("a\n\t é")
    assert [printable(c) for c in "\x1b\x07\r\x00\x7f\x9b"] == ["\u241b", "\u2407", "\u240d", "\u2400", "\u2421", "\ufffd"]
    tok = CharTokenizer(["\x1b", "a"])
    assert tok.decode([0, 1]) == "\u241ba" and tok.encode("\x1ba").tolist() == [0, 1]


# --- 5 and 14. checkpoints that claim too much, or hold NaN ------------------------------------------

def edited_checkpoint(tiny_ckpt: Path, dest: Path, config=None, weights=None) -> Path:
    import torch

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model_config"] = {**ckpt["model_config"], **(config or {})}
    for key, edit in (weights or {}).items():
        edit(ckpt["model"][key])
    torch.save(ckpt, dest)
    return dest


def test_a_checkpoint_claiming_a_huge_model_is_refused_without_allocating_it(tiny_ckpt, tmp_path):
    """A small file whose model_config claims n_embd 4096 (3.4 GB of weights) is refused from the
    shapes alone: the export process stays far below the size it claims."""
    path = edited_checkpoint(tiny_ckpt, tmp_path / "claims.pt", {"n_embd": 4096})
    assert path.stat().st_size < 1_000_000
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")
    proc = subprocess.run([sys.executable, "-c", measure, *SGPT, "export", str(path), "--out", str(tmp_path / "x.onnx")],
                          env=run_env(), capture_output=True, text=True, timeout=300)
    peak_kb, status = map(int, proc.stdout.split())
    assert status == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "the config implies" in line and "Traceback" not in proc.stderr
    assert peak_kb < 1_000_000  # torch alone is ~400 MB; the claimed 2 x 4096 model is 1.6 GB
    assert not (tmp_path / "x.onnx").exists()


def test_huge_config_check_allocates_nothing(tiny_ckpt, tmp_path):
    import resource

    from sgpt_cli.train import onnx_export as exporter

    path = edited_checkpoint(tiny_ckpt, tmp_path / "claims.pt", {"n_embd": 4096})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SgptError, match="the config implies .* of shape"):
        exporter.load_model(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 500_000  # the claimed model is 4e8 parameters, 1.6 GB in float32


def test_a_checkpoint_with_nan_weights_says_the_weights_are_not_finite(tiny_ckpt, tmp_path):
    import torch

    path = edited_checkpoint(tiny_ckpt, tmp_path / "nan.pt", weights={"wte.weight": lambda t: t.__setitem__((0, 0), float("nan"))})
    proc = sgpt("export", str(path), "--out", str(tmp_path / "x.onnx"))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "weights that are not finite (NaN or infinity in wte.weight)" in err and "--opset" not in err
    del torch


# --- 8. unusable stdout, stderr, stdin ----------------------------------------------------------------

def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`command` in bash, with $SGPT the sgpt of this checkout (redirections like >&- need a shell)."""
    sgpt_cmd = " ".join(f"'{a}'" for a in SGPT)
    return subprocess.run(["bash", "-c", command.replace("$SGPT", sgpt_cmd)], capture_output=True, text=True,
                          env=run_env(), cwd=cwd, timeout=300)


FULL = Path("/dev/full")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [
    "printf 'ROMEO:' | $SGPT complete --model MODEL -n 20 > /dev/full",
    "$SGPT eval --model MODEL --data TEXT > /dev/full",
    "printf 'ROMEO:\\n' | $SGPT chat --model MODEL --max-tokens 10 > /dev/full",
    "$SGPT export CKPT --out out.onnx > /dev/full",
    "$SGPT --help > /dev/full",
], ids=["complete", "eval", "chat", "export", "help"])
def test_a_full_stdout_is_one_line_and_exit_1(command, tmp_path, tiny_onnx, tiny_ckpt, text_file):
    proc = shell(command.replace("MODEL", str(tiny_onnx)).replace("TEXT", str(text_file))
                 .replace("CKPT", str(tiny_ckpt)), tmp_path)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "sgpt: error: cannot write to stdout: No space left on device"
    if "export" in command:  # the export's output is the file: it is written all the same
        assert (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("command, status, words", [
    ("$SGPT chat --model MODEL <&-", 0, None),
    ("$SGPT chat --model MODEL >&-", 1, "stdout is closed (>&-): `sgpt chat` writes its result there"),
    ("$SGPT eval --model MODEL --data TEXT >&-", 1, "stdout is closed"),
    ("$SGPT complete --model MODEL -n 5 ROMEO: >&-", 1, "stdout is closed"),
    ("$SGPT export CKPT --out out.onnx >&-", 0, None),
], ids=["chat-stdin", "chat-stdout", "eval-stdout", "complete-stdout", "export-stdout"])
def test_closed_streams_degrade_quietly(command, status, words, tmp_path, tiny_onnx, tiny_ckpt, text_file):
    proc = shell(command.replace("MODEL", str(tiny_onnx)).replace("TEXT", str(text_file))
                 .replace("CKPT", str(tiny_ckpt)), tmp_path)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert proc.returncode == status, proc.stderr
    if words:
        assert words in proc.stderr.strip().splitlines()[-1]
    if "export" in command:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no descriptor-1 mix-up


@pytest.mark.parametrize("redirect", ["2>&-"] + (["2>/dev/full"] if FULL.exists() else []))
def test_complete_with_no_stderr_still_writes_its_output(redirect, tmp_path, tiny_onnx):
    proc = shell(f"$SGPT complete --model {tiny_onnx} -n 20 --seed 1 'ROMEO: 中' {redirect}", tmp_path)
    assert proc.returncode == 0 and len(proc.stdout) == 20


# --- 6. unbounded reads --------------------------------------------------------------------------------

MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[2:], stdin=open(sys.argv[1], 'rb'), "
           "stdout=subprocess.PIPE, stderr=subprocess.PIPE); sys.stderr.buffer.write(r.stderr); "
           "sys.stdout.buffer.write(r.stdout[:1000]); "
           "print(); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, len(r.stdout))")


def test_complete_streams_a_large_stdin_keeping_only_the_window(tiny_onnx, tmp_path, text_file):
    """30 MB on stdin: complete keeps the window's tail, not the text (before: ~460 MB peak RSS)."""
    big = tmp_path / "big.txt"
    chunk = text_file.read_bytes() + "中\r\n".encode()
    with open(big, "wb") as f:
        for _ in range(30_000_000 // len(chunk) + 1):
            f.write(chunk)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(big), *SGPT, "complete", "--model", str(tiny_onnx),
                           "-n", "20", "--seed", "1"], capture_output=True, env=run_env(), timeout=600)
    peak_kb, status, n = map(int, proc.stdout.decode().split()[-3:])
    assert status == 0 and n == 20, proc.stderr
    assert proc.stderr.decode().count("dropped characters the model does not know: '中'") == 1
    assert peak_kb < 250_000


def test_the_streamed_prompt_is_the_whole_prompt(tiny_onnx):
    import io

    from sgpt_cli.infer.prompt import PROMPT_CHUNK, StreamedPrompt, read_for_model

    # a BOM, a line break and a two-byte character split across chunk boundaries
    raw = "\ufeffROMEO:".encode() + b"x" * (PROMPT_CHUNK - 10) + "ab\r".encode() + b"\n" + "é".encode() * PROMPT_CHUNK
    stream = io.BytesIO(raw)
    stream.isatty = lambda: False
    pieces = list(StreamedPrompt(stream, "JULIET:").pieces())
    assert len(pieces) > 2
    whole = "".join(pieces)
    assert whole == raw.decode("utf-8")[1:] + " JULIET:"  # the BOM dropped; a space before the argument
    echo = io.StringIO()
    stoi = {c: i for i, c in enumerate("\nROMEOJULIETabx:é ")}
    read = read_for_model(pieces, stoi, window=8, echo=echo)
    assert echo.getvalue() == whole and read.chars == len(whole) and read.last == ":"
    assert read.fed == ("é" * 8 + " JULIET:")[-16:] and read.unknown == []  # '\r\n' made '\n', no warning
    read = read_for_model(["ab\r", "q\nZ"], {c: 0 for c in "ab\n"}, window=4)
    assert read.unknown == ["\r", "q", "Z"] and read.fed == "ab\n"


def test_echo_streams_the_prompt_through(tiny_onnx, tmp_path):
    text = ("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 20000).encode()
    proc = subprocess.run(SGPT + ["complete", "--model", str(tiny_onnx), "-n", "10", "--echo", "--seed", "1"],
                          input=text, capture_output=True, env=run_env(), timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith(text) and len(proc.stdout) == len(text) + 10


def test_an_endless_corpus_is_refused_at_the_limit(monkeypatch):
    from sgpt_cli import data

    monkeypatch.setattr(data, "MAX_CORPUS_BYTES", 1 << 20)
    with pytest.raises(SgptError, match="larger than sgpt's limit of 1 MB") as exc:
        data.read_text(Path("/dev/zero"))
    one_line(str(exc.value))


def test_train_on_dev_zero_ends_with_one_line(tmp_path):
    proc = sgpt("train", "--preset", "tiny", "--data", "/dev/zero", "--out", str(tmp_path / "m.pt"), cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "larger than sgpt's limit" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_train_force_onto_a_fifo_is_refused_before_training(tmp_path, text_file):
    fifo = tmp_path / "m.pt"
    os.mkfifo(fifo)
    proc = sgpt("train", "--preset", "tiny", "--data", str(text_file), "--out", str(fifo), "--force",
                "--max-iters", "2", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "is a FIFO (named pipe), not a regular file" in err.strip().splitlines()[-1]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
def test_training_into_a_full_stdout_still_writes_its_checkpoint(tmp_path, text_file):
    proc = shell(f"$SGPT train --preset tiny --data {text_file} --out m.pt --max-iters 5 --eval-interval 5 "
                 "> /dev/full", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "sgpt: error: cannot write to stdout: No space left on device"
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.last.pt").exists()


def test_export_into_a_pipe_that_closes_still_writes_the_file(tmp_path, tiny_ckpt):
    proc = shell(f"$SGPT export {tiny_ckpt} --out m.onnx | head -c 1 > /dev/null; exit ${{PIPESTATUS[0]}}", tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
