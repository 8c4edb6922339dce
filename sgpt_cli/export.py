"""Checkpoint -> one verified, self-contained ONNX file (docs/onnx-interface.md).

What it does: loads a checkpoint safely (weights_only), exports the GPT with PyTorch's dynamo exporter
(`torch.onnx.export(dynamo=True)` with dynamic batch/sequence/past_sequence axes), drops the exporter's
per-node debug records (stack traces with this machine's paths), embeds weights and metadata in the one
file, runs onnx.checker, and verifies ONNX Runtime against PyTorch: lengths 1, block_size/2 and
block_size at batch 1 and 3, and a prefill followed by 30 one-token decode steps against one full pass.
With `quantize="int8"` it then quantizes every weight matrix (ONNX Runtime's MatMulNBits, 8 bits),
checks that each one really became int8, verifies the result loosely, and measures the change of the
validation loss on the checkpoint's own training text. The file is written under a temporary name and
renamed into place only when every check passed; any failure leaves nothing behind.

What it does not do: print or draw. Stages go to a `status` callback, batch counts to `progress`, and
the result is a report dict that sgpt_cli.cli_export renders.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sgpt_cli import checkpoint
from sgpt_cli.config import model_config_from_dict
from sgpt_cli.errors import SgptError, atomic_path, check_writable_target, first_line
from sgpt_cli.interface import AXES, PAST, PRESENT, io_names
from sgpt_cli.settings import CHECKPOINT, EXPORT_OUT, OPSET, QUANTIZE
from sgpt_cli.model import GPT
from sgpt_cli.tokenizer import CharTokenizer

FORMAT = "1"
DEFAULT_CHECKPOINT = CHECKPOINT.default
DEFAULT_OUT = EXPORT_OUT.default
DEFAULT_OPSET = OPSET.default  # why 18, and the valid range: sgpt_cli.settings.OPSET
TOLERANCE = 1e-4  # fp32 max |ONNX - PyTorch| on logits
# int8: weights in blocks of 32, activations quantized per row and block at run time, so logits move
# by a few percent of the largest at most; a broken graph (wrong cache, positions or a saturating
# kernel) moves them by their whole range
INT8_TOLERANCE = 0.1  # times the largest |logit| of the case
INT8_MAX_LOSS_DELTA = 0.02  # nats/char the int8 model may lose on the validation split
DECODE_STEPS = 30  # one-token steps after the prefill in the cache check
QUANTIZED_MATMULS = ("MatMulNBits",)
INT8_BLOCK = 32  # input channels per weight scale: finer than per channel, 1/32 more bytes


class ExportWrapper(torch.nn.Module):
    """Flat tensors in, flat tensors out, in the interface's order and names."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, present = self.model(input_ids, past=past, position_ids=position_ids, attention_mask=attention_mask)
        flat = [t for kv in present for t in kv]
        return (logits, *flat)


def check_options(opset: int, quantize: str | None) -> None:
    """The declared ranges (sgpt_cli.settings), for callers that skip the command line."""
    OPSET.check(opset)
    QUANTIZE.check(quantize)


def load_model(ckpt_path: Path) -> tuple[GPT, dict]:
    """The checkpoint's GPT, built only once its config is valid, its state dict has exactly the
    shapes that config implies (checked on the meta device: no memory is allocated for a config
    that claims more than the file holds) and every weight is finite."""
    ckpt = checkpoint.load(ckpt_path)
    try:
        mcfg = model_config_from_dict(ckpt["model_config"])
        mcfg.validate()
        vocab = CharTokenizer.from_json(ckpt["vocab"])
        if vocab.vocab_size != mcfg.vocab_size:
            raise ValueError(f"{vocab.vocab_size} characters in the vocabulary, {mcfg.vocab_size} in the model")
        check_state_shapes(mcfg, ckpt["model"])
        check_finite(ckpt_path, ckpt["model"])
        model = GPT(mcfg)
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, ValueError, AttributeError, RuntimeError) as exc:
        raise SgptError(f"{ckpt_path} does not hold a model this sgpt can build ({first_line(exc, 100)}); "
                        "retrain it with `sgpt train`") from None
    except SgptError as exc:
        if "not finite" in str(exc):
            raise
        raise SgptError(f"{ckpt_path} does not hold a model this sgpt can build ({first_line(exc, 100)}); "
                        "retrain it with `sgpt train`") from None
    return model.eval(), ckpt


def check_state_shapes(mcfg, state: dict) -> None:
    """ValueError unless `state` has exactly the tensors, and shapes, of GPT(mcfg)."""
    if not isinstance(state, dict):
        raise ValueError("its weights are not a state dict")
    with torch.device("meta"):  # shapes only: a claim of n_embd 4096 costs nothing to check
        expected = {k: tuple(v.shape) for k, v in GPT(mcfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ValueError(f"no weights for {missing[0]}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"weights {unexpected[0]!r} that the config's model does not have")
    for key, shape in expected.items():
        if got[key] != shape:
            raise ValueError(f"the config implies {key} of shape {list(shape)}, the file holds {list(got[key])}")


def check_finite(ckpt_path: Path, state: dict) -> None:
    """A diverged run saves NaN or infinite weights; no export of them can verify or run."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SgptError(f"{ckpt_path} holds weights that are not finite (NaN or infinity in {key}): the run that "
                            "wrote it diverged; export an earlier checkpoint, or retrain with a lower --lr")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantizer print progress, warnings and advice on stdout and stderr, some
    of it from C++; keep the user's terminal to our report by pointing both descriptors at devnull.
    (A rich spinner keeps drawing: cli_export gives it its own duplicate of the terminal.)"""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxscript")]  # "": the quantizer logs on root
    levels = [lg.level for lg in loggers]
    saved: list[tuple[int, int]] = []
    devnull = None
    with contextlib.suppress(OSError, ValueError):  # a stdout that cannot be written is not the export's failure
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            with contextlib.suppress(OSError):  # a closed descriptor: nothing to silence
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
    except OSError:
        pass
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, backup in saved:
            os.dup2(backup, fd)
            os.close(backup)
        if devnull is not None:
            os.close(devnull)


def torch_export(model: GPT, opset: int):
    """The GPT as an onnx.ModelProto with the interface's names and axes, weights inside."""
    cfg = model.cfg
    in_names, out_names = io_names(cfg.n_layer)
    B, T, P = 2, 5, 3  # example sizes; none is 0 or 1, which the exporter would specialise on
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    pos = torch.arange(P, P + T).unsqueeze(0).expand(B, T).contiguous()
    mask = torch.ones(B, P + T, dtype=torch.int64)
    mask[0, :2] = 0  # an example with padding, so no branch is specialised on "all real"
    past = [torch.randn(B, cfg.n_head, P, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
    batch, seq, past_seq = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past_sequence")
    # the mask's length is past_sequence + sequence: a sum of two dims, which the exporter infers (AUTO)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 1: torch.export.Dim.AUTO},
              tuple({0: batch, 2: past_seq} for _ in past))  # *past_flat is one tuple
    try:
        with _quiet():
            # no file name: the exporter would write weights to NAME.data beside it (external_data)
            program = torch.onnx.export(
                ExportWrapper(model), (ids, pos, mask, *past), dynamo=True, dynamic_shapes=shapes,
                input_names=in_names, output_names=out_names, opset_version=opset, external_data=False,
                optimize=True, verbose=False,
            )
            proto = program.model_proto if program is not None else None
    except Exception as exc:  # the exporter raises many kinds, none of them the user's to read in full
        raise SgptError(f"the PyTorch ONNX exporter failed ({first_line(exc)}); try --opset {DEFAULT_OPSET}, "
                        "or check the torch and onnxscript versions") from None
    if proto is None:
        raise SgptError("the PyTorch ONNX exporter returned nothing; check the torch and onnxscript versions")
    got = opset_of(proto)
    if got != opset:  # its version converter can give up and keep the old opset without failing
        raise SgptError(f"the PyTorch ONNX exporter wrote opset {got} when asked for {opset}; use --opset {DEFAULT_OPSET}")
    _name_axes(proto)
    _strip_debug_info(proto)
    make_mask_optional(proto)
    return proto


def make_mask_optional(proto) -> None:
    """Give `attention_mask` a default, [[1]] (an initializer of the same name), so a caller that
    feeds no mask gets "every position is real": it broadcasts over any batch and length."""
    from onnx import numpy_helper

    proto.graph.initializer.append(numpy_helper.from_array(np.ones((1, 1), dtype=np.int64), "attention_mask"))


def opset_of(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _name_axes(proto) -> None:
    """The axis names the interface promises, whatever the exporter called them."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        names = AXES.get(vi.name) or AXES[PAST if vi.name.startswith(PAST + ".") else PRESENT]
        for axis, name in names.items():
            vi.type.tensor_type.shape.dim[axis].dim_param = name


def _strip_debug_info(proto) -> None:
    """The exporter records each node's Python stack trace, FX node and module path: this machine's
    file names in a file meant for sharing, and half of a small model's bytes."""
    graph = proto.graph
    del graph.metadata_props[:]
    graph.doc_string = ""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        del vi.metadata_props[:]
    for init in graph.initializer:
        del init.metadata_props[:]


def metadata_for(model: GPT, ckpt: dict, val_loss, quantization: str) -> dict[str, str]:
    cfg = model.cfg
    return {
        "sgpt.format": FORMAT,
        "sgpt.vocab": ckpt["vocab"],
        "sgpt.block_size": str(cfg.block_size),
        "sgpt.n_layer": str(cfg.n_layer),
        "sgpt.n_head": str(cfg.n_head),
        "sgpt.n_embd": str(cfg.n_embd),
        "sgpt.val_loss": _loss_text(val_loss),
        "sgpt.data_sha256": str(ckpt.get("data_sha256", "")),
        "sgpt.train_config": json.dumps(ckpt.get("train_config", {}), ensure_ascii=False),
        "sgpt.model_config": json.dumps(dataclasses.asdict(cfg)),
        "sgpt.train_iters": str(ckpt.get("iter", "")),
        "sgpt.train_seconds": f"{_float(ckpt.get('train_seconds')) or 0.0:.1f}",
        "sgpt.hardware": str(ckpt.get("hardware", "")),
        "sgpt.position_encoding": "rotary",
        "sgpt.quantization": quantization,
    }


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _loss_text(value) -> str:
    value = _float(value)
    return "" if value is None else f"{value:.6f}"


def set_metadata(proto, meta: dict[str, str]) -> None:
    from sgpt_cli import __version__

    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name, proto.producer_version = "sgpt", __version__


def save_checked(proto, path: Path) -> None:
    """Write the model as one file (no NAME.data beside it) and run onnx.checker on what was written."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    def embedded(p) -> bool:
        return not any(uses_external_data(t) for t in p.graph.initializer)

    if not embedded(proto):
        raise SgptError("the exporter left weights outside the model file; check the torch and onnxscript versions")
    onnx.save_model(proto, str(path), save_as_external_data=False)
    if not embedded(onnx.load(str(path), load_external_data=False)):
        raise SgptError(f"{path} refers to weights outside itself; check the onnx version")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SgptError(f"the exported graph fails onnx.checker ({first_line(exc)}); try --opset {DEFAULT_OPSET}") from None


def verify(model: GPT, path: Path, tolerance: float = TOLERANCE, relative: bool = False) -> dict:
    """ONNX Runtime against PyTorch: lengths 1, block_size/2, block_size at batch 1 and 3, then a
    prefill and DECODE_STEPS one-token steps (the cache growing) against one full PyTorch pass.

    The limit is `tolerance`, or with `relative` `tolerance` times the largest |logit| of each case.
    Raises SgptError over the limit; returns the largest difference and what was checked."""
    from sgpt_cli.onnx_model import OnnxModel, open_session

    onnx_model = OnnxModel(path, session=open_session(str(path), "cpu"))  # also checks the metadata
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    worst, worst_limit = 0.0, tolerance

    def compare(got: np.ndarray, expected: torch.Tensor, what: str) -> None:
        nonlocal worst, worst_limit
        expected = expected.detach().numpy()
        limit = tolerance * float(np.abs(expected).max()) if relative else tolerance
        diff = float(np.abs(got - expected).max())
        if diff > worst:
            worst, worst_limit = diff, limit
        if not diff <= limit:  # also catches NaN
            raise SgptError(f"verification failed: ONNX Runtime differs from PyTorch by {diff:.2e} on {what} "
                            f"(limit {limit:.1e}); nothing was written. Try --opset {DEFAULT_OPSET} or another "
                            "onnxruntime version")

    lengths = sorted({1, max(cfg.block_size // 2, 1), cfg.block_size})
    batches = (1, 3)
    with torch.no_grad():
        for batch in batches:
            for T in lengths:
                ids = torch.randint(0, cfg.vocab_size, (batch, T), generator=gen)
                expected, _ = model(ids)
                got, _ = onnx_model.forward(ids.numpy())
                compare(got, expected, f"batch {batch}, length {T}")
        # prefill (empty past), then one token at a time with the growing cache = one full pass
        T = cfg.block_size
        steps = min(DECODE_STEPS, T - 1)
        prefill = T - steps
        ids = torch.randint(0, cfg.vocab_size, (2, T), generator=gen)
        expected, _ = model(ids)
        logits, past = onnx_model.forward(ids[:, :prefill].numpy())
        got = [logits]
        for t in range(prefill, T):
            logits, past = onnx_model.forward(ids[:, t:t + 1].numpy(), past)
            got.append(logits)
        compare(np.concatenate(got, axis=1), expected, f"prefill {prefill} + {steps} decode steps")
        padded = _check_padding(model, onnx_model, gen, compare)
    return {"max_abs_diff": worst, "limit": worst_limit, "lengths": lengths, "batches": list(batches),
            "prefill": prefill, "decode_steps": steps, "padded_lengths": padded}


def _check_padding(model: GPT, onnx_model, gen: torch.Generator, compare) -> list[int]:
    """The attention_mask path: rows of different lengths, left-padded into one batch with per-row
    positions, prefilled together and then decoded 3 steps, must give each row's own logits (PyTorch,
    unpadded, alone)."""
    cfg = model.cfg
    lengths = sorted({1, max(cfg.block_size // 3, 1), cfg.block_size - 3})
    steps = 3
    T = max(lengths)
    rows = [torch.randint(0, cfg.vocab_size, (n + steps,), generator=gen) for n in lengths]
    ids = np.zeros((len(rows), T), dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    pos = np.zeros((len(rows), T), dtype=np.int64)
    for b, (n, row) in enumerate(zip(lengths, rows)):
        ids[b, T - n:], mask[b, T - n:], pos[b, T - n:] = row[:n].numpy(), 1, np.arange(n)
    logits, past = onnx_model.forward(ids, position_ids=pos, attention_mask=mask)
    got = [[logits[b, T - n:]] for b, n in enumerate(lengths)]
    for t in range(steps):
        step = np.array([[row[n + t]] for n, row in zip(lengths, rows)], dtype=np.int64)
        mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        logits, past = onnx_model.forward(step, past, position_ids=np.array([[n + t] for n in lengths]),
                                          attention_mask=mask)
        for b in range(len(rows)):
            got[b].append(logits[b])
    for b, (n, row) in enumerate(zip(lengths, rows)):
        expected, _ = model(row[None])
        compare(np.concatenate(got[b])[None], expected, f"a left-padded row of {n} + {steps} steps")
    return lengths


def weight_matmuls(proto) -> list[str]:
    """MatMul/Gemm nodes whose B is a float weight (an initializer, or a Transpose of one)."""
    from onnx import TensorProto

    floats = {t.name for t in proto.graph.initializer
              if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    transposed = {n.output[0] for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in floats}
    return [n.name or n.output[0] for n in proto.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in floats | transposed]


def fold_weight_transposes(proto) -> int:
    """Store Transpose(weight) feeding a MatMul/Gemm as a transposed weight; return how many.

    ONNX Runtime's quantizer only quantizes a MatMul whose B is an initializer. The tied output head
    (the embedding matrix, transposed) exports as Transpose(weight) once vocab x n_embd passes the
    exporter's constant-folding limit (8192 elements), i.e. in every real model."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    b_inputs = {n.input[1] for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1}
    folded = [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits and n.output[0] in b_inputs]
    for node in folded:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[node.input[0]])
        # the node's output name becomes a constant: every consumer reads the same values as before
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), node.output[0]))
        graph.node.remove(node)
    return len(folded)


@contextlib.contextmanager
def _temporaries_beside(dst: Path) -> Iterator[None]:
    """ONNX Runtime's quantizer copies the whole model into tempfile's folder ($TMPDIR/ort.quant.*),
    which kill -9 leaves behind for good. Point tempfile at a folder named after our own temporary
    (`.NAME.PID.RANDOM.tmp.quant`), which sgpt_cli.errors removes on the next export to the same
    --out when its process is gone."""
    import shutil
    import tempfile

    folder = dst.with_name(dst.name + ".quant")
    folder.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def quantize_int8(fp32_proto, dst: Path) -> dict:
    """Weight-only int8 (ONNX Runtime's MatMulNBits, 8 bits, blocks of INT8_BLOCK along the input,
    symmetric); raises unless every weight matrix became int8.

    Why MatMulNBits and not `quantize_dynamic`: dynamic quantization scales the activations of the
    whole tensor by its largest value, so a row's logits would depend on the other rows of a batch
    (and on padding). MatMulNBits at accuracy level 4 quantizes each row's activations per block, so
    a batched row stays bitwise equal to the same row alone (sgpt_cli.engine). Its weights are
    symmetric int8 in [-127, 127] times int8 activations; measured here on one AVX2 machine only
    (the verification below runs on whatever machine exports)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weights = weight_matmuls(fp32_proto)
    if not weights:
        raise SgptError("found no weight matrices to quantize in the exported graph; export without --quantize")
    fp32_proto = copy.deepcopy(fp32_proto)  # the caller's float32 model stays as exported
    fold_weight_transposes(fp32_proto)
    try:
        with _quiet(), _temporaries_beside(dst):
            quantizer = MatMulNBitsQuantizer(fp32_proto, bits=8, block_size=INT8_BLOCK, is_symmetric=True,
                                             accuracy_level=4, op_types_to_quantize=("MatMul",))
            quantizer.process()
            proto = quantizer.model.model
    except (SgptError, OSError):
        raise
    except Exception as exc:
        raise SgptError(f"ONNX Runtime's quantizer failed ({first_line(exc)}); export without --quantize") from None
    left = weight_matmuls(proto)
    done = sum(n.op_type in QUANTIZED_MATMULS for n in proto.graph.node)
    if left or done < len(weights):
        raise SgptError(f"int8 quantization left {len(left) or len(weights) - done} of {len(weights)} weight "
                        "matrices in floating point; export without --quantize")
    onnx.save_model(proto, str(dst), save_as_external_data=False)
    return {"proto": proto, "matrices": len(weights)}


def val_loss_onnx(path: Path, val_ids: np.ndarray, progress=None) -> float:
    from sgpt_cli.onnx_model import OnnxModel, score_ids

    return score_ids(OnnxModel(path, device="cpu"), val_ids, progress=progress)[0]


def export(ckpt_path: Path = DEFAULT_CHECKPOINT, out: Path = DEFAULT_OUT, *, opset: int = DEFAULT_OPSET,
           quantize: str | None = None, data: Path | None = None,
           status: Callable[[str], None] = lambda s: None,
           progress: Callable[[int, int], None] | None = None,
           fetch: Callable[[Path], object] | None = None) -> dict:
    """Export, verify and (optionally) quantize; return the report. The file appears only if all pass."""
    check_options(opset, quantize)
    t0 = time.perf_counter()
    ckpt_path, out = Path(ckpt_path), Path(out)
    status(f"loading {ckpt_path}")
    model, ckpt = load_model(ckpt_path)
    val_ids, data_path = find_validation_text(ckpt, data, required=bool(quantize), fetch=fetch)
    check_writable_target(out)
    cfg = model.cfg
    report = {"checkpoint": str(ckpt_path), "out": str(out), "opset": opset, "params": model.num_params(),
              "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
              "vocab_size": cfg.vocab_size, "quantize": quantize, "tolerance": TOLERANCE}
    try:
        with atomic_path(out) as tmp:
            fp32 = tmp.with_name(tmp.name + ".fp32") if quantize else tmp
            try:
                status(f"exporting with torch.onnx (dynamo, opset {opset})")
                proto = torch_export(model, opset)
                set_metadata(proto, metadata_for(model, ckpt, ckpt.get("val_loss"), "none"))
                save_checked(proto, fp32)
                status("verifying ONNX Runtime against PyTorch")
                report.update(verify(model, fp32))
                report["fp32_bytes"] = fp32.stat().st_size
                if not quantize:
                    _record_val_loss(model, ckpt, proto, fp32, val_ids, data_path, report, status, progress)
                if quantize:
                    _quantize(model, ckpt, proto, fp32, tmp, val_ids, data_path, report, status, progress)
            finally:
                if fp32 != tmp:
                    fp32.unlink(missing_ok=True)
            report["bytes"] = tmp.stat().st_size
    except OSError as exc:  # a full disk, a folder that vanished, a name the file system refuses
        raise SgptError(f"cannot write {out}: {exc.strerror or first_line(exc)}") from None
    report["seconds"] = time.perf_counter() - t0
    return report


def _quantize(model, ckpt, fp32_proto, fp32: Path, dst: Path, val_ids, data_path, report, status, progress) -> None:
    status("quantizing the weight matrices to int8")
    q = quantize_int8(fp32_proto, dst)
    report["int8_matrices"] = q["matrices"]
    status("measuring the validation loss, float32")
    fp32_loss = val_loss_onnx(fp32, val_ids, progress)
    status("measuring the validation loss, int8")
    int8_loss = val_loss_onnx(dst, val_ids, progress)
    delta = int8_loss - fp32_loss
    report.update(val_loss_fp32=fp32_loss, val_loss_int8=int8_loss, val_loss_delta=delta,
                  val_chars=int(len(val_ids)), data=str(data_path), max_loss_delta=INT8_MAX_LOSS_DELTA)
    if not delta <= INT8_MAX_LOSS_DELTA:
        raise SgptError(f"int8 quantization costs {delta:.4f} nats/char of validation loss "
                        f"(limit {INT8_MAX_LOSS_DELTA}); nothing was written. Export without --quantize")
    proto = q["proto"]
    set_metadata(proto, metadata_for(model, ckpt, int8_loss, "int8"))
    save_checked(proto, dst)
    status("verifying the int8 model against PyTorch (looser limit)")
    checked = verify(model, dst, tolerance=INT8_TOLERANCE, relative=True)
    report.update(int8_max_abs_diff=checked["max_abs_diff"], int8_limit=checked["limit"])


def _record_val_loss(model, ckpt, proto, fp32: Path, val_ids, data_path, report, status, progress) -> None:
    """The one val loss of a float32 export: this very file on the whole validation split, the
    protocol of `sgpt eval`, written into its metadata; or, without the text, the checkpoint's own."""
    if val_ids is None:
        report.update(val_loss=_float(ckpt.get("val_loss")), val_source=ckpt.get("val_loss_kind", "estimate"))
        return
    status("measuring the validation loss on the whole split")
    loss = val_loss_onnx(fp32, val_ids, progress)
    set_metadata(proto, metadata_for(model, ckpt, loss, "none"))
    save_checked(proto, fp32)
    report.update(val_loss=loss, val_source="measured", val_chars=int(len(val_ids)), data=str(data_path))


def find_validation_text(ckpt: dict, data: Path | None, required: bool,
                         fetch: Callable[[Path], object] | None = None) -> tuple[np.ndarray | None, Path | None]:
    """The validation split of the checkpoint's own text, encoded with its vocabulary: --data when
    given; else the path recorded at training time if its SHA-256 still matches; else the default
    corpus (downloaded if missing, as `sgpt eval` does) if it is that text. Without it: an error
    when `required` (int8 needs it), else (None, None)."""
    from sgpt_cli import data as corpus

    want = ckpt.get("data_sha256") or None
    if data is not None:
        text, sha = corpus.read_text(Path(data))
        if want and sha != want:
            raise SgptError(f"{data} is not the text this checkpoint was trained on (its SHA-256 differs); "
                            "pass the training text with --data PATH")
        return _encoded_val(ckpt, text, Path(data)), Path(data)
    candidates = [Path(ckpt["data_path"])] if ckpt.get("data_path") else []
    candidates.append(corpus.DEFAULT_DATA)
    for path in candidates:
        if path.is_file():
            text, sha = corpus.read_text(path)
            if not want or sha == want:
                return _encoded_val(ckpt, text, path), path
    default_fits = want in (None, corpus.TINY_SHAKESPEARE_SHA256)
    if default_fits and not corpus.DEFAULT_DATA.exists() and (required or fetch is not None):
        (fetch or corpus.ensure_default_data)(corpus.DEFAULT_DATA)
        text, _ = corpus.read_text(corpus.DEFAULT_DATA)
        return _encoded_val(ckpt, text, corpus.DEFAULT_DATA), corpus.DEFAULT_DATA
    if not required:
        return None, None
    recorded = f" (recorded: {ckpt['data_path']})" if ckpt.get("data_path") else ""
    raise SgptError(f"--quantize int8 measures the validation loss on the checkpoint's training text, which "
                    f"was not found{recorded}; pass --data PATH (the text it was trained on)")


def _encoded_val(ckpt: dict, text: str, path: Path) -> np.ndarray:
    from sgpt_cli.data import split_text

    ids = CharTokenizer.from_json(ckpt["vocab"]).encode(split_text(text)[1], drop_unknown=True)
    if len(ids) < 2:
        raise SgptError(f"the validation split of {path} is too short to measure a loss; pass a longer --data")
    return ids
