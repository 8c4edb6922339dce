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
from sgpt_cli.train import onnx_export as exporter
from sgpt_cli.term.app import app
from sgpt_cli.data import split_text
from sgpt_cli.errors import SgptError
from sgpt_cli.infer.onnx_model import OnnxModel, score_ids

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
        assert present[0].shape == (batch, model.cfg.block_size, model.cfg.n_embd)  # the fixed ring


def test_prefill_then_steps_equal_one_full_pass(tiny_onnx):
    onnx_model = OnnxModel(tiny_onnx, device="cpu")
    T = onnx_model.block_size
    ids = np.random.default_rng(0).integers(0, onnx_model.tokenizer.vocab_size, (3, T))
    full, _ = onnx_model.forward(ids)
    logits, past = onnx_model.forward(ids[:, :4])  # prefill into empty rows
    steps = [logits]
    for t in range(4, T):
        logits, past = onnx_model.forward(ids[:, t:t + 1], past, np.full((3, 1), t))
        steps.append(logits)
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-4


def test_the_window_rolls_as_pytorchs_cache_that_drops_its_oldest_entry(tiny_ckpt, tiny_onnx):
    """Past block_size the ring overwrites its oldest slot: the logits are PyTorch's with a cache of
    block_size - 1 entries plus the new one, at absolute positions."""
    model, onnx_model = torch_model(tiny_ckpt), OnnxModel(tiny_onnx, device="cpu")
    W = model.cfg.block_size
    ids = torch.randint(0, model.cfg.vocab_size, (3 * W,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = exporter.rolling_reference(model, ids, 5)
    logits, past = onnx_model.forward(ids[None, :5].numpy())
    got = [logits[0, -1]]
    for t in range(5, len(ids)):
        logits, past = onnx_model.forward(ids[None, t:t + 1].numpy(), past, np.array([[t]]))
        got.append(logits[0, -1])
    assert np.abs(np.stack(got) - expected).max() <= 1e-4


def test_rows_at_different_positions_share_a_step(tiny_ckpt, tiny_onnx):
    """No padding: each row of one call feeds its own position; each equals its own run alone."""
    onnx_model = OnnxModel(tiny_onnx, device="cpu")
    W = onnx_model.block_size
    rng = np.random.default_rng(3)
    lengths = [1, W // 2, W]
    rows = [rng.integers(0, onnx_model.tokenizer.vocab_size, n + 1) for n in lengths]
    pasts = [onnx_model.forward(r[None, :-1])[1] for r in rows]
    together = [np.concatenate([p[i] for p in pasts]) for i in range(len(pasts[0]))]
    logits, _ = onnx_model.forward(np.array([[r[-1]] for r in rows]), together, np.array([[n] for n in lengths]))
    for b, (r, n, past) in enumerate(zip(rows, lengths, pasts)):
        alone, _ = onnx_model.forward(r[None, -1:], past, np.array([[n]]))
        assert np.array_equal(alone[0], logits[b])


def test_export_uses_only_standard_onnx_operators(tiny_onnx, int8_export):
    import onnx

    for path in (tiny_onnx, int8_export[1]):
        proto = onnx.load(str(path))
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", 24)]
        assert {n.domain for n in proto.graph.node} == {""}


def reference_and_runtime_losses(path: Path, text: str, windows: int = 4) -> tuple[float, float, float]:
    """(loss under onnx's ReferenceEvaluator, loss under ONNX Runtime, max |logit difference|) on
    `windows` windows of block_size characters of `text`."""
    from onnx.reference import ReferenceEvaluator

    model = OnnxModel(path, device="cpu")
    W = model.block_size
    ids = model.tokenizer.encode(text, drop_unknown=True)[:windows * W + 1]
    x = np.stack([ids[k * W:(k + 1) * W] for k in range(windows)])
    y = np.stack([ids[k * W + 1:(k + 1) * W + 1] for k in range(windows)])
    feed = {"input_ids": x, "position_ids": np.broadcast_to(np.arange(W), x.shape).copy()}
    feed.update(zip([f"past_key_values.{i}.{kv}" for i in range(model.n_layer) for kv in ("key", "value")],
                    model.empty_cache(windows)))
    ref = ReferenceEvaluator(str(path)).run(["logits"], feed)[0]
    ort_logits = model.forward(x)[0]

    def loss(logits):
        z = logits.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return float(-np.take_along_axis(logp, y[..., None], -1).mean())

    return loss(ref), loss(ort_logits), float(np.abs(ref - ort_logits).max())


def test_the_onnx_reference_evaluator_agrees_with_onnx_runtime(tiny_onnx, int8_export, text_file):
    """The files are plain ONNX: onnx's own reference implementation runs them. float32: the same
    logits; int8 (ONNX Runtime fuses DequantizeLinear + MatMul into a kernel with int8 activations):
    the same loss."""
    text = text_file.read_text(encoding="utf-8")
    _, _, diff = reference_and_runtime_losses(tiny_onnx, text)
    assert diff <= 1e-4
    ref, ort_loss, _ = reference_and_runtime_losses(int8_export[1], text)
    assert abs(ref - ort_loss) <= 0.01


def test_the_shipped_file_runs_in_the_onnx_reference_evaluator(text_file):
    shipped = Path(__file__).resolve().parents[1] / "models" / "shakespeare.onnx"
    ref, ort_loss, _ = reference_and_runtime_losses(shipped, text_file.read_text(encoding="utf-8"), windows=2)
    assert abs(ref - ort_loss) <= 0.01 and ref < 2.5  # the play is Shakespeare-like: a real model scores it well


# -- grouped-query attention -------------------------------------------------------------------


def test_grouped_query_attention_keeps_one_key_value_head_per_group(wide_onnx, text_file):
    """wide_onnx has 4 query heads over 2 key/value heads: the file says so, its cache is half as wide,
    it matches PyTorch through prefill, steps and the rolling window with batched rows bitwise alone,
    and onnx's reference evaluator groups the heads as ONNX Runtime does."""
    import onnx

    from sgpt_cli.train.onnx_export import load_model, verify

    proto = onnx.load(str(wide_onnx))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["sgpt.n_head"], meta["sgpt.n_kv_head"], meta["sgpt.n_embd"]) == ("4", "2", "32")
    caches = [vi for vi in proto.graph.input if vi.name.startswith("past_key_values.")]
    assert {vi.type.tensor_type.shape.dim[2].dim_value for vi in caches} == {16}  # 2 heads x 8
    assert {a.i for n in proto.graph.node if n.op_type == "Attention" for a in n.attribute
            if a.name == "kv_num_heads"} == {2}
    model, _ = load_model(wide_onnx.with_suffix(".pt"))
    report = verify(model, wide_onnx)
    assert report["max_abs_diff"] <= 1e-4 and report["batch_bitwise"]
    _, _, diff = reference_and_runtime_losses(wide_onnx, text_file.read_text(encoding="utf-8"), windows=2)
    assert diff <= 1e-4


def test_grouped_query_attention_in_pytorch_is_multi_head_with_each_key_value_head_repeated():
    """The grouping the ONNX graph relies on: query head h reads key/value head h // (n_head / n_kv_head).
    A 4-head model whose k and v weights repeat 2 heads [0, 0, 1, 1] gives the grouped model's logits,
    trained path and cached path alike."""
    import torch

    from sgpt_cli.config import ModelConfig
    from sgpt_cli.train.model import GPT

    torch.manual_seed(0)
    grouped = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=4, n_embd=32, n_kv_head=2))
    plain = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=4, n_embd=32))
    state = grouped.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.qkv.weight"]  # (32 + 2 * 16, 32): q | k | v
        q, k, v = w.split((32, 16, 16))
        heads = lambda t: t.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat((q, heads(k), heads(v)))
    plain.load_state_dict(state)
    grouped.eval(), plain.eval()
    ids = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(grouped(ids)[0], plain(ids)[0], rtol=0, atol=1e-5)
        logits, past = grouped(ids[:, :5], past=grouped.empty_cache(2))
        assert past[0][0].shape == (2, 2, 5, 8)  # (B, n_kv_head, T, hs)
        step, _ = grouped(ids[:, 5:], past=past)
        torch.testing.assert_close(torch.cat((logits, step), 1), plain(ids)[0], rtol=0, atol=1e-5)


# -- the file ----------------------------------------------------------------------------------


def test_file_has_the_interface_names_axes_and_metadata(tiny_ckpt, tiny_onnx):
    import onnx

    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    n_layer, W, C = (int(meta[f"sgpt.{k}"]) for k in ("n_layer", "block_size", "n_embd"))

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = {vi.name: vi for vi in proto.graph.input}
    outputs = {vi.name: vi for vi in proto.graph.output}
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    assert list(inputs) == ["input_ids", "position_ids", *past]
    assert list(outputs) == ["logits", *present]
    assert dims(inputs["input_ids"]) == dims(inputs["position_ids"]) == ["batch", "sequence"]
    assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(inputs["past_key_values.0.key"]) == dims(outputs["present.1.value"]) == ["batch", "slots", C]
    assert dims(outputs["logits"])[:2] == ["batch", "sequence"]

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    assert meta["sgpt.format"] == "2"
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
        L, W, C = (int(meta["sgpt." + k]) for k in ("n_layer", "block_size", "n_embd"))
        vocab = json.loads(meta["sgpt.vocab"])
        ids = np.array([[vocab.index(c) for c in "ROMEO:"]], dtype=np.int64)
        feeds = {"input_ids": ids, "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
        for i in range(L):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, W, C), np.float32)
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
    from sgpt_cli.train import trainer
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
    assert report["wrote"].startswith("out/odd.onnx: ") and "opset 24" in report["wrote"]
    assert "parameters" in report["model"]
    assert "max |ONNX - PyTorch| logits" in report["verified"] and "the window rolling" in report["verified"]
    assert "batched rows bitwise alone" in report["verified"]
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

    fp32 = onnx.load(str(tiny_onnx))
    int8 = onnx.load(str(int8_export[1]))
    n_layer = OnnxModel(tiny_onnx, device="cpu").n_layer
    weights = 4 * n_layer + 1  # qkv, proj, fc, mlp proj per block, and the head
    assert sum(n.op_type == "MatMul" and n.input[1] in {t.name for t in fp32.graph.initializer}
               for n in fp32.graph.node) == weights
    dq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == weights and int8_export[0]["int8_matrices"] == weights
    int8_names = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert all(n.input[0] in int8_names for n in dq)
    matmul_weights = {n.input[1] for n in int8.graph.node if n.op_type == "MatMul"}
    assert not matmul_weights & {t.name for t in int8.graph.initializer}  # no float weight matrix is left


def test_int8_decodes_with_the_cache_close_to_pytorch(int8_export, tiny_ckpt):
    model, int8 = torch_model(tiny_ckpt), OnnxModel(int8_export[1], device="cpu")
    T = int8.block_size
    ids = np.random.default_rng(1).integers(0, int8.tokenizer.vocab_size, (2, T))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids))[0].numpy()
    logits, past = int8.forward(ids[:, :T - 30])
    steps = [logits]
    for t in range(T - 30, T):
        logits, past = int8.forward(ids[:, t:t + 1], past, np.full((2, 1), t))
        steps.append(logits)
    decoded = np.concatenate(steps, axis=1)
    assert np.abs(decoded - expected).max() <= exporter.INT8_TOLERANCE * np.abs(expected).max()
    assert (decoded.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


# -- larger models stay in one file ------------------------------------------------------------


def test_a_larger_model_is_one_self_contained_file(tmp_path):
    """Over 2 MB of weights: the file must not move them to a NAME.data file beside it."""
    import dataclasses
    import shutil
    import string

    from sgpt_cli.train import checkpoint
    from sgpt_cli.config import ModelConfig
    from sgpt_cli.train.model import GPT
    from sgpt_cli.infer.tokenizer import CharTokenizer

    vocab = CharTokenizer.from_text(string.ascii_letters + string.digits + " ,.;:!?'-\n")
    cfg = ModelConfig(vocab_size=vocab.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=192)
    torch.manual_seed(0)
    model = GPT(cfg)
    assert model.num_params() * 4 > 2_000_000
    checkpoint.save(tmp_path / "big.pt", {"model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
                                          "vocab": vocab.to_json()})
    out = tmp_path / "out" / "big.onnx"
    report = exporter.export(tmp_path / "big.pt", out)
    assert files_under(out.parent) == {"big.onnx"}
    assert out.stat().st_size >= 4 * model.num_params()
    assert report["max_abs_diff"] <= 1e-4 and report["batch_bitwise"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "copy.onnx")  # nothing else travels with it
    got, _ = OnnxModel(alone / "copy.onnx", device="cpu").forward(np.zeros((1, 4), dtype=np.int64))
    with torch.no_grad():
        expected = model(torch.zeros((1, 4), dtype=torch.long))[0].numpy()
    assert np.abs(got - expected).max() <= 1e-4


# -- failures leave nothing behind -------------------------------------------------------------


def test_a_failed_verification_leaves_no_file(tiny_ckpt, tiny_onnx, tmp_path, monkeypatch):
    """The real export is replaced by the session's file, and the model then drifts from it."""
    import onnx

    written = []

    real_build = exporter.onnx_graph.build

    def drifting_build(weights, cfg, int8=False):
        proto = real_build(weights, cfg, int8)
        for t in proto.graph.initializer:  # the file's final norm drifts from the model's
            if t.name == "ln_f":
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 1.5, "ln_f"))
        return proto

    real_save = exporter.save_checked

    def watched_save(proto, path):
        written.append((Path(path), out.exists()))
        real_save(proto, path)

    out = tmp_path / "out" / "model.onnx"
    monkeypatch.setattr(exporter.onnx_graph, "build", drifting_build)
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
        if line.startswith("writing the decoder graph"):
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
    from sgpt_cli.term.export import stage_display
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
    """DequantizeLinear + MatMul (fused by ONNX Runtime) gives a row the same bits in any batch."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.settings import SamplingParams

    assert int8_export[0]["int8_batch_bitwise"]
    engine = Engine(OnnxModel(int8_export[1], device="cpu"))
    reqs = [(p, SamplingParams(temperature=0.8, max_tokens=70, seed=i))
            for i, p in enumerate(["ROMEO:", "", "First Citizen:\nBefore we proceed any further", "K"])]
    texts = {i: "" for i in range(len(reqs))}
    for ev in engine.generate_batch(reqs, 3):
        texts[ev.request] += ev.text
    alone = ["".join(e.text for e in engine.stream(p, s)) for p, s in reqs]
    assert [texts[i] for i in range(len(reqs))] == alone


def test_int8_prefills_run_in_float32_on_their_own_session_with_the_same_bits_on_any_threads(int8_export):
    """An int8 file's prefills and plain passes run on a session of their own that computes in float32
    from the dequantized weights (no int8 kernel left in it: ONNX Runtime folded DequantizeLinear), on
    PREFILL_THREADS threads; one-character steps keep the int8 kernel. A prefill gives the same bits on
    one thread or two, and every prefill goes through that session, alone or beside other rows."""
    import numpy as np
    import onnxruntime as ort

    from sgpt_cli.infer.engine import HostCache
    from sgpt_cli.infer.onnx_model import PREFILL_THREADS, session_options

    model = OnnxModel(int8_export[1], device="cpu")
    assert model.prefill_session is not model.session
    assert model.prefill_session.get_session_options().intra_op_num_threads == PREFILL_THREADS
    assert model.prefill_session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    so = session_options(1, float_matmuls=True)
    so.optimized_model_filepath = str(int8_export[1].with_name("folded.onnx"))
    ort.InferenceSession(str(int8_export[1]), so, providers=["CPUExecutionProvider"])
    folded = {n.op_type for n in __import__("onnx").load(so.optimized_model_filepath).graph.node}
    assert "MatMulNBits" not in folded and "DequantizeLinear" not in folded and "MatMul" in folded
    one = OnnxModel(int8_export[1], device="cpu", threads=1)  # its prefill session has one thread
    assert one.prefill_session.get_session_options().intra_op_num_threads == 1
    rng = np.random.default_rng(5)
    for T in (1, 7, 32):
        ids = rng.integers(0, model.vocab_size, T)
        caches = [HostCache(m, 2) for m in (model, one)]
        logits = [c.prefill(1, ids) for c in caches]
        assert np.array_equal(*logits)
        assert all(np.array_equal(a[1, :T], b[1, :T]) for a, b in zip(caches[0].buffers, caches[1].buffers))


# -- the architecture options (sgpt train --mlp, --no-tied-head, --qk-norm, --logit-cap) ----------------

VARIANTS = {
    "relu2": (dict(mlp="relu2"), {"Relu"}),
    "untied head": (dict(tied_head=False), set()),
    "qk-norm": (dict(qk_norm=True), {"RMSNormalization"}),
    "logit cap": (dict(logit_cap=3.0), {"Tanh"}),
    "all at once, grouped": (dict(mlp="relu2", tied_head=False, qk_norm=True, logit_cap=3.0, n_kv_head=1),
                             {"Relu", "RMSNormalization", "Tanh"}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_architecture_option_exports_matching_pytorch_with_batched_rows_bitwise(name, tmp_path, text_file):
    """Random weights large enough that each option changes the logits (the head's too, when untied;
    logits scaled up so the cap of 3 bites): the file has the option's operators, standard ONNX only,
    matches PyTorch through prefill, steps and the rolling window with batched rows bitwise alone, and
    the reference evaluator agrees with ONNX Runtime."""
    import dataclasses

    import onnx

    from sgpt_cli.config import ModelConfig, TrainConfig
    from sgpt_cli.infer.tokenizer import CharTokenizer
    from sgpt_cli.train import checkpoint
    from sgpt_cli.train.onnx_export import export, load_model, verify
    from sgpt_cli.train.model import GPT

    options, ops = VARIANTS[name]
    torch.manual_seed(1)
    chars = sorted(set(text_file.read_text(encoding="utf-8")))
    cfg = ModelConfig(vocab_size=len(chars), block_size=40, n_layer=2, n_head=2, n_embd=32, **options)
    model = GPT(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)  # an untied head starts at zero: give it something to show
    plain = GPT(ModelConfig(**{**dataclasses.asdict(cfg), **dict(mlp="gelu", qk_norm=False, logit_cap=0.0)}))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, len(chars), (1, 12))
    # the option is really in the network
    assert torch.allclose(model(ids)[0], plain(ids)[0]) == (ops == set())
    assert (model.lm_head.weight is model.wte.weight) == cfg.tied_head
    ckpt = tmp_path / "m.pt"
    checkpoint.save(ckpt, {
        "model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(TrainConfig()), "vocab": CharTokenizer(chars).to_json(),
        "iter": 0, "val_loss": None, "data_sha256": "", "train_seconds": 0.0, "hardware": "random weights"})
    export(ckpt, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert ops <= {n.op_type for n in proto.graph.node} and {o.domain for o in proto.opset_import} == {""}
    reloaded, _ = load_model(ckpt)
    assert reloaded.cfg == cfg
    report = verify(reloaded, tmp_path / "m.onnx")
    assert report["max_abs_diff"] <= 1e-4 and report["batch_bitwise"]
    _, _, diff = reference_and_runtime_losses(tmp_path / "m.onnx", text_file.read_text(encoding="utf-8"), windows=1)
    assert diff <= 1e-4


def test_a_model_config_from_before_the_options_reads_as_the_original_model():
    from sgpt_cli.config import ModelConfig, model_config_from_dict

    old = {"vocab_size": 65, "block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.0,
           "rope_base": 10000.0}  # what sgpt wrote before n_kv_head and the options existed
    cfg = model_config_from_dict(old)
    assert (cfg.mlp, cfg.tied_head, cfg.qk_norm, cfg.logit_cap, cfg.kv_heads) == ("gelu", True, False, 0.0, 6)
    assert cfg == ModelConfig(**old)
