"""Checkpoint -> one verified, self-contained ONNX file (docs/onnx-interface.md, format 2).

What it does: loads a checkpoint safely (weights_only), writes the decoder graph from its weights
(sgpt_cli.train.onnx_graph: standard ONNX operators only, opset 24, float32 or int8 weights), embeds the
metadata, runs onnx.checker, and verifies ONNX Runtime against PyTorch: plain passes of lengths 1,
block_size/2 and block_size at batch 1 and 3; then, through the engine's own in-place cache, rows of
three prompt lengths prefilled alone and decoded together one character a step until every window has
rolled, each against PyTorch's rolling cache (the oldest entry dropped before each step), and each
bitwise against the same row decoded alone (recorded in the report); and `sgpt explain`'s attention
weights and logit lens (sgpt_cli.train.explain_check). With `quantize="int8"` it measures
the validation loss of both files on the checkpoint's own training text and refuses a costly int8. The
file is written under a temporary name and renamed into place only when every check passed; any
failure leaves nothing behind.

What it does not do: print or draw, or use torch.onnx (why: sgpt_cli.train.onnx_graph). Stages go to a `status` callback, batch counts to `progress`, and
the result is a report dict that sgpt_cli.term.export renders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sgpt_cli.train import checkpoint, onnx_graph
from sgpt_cli.config import model_config_from_dict
from sgpt_cli.errors import SgptError, first_line, library_warnings_silenced
from sgpt_cli.files import atomic_path, check_writable_target
from sgpt_cli.infer.interface import FORMAT, KV_HEADS_KEY
from sgpt_cli.settings import CHECKPOINT, QUANTIZE, export_out_for
from sgpt_cli.train.model import GPT
from sgpt_cli.infer.tokenizer import CharTokenizer

DEFAULT_CHECKPOINT = CHECKPOINT.default
TOLERANCE = 1e-4  # fp32 max |ONNX - PyTorch| on logits
# int8: one weight scale per output column, so logits move by a few percent of the largest at most; a
# broken graph (wrong cache, positions or mask) moves them by their whole range
INT8_TOLERANCE = 0.1  # times the largest |logit| of the case
INT8_MAX_LOSS_DELTA = 0.02  # nats/char the int8 model may lose on the validation split
DECODE_STEPS = 30  # one-character steps past the window's first roll in the cache check


def check_options(quantize: str | None) -> None:
    """The declared range (sgpt_cli.settings), for callers that skip the command line."""
    QUANTIZE.check(quantize)


def load_model(ckpt_path: Path) -> tuple[GPT, dict]:
    """The checkpoint's GPT, built only once its config is valid, its state dict has exactly the
    shapes and dtypes that config implies (checkpoint.load checked them, on the meta device) and
    every weight is finite."""
    ckpt = checkpoint.load(ckpt_path)
    try:
        mcfg = model_config_from_dict(ckpt["model_config"])
        mcfg.validate()
        vocab = CharTokenizer.from_json(ckpt["vocab"])
        if vocab.vocab_size != mcfg.vocab_size:
            raise ValueError(f"{vocab.vocab_size} characters in the vocabulary, {mcfg.vocab_size} in the model")
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


def check_finite(ckpt_path: Path, state: dict) -> None:
    """A diverged run saves NaN or infinite weights; no export of them can verify or run."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SgptError(f"{ckpt_path} holds weights that are not finite (NaN or infinity in {key}): the run that "
                            "wrote it diverged; export an earlier checkpoint, or retrain with a lower --lr")


def metadata_for(model: GPT, ckpt: dict, val_loss, quantization: str) -> dict[str, str]:
    cfg = model.cfg
    return {
        "sgpt.format": FORMAT,  # sgpt_cli.infer.interface
        "sgpt.vocab": ckpt["vocab"],
        "sgpt.block_size": str(cfg.block_size),
        "sgpt.n_layer": str(cfg.n_layer),
        "sgpt.n_head": str(cfg.n_head),
        KV_HEADS_KEY: str(cfg.kv_heads),
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

    onnx.save_model(proto, str(path), save_as_external_data=False)
    if not embedded(onnx.load(str(path), load_external_data=False)):
        raise SgptError(f"{path} refers to weights outside itself; check the onnx version")
    try:
        with library_warnings_silenced():  # what fails it is said in one line below
            onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SgptError(f"the exported graph fails onnx.checker ({first_line(exc)}); check the onnx version") from None


def verify(model: GPT, path: Path, tolerance: float = TOLERANCE, relative: bool = False) -> dict:
    """ONNX Runtime against PyTorch (the module doc says what). The limit is `tolerance`, or with
    `relative` `tolerance` times the largest |logit| of each case. Raises SgptError over the limit;
    returns the largest difference, what was checked, and whether batched rows were bitwise alone."""
    from sgpt_cli.infer.onnx_model import OnnxModel

    # the sessions sgpt runs it on (prefills, split steps), on the CPU; also checks the metadata
    onnx_model = OnnxModel(path, device="cpu")
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    worst, worst_limit = 0.0, tolerance

    def compare(got: np.ndarray, expected: torch.Tensor | np.ndarray, what: str) -> None:
        nonlocal worst, worst_limit
        expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
        limit = tolerance * float(np.abs(expected).max()) if relative else tolerance
        diff = float(np.abs(got - expected).max())
        if diff > worst:
            worst, worst_limit = diff, limit
        if not diff <= limit:  # also catches NaN
            raise SgptError(f"verification failed: ONNX Runtime differs from PyTorch by {diff:.2e} on {what} "
                            f"(limit {limit:.1e}); nothing was written. Try another onnxruntime version")

    lengths = sorted({1, max(cfg.block_size // 2, 1), cfg.block_size})
    with torch.no_grad():
        for batch in (1, 3):
            for T in lengths:
                ids = torch.randint(0, cfg.vocab_size, (batch, T), generator=gen)
                compare(onnx_model.forward(ids.numpy())[0], model(ids)[0], f"batch {batch}, length {T}")
        rolled = _check_rows(model, onnx_model, gen, compare)
    from sgpt_cli.train.explain_check import verify_explain  # `sgpt explain`'s weights and lens, float32 only

    explained = {} if relative else verify_explain(model, path, tolerance)
    return {"max_abs_diff": worst, "limit": worst_limit, "lengths": lengths, "batches": [1, 3], **rolled, **explained}


def rolling_reference(model: GPT, ids: torch.Tensor, prefill: int) -> np.ndarray:
    """PyTorch's logits (n - prefill + 1, V) for ids (n,): a prefill, then one id a step with the
    oldest cached entry dropped while the cache holds block_size (the window the engine keeps)."""
    W = model.cfg.block_size
    logits, past = model(ids[None, :prefill], past=model.empty_cache(1), position_ids=torch.arange(prefill)[None])
    out = [logits[0, -1]]
    for t in range(prefill, len(ids)):
        if past[0][0].shape[2] >= W:
            past = [(k[:, :, 1:], v[:, :, 1:]) for k, v in past]
        logits, past = model(ids[None, t:t + 1], past=past, position_ids=torch.tensor([[t]]))
        out.append(logits[0, -1])
    return torch.stack(out).numpy()


def _check_rows(model: GPT, onnx_model, gen: torch.Generator, compare) -> dict:
    """Rows of three prompt lengths through the engine's in-place cache: prefilled alone, decoded
    together (each at its own position) until every row's window has rolled past block_size, each
    against PyTorch; and each row's logits bitwise against the same row decoded alone (whose cache
    span grows step by step where the batch's is the whole window from the start)."""
    from sgpt_cli.infer.engine import HostCache

    cfg = model.cfg
    W = cfg.block_size
    prompts = sorted({1, max(W // 3, 1), max(W - 3, 1)})
    steps = W + DECODE_STEPS  # every row's ring wraps at least once
    rows = [torch.randint(0, cfg.vocab_size, (n + steps,), generator=gen) for n in prompts]

    def decode(members: list[int]) -> list[list[np.ndarray]]:
        cache = HostCache(onnx_model, len(members))
        slots = [cache.take() for _ in members]  # as the engine does: its span grows with the rows
        cache.fit(max(prompts[r] for r in members))
        got = [[cache.prefill(slot, rows[r][:prompts[r]].numpy())] for slot, r in zip(slots, members)]
        for t in range(steps):
            for slot, r in zip(slots, members):
                cache.tokens[slot, 0], cache.positions[slot, 0] = rows[r][prompts[r] + t], prompts[r] + t
            cache.fit(max(prompts[r] for r in members) + t + 1)
            logits = cache.step(len(members))
            for slot in range(len(members)):
                got[slot].append(logits[slot].copy())
        return got

    together = decode(list(range(len(rows))))
    bitwise = True
    for r, n in enumerate(prompts):
        mine = np.stack(together[r][:-1])  # the last step's logits follow the last id: no reference
        compare(mine, rolling_reference(model, rows[r][:n + steps - 1], n)[:len(mine)],
                f"a row of {n} + {steps} steps in a batch of {len(rows)}")
        alone = np.stack(decode([r])[0][:-1])
        bitwise &= bool(np.array_equal(alone, mine))
    return {"prefill_lengths": prompts, "decode_steps": steps, "batch_bitwise": bitwise}


def val_loss_onnx(path: Path, val_ids: np.ndarray, progress=None) -> float:
    from sgpt_cli.infer.onnx_model import OnnxModel, score_ids

    return score_ids(OnnxModel(path, device="cpu"), val_ids, progress=progress)[0]


def export(ckpt_path: Path = DEFAULT_CHECKPOINT, out: Path | None = None, *, quantize: str | None = None,
           data: Path | None = None, status: Callable[[str], None] = lambda s: None,
           progress: Callable[[int, int], None] | None = None,
           fetch: Callable[[Path], object] | None = None) -> dict:
    """Export, verify and (optionally) quantize; return the report. The file appears only if all pass."""
    check_options(quantize)
    t0 = time.perf_counter()
    ckpt_path = Path(ckpt_path)
    out = Path(out) if out is not None else export_out_for(ckpt_path)  # export/NAME.onnx: never another model's
    status(f"loading {ckpt_path}")
    model, ckpt = load_model(ckpt_path)
    val_ids, data_path = find_validation_text(ckpt, data, required=bool(quantize), fetch=fetch)
    check_writable_target(out)
    cfg = model.cfg
    report = {"checkpoint": str(ckpt_path), "out": str(out), "opset": onnx_graph.OPSET, "params": model.num_params(),
              "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads, "n_embd": cfg.n_embd,
              "block_size": cfg.block_size,
              "vocab_size": cfg.vocab_size, "quantize": quantize, "tolerance": TOLERANCE}
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    try:
        with atomic_path(out) as tmp:
            fp32 = tmp.with_name(tmp.name + ".fp32") if quantize else tmp
            try:
                status(f"writing the decoder graph (standard ONNX, opset {onnx_graph.OPSET})")
                proto = onnx_graph.build(weights, cfg)
                set_metadata(proto, metadata_for(model, ckpt, ckpt.get("val_loss"), "none"))
                save_checked(proto, fp32)
                status("verifying ONNX Runtime against PyTorch")
                report.update(verify(model, fp32))
                report["fp32_bytes"] = fp32.stat().st_size
                if not quantize:
                    _record_val_loss(model, ckpt, proto, fp32, val_ids, data_path, report, status, progress)
                if quantize:
                    _quantize(model, ckpt, weights, fp32, tmp, val_ids, data_path, report, status, progress)
            finally:
                if fp32 != tmp:
                    fp32.unlink(missing_ok=True)
            report["bytes"] = tmp.stat().st_size
    except OSError as exc:  # a full disk, a folder that vanished, a name the file system refuses
        raise SgptError(f"cannot write {out}: {exc.strerror or first_line(exc)}") from None
    report["seconds"] = time.perf_counter() - t0
    return report


def _quantize(model, ckpt, weights, fp32: Path, dst: Path, val_ids, data_path, report, status, progress) -> None:
    status("writing the int8 graph (DequantizeLinear + MatMul)")
    proto = onnx_graph.build(weights, model.cfg, int8=True)
    report["int8_matrices"] = sum(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    set_metadata(proto, metadata_for(model, ckpt, None, "int8"))
    save_checked(proto, dst)
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
    set_metadata(proto, metadata_for(model, ckpt, int8_loss, "int8"))
    save_checked(proto, dst)
    status("verifying the int8 model against PyTorch (looser limit)")
    checked = verify(model, dst, tolerance=INT8_TOLERANCE, relative=True)
    report.update(int8_max_abs_diff=checked["max_abs_diff"], int8_limit=checked["limit"],
                  int8_batch_bitwise=checked["batch_bitwise"])


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
