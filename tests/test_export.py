"""`sgpt export`: the ONNX file matches PyTorch, its cache decodes like a full pass, it is one
self-contained file with the interface's names, axes and metadata, int8 is smaller and nearly as good,
and every bad input is one line on stderr with no file left behind.

Exports take seconds each, so the float32 file is the session's `tiny_onnx`; the int8 file, the odd
vocabulary (through the real command) and the larger model are exported once per module.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import SGPT, run_env
from sgpt_cli import export as exporter
from sgpt_cli.cli import app
from sgpt_cli.data import split_text
from sgpt_cli.errors import SgptError
from sgpt_cli.onnx_model import OnnxModel, score_ids

# every kind of character a vocabulary must carry through JSON metadata intact
ODD_LINE = 'He said "café — it’s late 😀"\\ then left.\n'


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def torch_model(ckpt: Path):
    model, _ = exporter.load_model(ckpt)
    return model


# -- parity and the cache ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_onnx_logits_match_pytorch_at_several_lengths(tiny_ckpt, tiny_onnx, batch):
    model, onnx_model = torch_model(tiny_ckpt), OnnxModel(tiny_onnx, device="cpu")
    gen = torch.Generator().manual_seed(batch)
    for T in (1, 2, 13, model.cfg.block_size):
        ids = torch.randint(0, model.cfg.vocab_size, (batch, T), generator=gen)
        with torch.no_grad():
            expected, _ = model(ids)
        got, present = onnx_model.forward(ids.numpy())
        assert got.shape == (batch, T, model.cfg.vocab_size)
        assert np.abs(got - expected.numpy()).max() <= 1e-4, (batch, T)
        assert present[0].shape == (batch, model.cfg.n_head, T, model.cfg.head_dim)


def test_kv_cache_decode_equals_one_full_pass(tiny_onnx):
    onnx_model = OnnxModel(tiny_onnx, device="cpu")
    T = onnx_model.block_size
    ids = np.random.default_rng(0).integers(0, onnx_model.tokenizer.vocab_size, (3, T))
    full, _ = onnx_model.forward(ids)
    logits, past = onnx_model.forward(ids[:, :4])  # prefill from an empty cache
    steps = [logits]
    for t in range(4, T):
        logits, past = onnx_model.forward(ids[:, t:t + 1], past)
        steps.append(logits)
    assert past[0].shape[2] == T
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-4


def test_onnx_matches_pytorch_with_a_cache_and_positions_past_the_window(tiny_ckpt, tiny_onnx):
    """Rotary positions let the runtime roll its window: positions beyond block_size must agree too."""
    model, onnx_model = torch_model(tiny_ckpt), OnnxModel(tiny_onnx, device="cpu")
    cfg = model.cfg
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (2, 3), generator=gen)
    past = [torch.randn(2, cfg.n_head, 5, cfg.head_dim, generator=gen) for _ in range(2 * cfg.n_layer)]
    pos = torch.arange(cfg.block_size + 10, cfg.block_size + 13).expand(2, 3)
    with torch.no_grad():
        expected, present = model(ids, past=list(zip(past[::2], past[1::2])), position_ids=pos)
    got, got_present = onnx_model.forward(ids.numpy(), [p.numpy() for p in past], position_ids=pos.numpy())
    assert np.abs(got - expected.numpy()).max() <= 1e-4
    assert np.abs(got_present[0] - present[0][0].numpy()).max() <= 1e-4


# -- the file ----------------------------------------------------------------------------------


def test_file_has_the_interface_names_axes_and_metadata(tiny_ckpt, tiny_onnx):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    n_layer = int({p.key: p.value for p in proto.metadata_props}["sgpt.n_layer"])

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = {vi.name: vi for vi in proto.graph.input}
    outputs = {vi.name: vi for vi in proto.graph.output}
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    assert list(inputs) == ["input_ids", "position_ids", "attention_mask", *past]
    assert dims(inputs["attention_mask"]) == ["batch", "past_sequence + sequence"]
    assert inputs["attention_mask"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    # optional: its default (an initializer of the same name) is [[1]], "every position is real"
    default = next(t for t in proto.graph.initializer if t.name == "attention_mask")
    assert list(default.dims) == [1, 1] and list(default.int64_data or np.frombuffer(default.raw_data, np.int64)) == [1]
    assert list(outputs) == ["logits", *present]
    assert dims(inputs["input_ids"]) == ["batch", "sequence"]
    assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(inputs["past_key_values.0.key"])[::2] == ["batch", "past_sequence"]
    assert dims(outputs["logits"])[:2] == ["batch", "sequence"]
    assert dims(outputs["present.0.value"])[0] == "batch"

    meta = {p.key: p.value for p in proto.metadata_props}
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    assert meta["sgpt.format"] == "1"
    assert meta["sgpt.vocab"] == ckpt["vocab"]
    cfg = ckpt["model_config"]
    assert [int(meta[f"sgpt.{k}"]) for k in ("block_size", "n_layer", "n_head", "n_embd")] == [
        cfg["block_size"], cfg["n_layer"], cfg["n_head"], cfg["n_embd"]]
    assert float(meta["sgpt.val_loss"]) == pytest.approx(ckpt["val_loss"], abs=1e-6)
    assert meta["sgpt.data_sha256"] == ckpt["data_sha256"]
    assert json.loads(meta["sgpt.train_config"]) == ckpt["train_config"]


def test_file_is_self_contained_and_carries_no_local_paths(tiny_onnx):
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(tiny_onnx), load_external_data=False)
    assert proto.graph.initializer and not any(uses_external_data(t) for t in proto.graph.initializer)
    assert files_under(tiny_onnx.parent) == {tiny_onnx.name}  # no .onnx.data, no temporary left over
    raw = tiny_onnx.read_bytes()
    assert b"stack_trace" not in raw and str(Path(exporter.__file__).parent).encode() not in raw


def test_file_runs_in_plain_onnxruntime_without_torch(tiny_onnx):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import onnxruntime as ort
        sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        L, H, C = (int(meta["sgpt." + k]) for k in ("n_layer", "n_head", "n_embd"))
        vocab = json.loads(meta["sgpt.vocab"])
        ids = np.array([[vocab.index(c) for c in "ROMEO:"]], dtype=np.int64)
        feeds = {"input_ids": ids, "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
        for i in range(L):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, H, 0, C // H), np.float32)
        logits = sess.run(["logits"], feeds)[0]
        print(json.dumps({"shape": list(logits.shape), "torch": "torch" in sys.modules,
                          "finite": bool(np.isfinite(logits).all())}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tiny_onnx)], capture_output=True, text=True,
                          env=run_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"shape": [1, 6, OnnxModel(tiny_onnx, device="cpu").tokenizer.vocab_size],
                      "torch": False, "finite": True}


# -- the command, end to end, with a vocabulary JSON could garble --------------------------------


@pytest.fixture(scope="module")
def odd_export(tmp_path_factory):
    """A tiny model trained on text with a newline, quote, backslash, é, —, ’ and 😀, exported by
    `python -m sgpt_cli export` in a subprocess."""
    from sgpt_cli import trainer
    from sgpt_cli.config import build_train_config

    folder = tmp_path_factory.mktemp("odd")
    text = "".join(f"{i % 10} {ODD_LINE}" for i in range(200))
    cfg = build_train_config("tiny", {"max_iters": 4, "eval_interval": 2, "eval_iters": 1, "sample_chars": 0})
    trainer.train(cfg, text, "0" * 64, folder / "odd.pt", device="cpu")
    out = folder / "out" / "odd.onnx"
    done = subprocess.run([*SGPT, "export", "odd.pt", "--out", "out/odd.onnx"], cwd=folder, capture_output=True,
                          text=True, env=run_env(NO_COLOR=1, SGPT_HOME=folder / "home"), timeout=600)
    return {"done": done, "text": text, "out": out, "folder": folder}


def test_cli_export_writes_the_file_reports_and_suggests_chat(odd_export):
    done, out = odd_export["done"], odd_export["out"]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "Traceback" not in done.stdout
    report = dict(line.split(None, 1) for line in done.stdout.splitlines() if line and not line.endswith("..."))
    assert report["wrote"].startswith("out/odd.onnx: ") and "opset 18" in report["wrote"]
    assert "parameters" in report["model"]
    assert "max |ONNX - PyTorch| logits" in report["verified"] and "30 decode steps" in report["verified"]
    assert report["time"].endswith(" s")
    assert report["next"] == "sgpt chat --model out/odd.onnx"
    assert files_under(out.parent) == {"odd.onnx"}


def test_metadata_round_trips_an_odd_vocabulary(odd_export):
    text = odd_export["text"]
    model = OnnxModel(odd_export["out"], device="cpu")
    assert model.tokenizer.chars == sorted(set(text))
    assert {"\n", '"', "\\", "é", "—", "’", "😀"} <= set(model.tokenizer.chars)
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text
    ckpt = torch.load(odd_export["folder"] / "odd.pt", weights_only=True)
    assert json.loads(model.meta["sgpt.train_config"]) == ckpt["train_config"]
    assert model.meta["sgpt.data_sha256"] == "0" * 64


# -- int8 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_export(tiny_ckpt, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    report = exporter.export(tiny_ckpt, out, quantize="int8", data=text_file)
    return report, out


def test_int8_is_smaller_and_loses_under_0_02_nats(int8_export, tiny_onnx, text_file):
    report, out = int8_export
    assert out.stat().st_size < 0.7 * tiny_onnx.stat().st_size
    assert report["bytes"] == out.stat().st_size and report["fp32_bytes"] == tiny_onnx.stat().st_size
    # measured again here, independently of the export's own figure
    fp32, int8 = OnnxModel(tiny_onnx, device="cpu"), OnnxModel(out, device="cpu")
    val = fp32.tokenizer.encode(split_text(text_file.read_text(encoding="utf-8"))[1], drop_unknown=True)
    loss32, loss8 = score_ids(fp32, val)[0], score_ids(int8, val)[0]
    assert loss8 - loss32 <= 0.02
    assert report["val_loss_delta"] == pytest.approx(loss8 - loss32, abs=1e-6)
    assert int8.meta["sgpt.quantization"] == "int8"
    assert float(int8.meta["sgpt.val_loss"]) == pytest.approx(loss8, abs=1e-5)


def test_int8_quantizes_every_weight_matrix(int8_export, tiny_onnx):
    import onnx

    ops = [n.op_type for n in onnx.load(str(int8_export[1])).graph.node]
    weights = exporter.weight_matmuls(onnx.load(str(tiny_onnx)))
    n_layer = OnnxModel(tiny_onnx, device="cpu").n_layer
    assert len(weights) == 4 * n_layer + 1  # qkv, proj, fc, mlp proj per block, and the head
    assert ops.count("MatMulNBits") == len(weights)
    assert exporter.weight_matmuls(onnx.load(str(int8_export[1]))) == []


def test_int8_decodes_with_the_cache_close_to_pytorch(int8_export, tiny_ckpt):
    model, int8 = torch_model(tiny_ckpt), OnnxModel(int8_export[1], device="cpu")
    T = int8.block_size
    ids = np.random.default_rng(1).integers(0, int8.tokenizer.vocab_size, (2, T))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids))[0].numpy()
    logits, past = int8.forward(ids[:, :T - 30])
    steps = [logits]
    for t in range(T - 30, T):
        logits, past = int8.forward(ids[:, t:t + 1], past)
        steps.append(logits)
    decoded = np.concatenate(steps, axis=1)
    assert np.abs(decoded - expected).max() <= exporter.INT8_TOLERANCE * np.abs(expected).max()
    assert (decoded.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_a_quantizer_that_changes_nothing_is_an_error(tiny_onnx, tmp_path, monkeypatch):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    monkeypatch.setattr(MatMulNBitsQuantizer, "process", lambda self: None)
    with pytest.raises(SgptError, match="left 9 of 9 weight matrices"):
        exporter.quantize_int8(onnx.load(str(tiny_onnx)), tmp_path / "q.onnx")


# -- larger models stay in one file ------------------------------------------------------------


def test_a_larger_model_is_one_self_contained_file_and_quantizes_fully(tmp_path):
    """Over 2 MB of weights: the exporter must not move them to a NAME.data file beside the model.
    vocab x n_embd > 8192 also makes the exporter leave the tied head as Transpose(embedding), which
    the quantizer would skip unless export folds it."""
    import dataclasses
    import shutil
    import string

    import onnx

    from sgpt_cli import checkpoint
    from sgpt_cli.config import ModelConfig
    from sgpt_cli.model import GPT
    from sgpt_cli.tokenizer import CharTokenizer

    vocab = CharTokenizer.from_text(string.ascii_letters + string.digits + " ,.;:!?'-\n")
    cfg = ModelConfig(vocab_size=vocab.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=192)
    assert cfg.vocab_size * cfg.n_embd > 8192
    torch.manual_seed(0)
    model = GPT(cfg)
    assert model.num_params() * 4 > 2_000_000
    checkpoint.save(tmp_path / "big.pt", {"model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
                                          "vocab": vocab.to_json()})
    out = tmp_path / "out" / "big.onnx"
    report = exporter.export(tmp_path / "big.pt", out)
    assert files_under(out.parent) == {"big.onnx"}
    assert out.stat().st_size >= 4 * model.num_params()
    assert report["max_abs_diff"] <= 1e-4
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "copy.onnx")  # nothing else travels with it
    got, _ = OnnxModel(alone / "copy.onnx", device="cpu").forward(np.zeros((1, 4), dtype=np.int64))
    with torch.no_grad():
        expected = model(torch.zeros((1, 4), dtype=torch.long))[0].numpy()
    assert np.abs(got - expected).max() <= 1e-4

    exporter.quantize_int8(onnx.load(str(out)), tmp_path / "big.int8.onnx")
    quantized = onnx.load(str(tmp_path / "big.int8.onnx"))
    assert exporter.weight_matmuls(quantized) == []
    assert [n.op_type for n in quantized.graph.node].count("MatMulNBits") == 4 * cfg.n_layer + 1
    assert (tmp_path / "big.int8.onnx").stat().st_size < 0.35 * out.stat().st_size


def test_a_transposed_weight_is_folded_so_the_quantizer_takes_it(tmp_path):
    """A hand-built head: logits = x @ Transpose(E), with E also the embedding table (tied)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["x"]),
         helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "Et"], ["logits"])],
        "head", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 40])],
        initializer=[numpy_helper.from_array(emb, "E")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # ORT reads it
    assert len(exporter.weight_matmuls(proto)) == 1
    exporter.quantize_int8(proto, tmp_path / "q.onnx")
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in quantized.graph.node]
    assert "MatMulNBits" in ops and "Transpose" not in ops and "MatMul" not in ops
    assert [n.op_type for n in proto.graph.node] == ["Gather", "Transpose", "MatMul"]  # caller's model untouched
    import onnxruntime as ort

    ids = np.arange(40, dtype=np.int64)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert np.abs(got - emb @ emb.T).max() <= 0.05 * np.abs(emb @ emb.T).max()


# -- failures leave nothing behind -------------------------------------------------------------


def test_a_failed_verification_leaves_no_file(tiny_ckpt, tiny_onnx, tmp_path, monkeypatch):
    """The real export is replaced by the session's file, and the model then drifts from it."""
    import onnx

    written = []

    def fake_export(model, opset):
        model.ln_f.weight.data.mul_(1.5)
        return onnx.load(str(tiny_onnx))

    real_save = exporter.save_checked

    def watched_save(proto, path):
        written.append((Path(path), out.exists()))
        real_save(proto, path)

    out = tmp_path / "out" / "model.onnx"
    monkeypatch.setattr(exporter, "torch_export", fake_export)
    monkeypatch.setattr(exporter, "save_checked", watched_save)
    with pytest.raises(SgptError, match="verification failed"):
        exporter.export(tiny_ckpt, out)
    assert written and all(path != out and not existed for path, existed in written)  # a temporary name
    assert files_under(tmp_path / "out") == set()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_export_exits_130_and_leaves_nothing(signum, tiny_ckpt, tmp_path):
    proc = subprocess.Popen([*SGPT, "export", str(tiny_ckpt), "--out", "out/x.onnx"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(NO_COLOR=1))
    for line in proc.stdout:
        if line.startswith("exporting"):
            proc.send_signal(signum)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip() == "sgpt: interrupted"
    assert files_under(tmp_path / "out") == set()


def malicious_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "sgpt-checkpoint", "version": 1, "model": Payload(), "model_config": {},
                "vocab": "[]"}, path)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    malicious_checkpoint(tmp_path / "evil.pt", marker)
    done = subprocess.run([*SGPT, "export", "evil.pt", "--out", "x.onnx"], cwd=tmp_path, capture_output=True,
                          text=True, env=run_env(NO_COLOR=1), timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: refused to load evil.pt"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
    # the payload is live: an unsafe load runs it (so the check above could have failed)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def write_bad_inputs(folder: Path, tiny_onnx: Path) -> None:
    (folder / "folder").mkdir()
    (folder / "notes.txt").write_text("ROMEO: not a checkpoint\n", encoding="utf-8")
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    torch.save({"format": "sgpt-checkpoint", "version": 99, "model": {}, "model_config": {}, "vocab": "[]"},
               folder / "future.pt")
    torch.save({"weights": torch.zeros(2)}, folder / "foreign.pt")
    (folder / "other.txt").write_text("a different text entirely\n" * 20, encoding="utf-8")


# name: (arguments, what the one line must say); {ckpt} is the tiny checkpoint
BAD_INPUTS = {
    "missing checkpoint": (["missing.pt"], "missing.pt does not exist"),
    "missing default checkpoint": ([], "models/model.pt does not exist"),
    "text file": (["notes.txt"], "is not a readable sgpt checkpoint"),
    "random bytes": (["random.pt"], "is not a readable sgpt checkpoint"),
    "onnx file": (["model.onnx"], "is not a readable sgpt checkpoint"),
    "directory": (["folder"], "is a folder"),
    "other format version": (["future.pt"], "format 99"),
    "not an sgpt checkpoint": (["foreign.pt"], "is not an sgpt checkpoint"),
    "out is a directory": (["{ckpt}", "--out", "folder"], "is a directory"),
    "out under a file": (["{ckpt}", "--out", "notes.txt/x.onnx"], "notes.txt is a file, not a folder"),
    "out in a read-only folder": (["{ckpt}", "--out", "readonly/x.onnx"], "not writable"),
    "out where nothing can be created": (["{ckpt}", "--out", "/proc/sgpt-test.onnx"], "cannot write --out /proc/sgpt-test.onnx"),
    "opset too old": (["{ckpt}", "--opset", "17"], "--opset must be a whole number from 18"),
    "opset too new": (["{ckpt}", "--opset", "26"], "--opset must be a whole number from 18"),
    "unknown quantization": (["{ckpt}", "--quantize", "int4"], "--quantize must be int8 (got 'int4')"),
    "int8 without the training text": (["{ckpt}", "--quantize", "int8"], "pass --data PATH"),
    "int8 with another text": (["{ckpt}", "--quantize", "int8", "--data", "other.txt"], "SHA-256 differs"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_on_stderr_and_no_file(name, tiny_ckpt, tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bad_inputs(tmp_path, tiny_onnx)
    if name == "out in a read-only folder":
        (tmp_path / "readonly").mkdir(mode=0o555)
        if os.access(tmp_path / "readonly", os.W_OK):
            pytest.skip("permissions do not bind this user (root); /proc stands in for it")
    if name == "out where nothing can be created" and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    before = files_under(tmp_path)
    args, needle = BAD_INPUTS[name]
    result = CliRunner().invoke(app, ["export", *[a.format(ckpt=tiny_ckpt) for a in args]])
    assert result.exit_code in (1, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: "), result.stderr
    assert needle in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert "Traceback" not in result.stdout
    assert files_under(tmp_path) == before  # no output, no temporary, no export/ folder


# -- the progress display ----------------------------------------------------------------------


DISPLAY_SCRIPT = textwrap.dedent("""
    import time
    from sgpt_cli.cli_export import stage_display
    with stage_display() as (status, progress):
        status("exporting")
        time.sleep(0.4)
        if progress:
            progress(1, 2)
            time.sleep(0.4)
    print("done")
""")


def test_stages_are_plain_lines_when_not_a_terminal():
    done = subprocess.run([sys.executable, "-c", DISPLAY_SCRIPT], capture_output=True, text=True,
                          env=run_env(), timeout=60)
    assert done.stdout == "exporting ...\ndone\n"
    assert done.stderr == ""


def test_stages_are_a_spinner_on_a_terminal():
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in run_env(TERM="xterm").items() if k != "NO_COLOR"}
    child = pexpect.spawn(sys.executable, ["-c", DISPLAY_SCRIPT], env=env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    shown = child.before
    assert "exporting (1/2 batches)" in shown and "\x1b[" in shown  # redrawn in place
    assert "exporting ..." not in shown
    assert shown.rstrip().endswith("done")


def test_int8_batched_rows_equal_single_runs_bitwise(int8_export):
    """MatMulNBits quantizes each row's activations on its own: a batched row is its single run."""
    from sgpt_cli.engine import Engine
    from sgpt_cli.settings import SamplingParams

    engine = Engine(OnnxModel(int8_export[1], device="cpu"))
    assert engine.padded
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=70, seed=i))
            for i, p in enumerate(["ROMEO:", "", "First Citizen:\nBefore we proceed any further", "K"])]
    texts = {i: "" for i in range(len(reqs))}
    for ev in engine.generate_batch(reqs, 3):
        texts[ev.index] += ev.piece
    assert [texts[i] for i in range(len(reqs))] == ["".join(engine.generate(p, s)) for p, s in reqs]
