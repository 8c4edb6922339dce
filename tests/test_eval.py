"""`sgpt eval`: the loss it prints is score_ids' on the right split, in plain text or JSON, and every
bad model or text is one line on stderr with a non-zero status and no traceback."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SGPT, run_env
from sgpt_cli.term.app import app
from sgpt_cli.data import split_text
from sgpt_cli.infer.onnx_model import OnnxModel, score_ids


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, ["eval", *args], **kwargs)


def write_bad_models(folder: Path, good: Path) -> dict[str, Path]:
    """ONNX files sgpt must refuse: no sgpt metadata, a future format, a truncated file, a folder."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # ORT reads it
    onnx.save(foreign, str(folder / "foreign.onnx"))

    proto = onnx.load(str(good))
    for name, version in (("future", "99"), ("old", "1")):  # old: a file of the growing-cache format
        for entry in proto.metadata_props:
            if entry.key == "sgpt.format":
                entry.value = version
        onnx.save(proto, str(folder / f"{name}.onnx"))

    data = good.read_bytes()
    (folder / "damaged.onnx").write_bytes(data[: len(data) // 2])
    (folder / "a-folder.onnx").mkdir(exist_ok=True)
    return {name: folder / f"{name}.onnx" for name in ("foreign", "future", "old", "damaged", "a-folder")}


def expected_loss(model_path: Path, text: str) -> tuple[float, int]:
    model = OnnxModel(model_path, device="cpu")
    return score_ids(model, model.tokenizer.encode(text, drop_unknown=True))


def test_whole_file_loss_is_score_ids_loss(tiny_onnx, text_file):
    result = invoke("--model", str(tiny_onnx), "--data", str(text_file), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    loss, scored = expected_loss(tiny_onnx, text_file.read_text(encoding="utf-8"))
    assert report["split"] == "all"
    assert report["loss"] == pytest.approx(loss, rel=1e-9)
    assert report["chars_scored"] == scored
    assert report["perplexity"] == pytest.approx(math.exp(loss))
    assert report["bits_per_char"] == pytest.approx(loss / math.log(2))
    assert report["model"] == str(tiny_onnx)
    assert result.stderr == ""  # no progress bar into a pipe


@pytest.mark.parametrize("split", ["val", "train"])
def test_split_is_nanogpts_90_10(tiny_onnx, text_file, split):
    result = invoke("--model", str(tiny_onnx), "--data", str(text_file), "--split", split, "--json")
    assert result.exit_code == 0, result.output
    train, val = split_text(text_file.read_text(encoding="utf-8"))
    part = val if split == "val" else train
    report = json.loads(result.stdout)
    assert report["chars"] == len(part)
    assert report["loss"] == pytest.approx(expected_loss(tiny_onnx, part)[0], rel=1e-9)


def test_default_data_is_the_validation_split_in_one_command(tiny_onnx, text_file, tmp_path):
    """The README's check: `sgpt eval` in a checkout with data/tinyshakespeare.txt, in a real process."""
    (tmp_path / "data").mkdir()
    shutil.copy(text_file, tmp_path / "data" / "tinyshakespeare.txt")
    proc = subprocess.run([*SGPT, "eval", "--model", str(tiny_onnx)], capture_output=True, text=True,
                          env=run_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    val = split_text(text_file.read_text(encoding="utf-8"))[1]
    loss = expected_loss(tiny_onnx, val)[0]
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert lines["loss"].startswith(f"{loss:.4f} nats/char")
    assert lines["perplexity"] == f"{math.exp(loss):.3f}"
    assert "val split" in lines["data"] and "last 10%" in lines["data"]
    assert "validation loss, in the model file" in lines["recorded"]  # export stored the trainer's figure
    assert "\x1b[" not in proc.stdout


def test_same_text_is_recognised_by_its_sha256(tiny_onnx, text_file, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    same = json.loads(invoke("--model", str(tiny_onnx), "--data", str(text_file), "--json").stdout)
    differs = invoke("--model", str(tiny_onnx), "--data", str(other), "--split", "val")
    assert same["same_text"] is True
    assert differs.exit_code == 0 and "not held out" in differs.stdout


def test_unknown_characters_are_skipped_and_counted(tiny_onnx, text_file, tmp_path):
    text = text_file.read_text(encoding="utf-8")[:5000]
    odd = tmp_path / "odd.txt"
    odd.write_text(text + "\u00e9\u00e9\u2603", encoding="utf-8")
    result = invoke("--model", str(tiny_onnx), "--data", str(odd), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unknown_chars"] == 3 and report["unknown_kinds"] == ["\u00e9", "\u2603"]
    assert report["loss"] == pytest.approx(expected_loss(tiny_onnx, text)[0], rel=1e-9)
    plain = invoke("--model", str(tiny_onnx), "--data", str(odd))
    assert "skipped     3 characters the model does not know" in plain.stdout


def test_missing_default_data_is_downloaded_then_scored(tiny_onnx, text_file, tmp_path, monkeypatch, isolated_home):
    """Without the packaged copy's checksum (here: another text is asked for), it downloads, into
    $SGPT_HOME/data outside a checkout."""
    from sgpt_cli import data

    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(text_file.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/{text_file.name}")
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", data.sha256_bytes(text_file.read_bytes()))
    try:
        result = invoke("--model", str(tiny_onnx), "--json")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.exit_code == 0, result.output
    assert (isolated_home / "data" / "tinyshakespeare.txt").read_bytes() == text_file.read_bytes()
    assert not (tmp_path / "data").exists()
    assert "SHA-256 verified" in result.stderr
    report = json.loads(result.stdout)  # stdout holds the report alone
    assert report["split"] == "val" and report["loss"] == pytest.approx(expected_loss(tiny_onnx, split_text(
        text_file.read_text(encoding="utf-8"))[1])[0], rel=1e-6)


def test_missing_default_data_without_network_is_a_one_line_error(tiny_onnx, tmp_path, monkeypatch):
    """Only an install without the packaged copy can get here (sgpt ships the text)."""
    import socket

    from sgpt_cli import data

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"http://127.0.0.1:{port}/input.txt")
    monkeypatch.setattr(data, "PACKAGED_CORPUS", tmp_path / "trimmed.xz")
    result = invoke("--model", str(tiny_onnx))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()  # the notice that it is downloading, then the error
    assert len(lines) == 2 and "downloading tiny-shakespeare" in lines[0]
    assert lines[1].startswith("sgpt: error: could not download") and "--data PATH" in lines[1]
    assert not (tmp_path / "data" / "tinyshakespeare.txt").exists() and result.stdout == ""


def test_a_missing_model_is_said_before_any_download(tmp_path, monkeypatch):
    """`sgpt eval --model missing.onnx` where data/ is empty: the model error, not a download."""
    from sgpt_cli import data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/never-fetched.txt")
    result = invoke("--model", "missing.onnx")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "sgpt: error: model file missing.onnx (--model) does not exist; give an .onnx file from `sgpt export`"]
    assert not (tmp_path / "data").exists()


BAD_INPUTS = {
    "missing data": (["--data", "nope.txt"], "does not exist"),
    "data is a folder": (["--data", "folder"], "is a folder"),
    "empty data": (["--data", "empty.txt"], "is empty"),
    "non-utf8 data": (["--data", "latin1.txt"], "not UTF-8"),
    "no known characters": (["--data", "snow.txt"], "no character of snow.txt"),
    "one known character": (["--data", "one.txt"], "too short to score"),
    "bad split": (["--data", "{text}", "--split", "test"], "--split must be val, train or all"),
    "bad device": (["--data", "{text}", "--device", "tpu"], "--device must be auto, cpu or cuda"),
    "bad batch": (["--data", "{text}", "--batch-size", "0"], "--batch-size must be a whole number of 1 or more"),
    "missing model": (["--data", "{text}", "--model", "nope.onnx"], "does not exist"),
    "model is a folder": (["--data", "{text}", "--model", "{a-folder}"], "is a folder"),
    "not an sgpt model": (["--data", "{text}", "--model", "{foreign}"], "is not an sgpt model"),
    "future format": (["--data", "{text}", "--model", "{future}"], "format '99'"),
    "damaged model": (["--data", "{text}", "--model", "{damaged}"], "is not a well-formed ONNX file"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_on_stderr(name, tiny_onnx, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (tmp_path / "snow.txt").write_text("\u2603\u2603\u2603", encoding="utf-8")
    (tmp_path / "one.txt").write_text("a\u2603", encoding="utf-8")
    values = {"text": str(text_file), **{k: str(v) for k, v in write_bad_models(tmp_path / "m", tiny_onnx).items()}}
    args, needle = BAD_INPUTS[name]
    result = invoke("--model", str(tiny_onnx), *[a.format(**values) for a in args])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: "), result.output
    assert needle in lines[0]
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_eval_says_by_how_much_the_recorded_figure_differs_when_4_decimals_do_not_agree():
    """Where the measured loss and the one recorded at export round to different 4-decimal figures
    ('loss 1.4615' beside 'recorded 1.4616'), both are given to 6 decimals with the difference and
    the why: an int8 file measured at export on another CPU (AVX2) scores slightly differently, as
    ONNX Runtime's int8 products differ by CPU."""
    from sgpt_cli.term.eval import recorded_lines

    base = {"split": "val", "quantization": "int8"}
    same = recorded_lines({**base, "loss": 1.4615231, "recorded_val_loss": 1.4615400})
    assert same == ["recorded    1.4615 nats/char validation loss, in the model file"]
    apart = recorded_lines({**base, "loss": 1.4615231, "recorded_val_loss": 1.461558})
    assert "1.461558" in apart[0] and "1.461523" in apart[0] and "(-0.000035)" in apart[0]
    assert len(apart) == 2 and "between CPUs" in apart[1]
    fp32 = recorded_lines({**base, "quantization": "none", "loss": 1.4615231, "recorded_val_loss": 1.461558})
    assert len(fp32) == 1  # no int8 story for a float32 file
