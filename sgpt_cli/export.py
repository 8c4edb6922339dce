"""Checkpoint -> one verified ONNX file (../shared/docs/onnx-interface.md).

What it does: loads a checkpoint safely (weights_only), exports the GPT with PyTorch's dynamo
exporter and dynamic batch/sequence/past_sequence axes, embeds weights and metadata in one file,
runs onnx.checker, verifies ONNX Runtime against PyTorch (several lengths and batches, and a
prefill-then-decode run against one full pass), optionally quantizes weights to int8 and measures the
validation-loss change, and only then renames the file into place. A failed check removes it.

What it does not do: print. It returns a report dict; the CLI renders it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sgpt_cli import checkpoint
from sgpt_cli.config import model_config_from_dict
from sgpt_cli.errors import SgptError, UsageError, atomic_path, check_writable_target
from sgpt_cli.model import GPT

FORMAT = "1"
TOLERANCE = 1e-4  # fp32 max |ONNX - PyTorch| on logits
INT8_MAX_LOSS_DELTA = 0.02  # nats/char the int8 model may lose on the validation split
DEFAULT_OPSET = 18


class ExportWrapper(torch.nn.Module):
    """Flat tensors in, flat tensors out, in the interface's order and names."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, present = self.model(input_ids, past=past, position_ids=position_ids)
        flat = [t for kv in present for t in kv]
        return (logits, *flat)


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "position_ids", *past], ["logits", *present]


def load_model(ckpt_path: Path) -> tuple[GPT, dict]:
    ckpt = checkpoint.load(ckpt_path)
    try:
        mcfg = model_config_from_dict(ckpt["model_config"])
        model = GPT(mcfg)
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, SgptError) as exc:
        raise SgptError(f"{ckpt_path} does not hold a model this sgpt can build ({str(exc).splitlines()[0][:100]})") from None
    return model.eval(), ckpt


def torch_export(model: GPT, path: Path, opset: int) -> None:
    cfg = model.cfg
    in_names, out_names = io_names(cfg.n_layer)
    B, T, P = 2, 5, 3  # example sizes; none is 0 or 1, which the exporter would specialise on
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    pos = torch.arange(P, P + T).unsqueeze(0).expand(B, T).contiguous()
    past = [torch.randn(B, cfg.n_head, P, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
    batch, seq, past_seq = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past_sequence")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, tuple({0: batch, 2: past_seq} for _ in past))  # *past_flat is one tuple
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
        program = torch.onnx.export(
            ExportWrapper(model), (ids, pos, *past), dynamo=True, dynamic_shapes=shapes,
            input_names=in_names, output_names=out_names, opset_version=opset, external_data=False,
            optimize=True, verbose=False,
        )
    if program is None:
        raise SgptError("the PyTorch exporter returned nothing; check the torch and onnxscript versions")
    # the axis names the interface promises, whatever the exporter called them
    import onnx

    proto = program.model_proto
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        names = axes.get(vi.name) or ({0: "batch", 2: "past_sequence"} if vi.name.startswith("past_") else {0: "batch"})
        for axis, name in names.items():
            vi.type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save_model(proto, str(path), save_as_external_data=False)


class _quiet_stdout:
    """The exporter prints progress lines to stdout; keep the user's terminal to our report."""

    def __enter__(self):
        import sys

        sys.stdout.flush()
        self.saved = os.dup(1)
        self.devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.devnull, 1)

    def __exit__(self, *exc):
        import sys

        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        os.close(self.devnull)


def add_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "sgpt"
    onnx.save_model(proto, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def metadata_for(model: GPT, ckpt: dict, val_loss: float | None) -> dict[str, str]:
    cfg = model.cfg
    meta = {
        "sgpt.format": FORMAT,
        "sgpt.vocab": ckpt["vocab"],
        "sgpt.block_size": str(cfg.block_size),
        "sgpt.n_layer": str(cfg.n_layer),
        "sgpt.n_head": str(cfg.n_head),
        "sgpt.n_embd": str(cfg.n_embd),
        "sgpt.val_loss": "" if val_loss is None else f"{val_loss:.6f}",
        "sgpt.data_sha256": str(ckpt.get("data_sha256", "")),
        "sgpt.train_config": json.dumps(ckpt.get("train_config", {})),
        "sgpt.model_config": json.dumps(dataclasses.asdict(cfg)),
        "sgpt.train_iters": str(ckpt.get("iter", "")),
        "sgpt.train_seconds": f"{float(ckpt.get('train_seconds', 0.0)):.1f}",
        "sgpt.hardware": str(ckpt.get("hardware", "")),
        "sgpt.position_encoding": "rotary",
    }
    return meta


def verify(model: GPT, path: Path) -> float:
    """Max |ONNX Runtime - PyTorch| over the required cases; raises when over TOLERANCE."""
    from sgpt_cli.onnx_model import OnnxModel, open_session

    onnx_model = OnnxModel(path, session=open_session(str(path), "cpu"))
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    worst = 0.0

    def compare(a: np.ndarray, b: torch.Tensor, what: str) -> None:
        nonlocal worst
        diff = float(np.abs(a - b.detach().numpy()).max())
        worst = max(worst, diff)
        if not diff <= TOLERANCE:
            raise SgptError(f"verification failed: ONNX differs from PyTorch by {diff:.2e} on {what} (limit {TOLERANCE:g})")

    lengths = sorted({1, max(cfg.block_size // 2, 1), cfg.block_size})
    with torch.no_grad():
        for batch in (1, 3):
            for T in lengths:
                ids = torch.randint(0, cfg.vocab_size, (batch, T), generator=gen)
                expected, _ = model(ids)
                got, _ = onnx_model.forward(ids.numpy())
                compare(got, expected, f"batch {batch}, length {T}")
        # prefill then one-token decode steps must equal one full pass
        steps = min(30, cfg.block_size - 1)
        T = cfg.block_size
        ids = torch.randint(0, cfg.vocab_size, (2, T), generator=gen)
        expected, _ = model(ids)
        prefill = T - steps
        logits, past = onnx_model.forward(ids[:, :prefill].numpy())
        got = [logits]
        for t in range(prefill, T):
            logits, past = onnx_model.forward(ids[:, t:t + 1].numpy(), past)
            got.append(logits)
        compare(np.concatenate(got, axis=1), expected, f"prefill {prefill} + {steps} decode steps")
    return worst


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True, extra_options={"MatMulConstBOnly": True})


def val_loss_onnx(path: Path, val_ids: np.ndarray) -> float:
    from sgpt_cli.onnx_model import OnnxModel, score_ids

    return score_ids(OnnxModel(path, device="cpu"), val_ids)[0]


def export(ckpt_path: Path, out: Path, *, opset: int = DEFAULT_OPSET, quantize: str | None = None,
           data: Path | None = None, status: Callable[[str], None] = lambda s: None) -> dict:
    """Export, verify and (optionally) quantize; return the report. The file appears only if all pass."""
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize takes int8 (got {quantize!r})")
    if not 17 <= opset <= 23:
        raise UsageError(f"--opset must be between 17 and 23 (got {opset})")
    t0 = time.perf_counter()
    ckpt_path, out = Path(ckpt_path), Path(out)
    check_writable_target(out)
    status("loading checkpoint")
    model, ckpt = load_model(ckpt_path)
    val_text_ids = None
    if quantize:
        val_text_ids = _validation_ids(ckpt, data)
    report = {"checkpoint": str(ckpt_path), "out": str(out), "opset": opset, "params": model.num_params(),
              "quantize": quantize}
    with atomic_path(out) as final_tmp:
        fp32 = final_tmp.with_name(final_tmp.name + ".fp32.onnx")
        try:
            status("exporting with torch.onnx (dynamo)")
            torch_export(model, fp32, opset)
            add_metadata(fp32, metadata_for(model, ckpt, ckpt.get("val_loss")))
            status("verifying ONNX Runtime against PyTorch")
            report["max_abs_diff"] = verify(model, fp32)
            report["fp32_bytes"] = fp32.stat().st_size
            if quantize:
                status("quantizing weights to int8")
                q = final_tmp.with_name(final_tmp.name + ".int8.onnx")
                try:
                    quantize_int8(fp32, q)
                    status("measuring validation loss, fp32 and int8")
                    report["val_loss_fp32"] = val_loss_onnx(fp32, val_text_ids)
                    report["val_loss_int8"] = val_loss_onnx(q, val_text_ids)
                    delta = report["val_loss_int8"] - report["val_loss_fp32"]
                    report["val_loss_delta"] = delta
                    if delta > INT8_MAX_LOSS_DELTA:
                        raise SgptError(
                            f"int8 quantization costs {delta:.4f} nats/char of validation loss "
                            f"(limit {INT8_MAX_LOSS_DELTA}); export without --quantize"
                        )
                    add_metadata(q, {**metadata_for(model, ckpt, report["val_loss_int8"]), "sgpt.quantization": "int8"})
                    os.replace(q, final_tmp)
                finally:
                    q.unlink(missing_ok=True)
            else:
                os.replace(fp32, final_tmp)
        finally:
            fp32.unlink(missing_ok=True)
        report["bytes"] = final_tmp.stat().st_size
    report["seconds"] = time.perf_counter() - t0
    return report


def _validation_ids(ckpt: dict, data: Path | None) -> np.ndarray:
    """The validation split of the checkpoint's training text, encoded with its vocabulary."""
    from sgpt_cli.data import DEFAULT_DATA, read_text, split_text
    from sgpt_cli.tokenizer import CharTokenizer

    path = Path(data) if data else DEFAULT_DATA
    if not path.exists():
        raise SgptError(f"--quantize int8 measures the validation loss on the training text, but {path} is missing; pass --data PATH")
    text, sha = read_text(path)
    if ckpt.get("data_sha256") and sha != ckpt["data_sha256"]:
        raise SgptError(f"{path} is not the text this checkpoint was trained on (SHA-256 differs); pass the right --data")
    tok = CharTokenizer.from_json(ckpt["vocab"])
    return tok.encode(split_text(text)[1], drop_unknown=True)
