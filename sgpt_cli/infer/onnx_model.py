"""An exported sgpt model in ONNX Runtime: open it, check its metadata, run forward passes, score text.

Torch-free by design (onnxruntime + numpy only): `chat`, `complete`, `eval` and the export
verification all go through here. It knows the file interface (sgpt_cli.infer.interface, docs/onnx-interface.md),
nothing about sampling or terminals.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from sgpt_cli.config import MAX_BLOCK_SIZE
from sgpt_cli.errors import SgptError, UsageError, first_line, library_warnings_silenced, shown
from sgpt_cli.files import probe
from sgpt_cli.infer.interrupt import RunGuard
from sgpt_cli.infer.interface import FORMAT, INPUT_IDS, KV_HEADS_KEY, KV, LOGITS, PAST, POSITION_IDS, past_names, present_names
from sgpt_cli.infer.tokenizer import CharTokenizer

# Threads (the measurements, on the 2-core development machine: benchmarks/LOG.md). A one-row step is
# ~110 small kernels, too small to split: one thread. A step of many rows streams every row's cache
# (2.4 MB a row here); ONNX Runtime's own second thread splits each kernel and waits for it (faster on
# idle cores); a spinning pool is fastest idle but loses more than half when the cores are shared, so
# never spin. Faster again: cut the rows in STEP_PARTS parts and run the parts at once, each on a
# one-thread session of its own (its own copy of the graph), from two Python threads (ONNX Runtime
# releases the GIL): no synchronisation inside a step at all.
# Neither the thread count nor the number of rows beside it changes a row's bits (measured: a row
# of 8 equals itself alone, 1 or 2 threads; tests/test_engine.py), so any split gives the same text.
# $SGPT_THREADS (or a caller's own session) means one session of that many threads for every step.
DEFAULT_THREADS = 1  # a step session's threads: a step of one row, each part of a step of several
STEP_PARTS = 2  # a step of several rows runs as this many parts at once (the development machine's cores)
PART_MIN_ROWS = 2  # rows in a part, at the least: a step of fewer than 2 x this is not split
THREADS_ENV = "SGPT_THREADS"
# Many characters in one call (a prompt's prefill, scoring a text) run on a session of their own,
# with PREFILL_THREADS threads (a prefill's kernels are large enough to split; a row's bits are the
# same on 1 or 2 threads: tests/test_export.py). For an int8 file that session computes in float32
# from the dequantized weights (`session.disable_quant_qdq`: ONNX Runtime folds each DequantizeLinear
# into a float32 weight when it loads the file): its MatMulNBits kernel quantizes the activations and
# costs as much per character at 110 characters as for one (a prefill several times slower), while it
# is the faster one for one-character steps of many rows. Every prefill of every row goes through this
# session, so a row's bits stay its single run's.
PREFILL_THREADS = 2
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
REQUIRED_KEYS = ("sgpt.format", "sgpt.vocab", "sgpt.block_size", "sgpt.n_layer", "sgpt.n_head", "sgpt.n_embd")


def _ort():
    import onnxruntime as ort

    # fatal only: a CUDA provider that cannot load (missing cuBLAS/cuDNN) is logged as an error
    # before ONNX Runtime falls back to the CPU; open_session reports real failures itself
    ort.set_default_logger_severity(4)
    return ort


def cuda_usable() -> bool:
    """onnxruntime-gpu lists its CUDA provider even on machines without a GPU, so also ask the
    NVIDIA driver (libcuda) for a device: cheap where there is none, and no failed provider load."""
    if CUDA_PROVIDER not in _ort().get_available_providers():
        return False
    import ctypes

    try:
        driver = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
        count = ctypes.c_int(0)
        return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (OSError, AttributeError):
        return False


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's execution providers for "cuda" (with the CPU as fallback) or "cpu"."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]


def default_threads() -> int:
    raw = os.environ.get(THREADS_ENV, "")
    if not raw:
        return DEFAULT_THREADS
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise UsageError(f"${THREADS_ENV} must be a whole number from 1 to 256 (got {shown(raw)})")
    return int(raw)


def session_options(threads: int | None = None, float_matmuls: bool = False):
    """float_matmuls: an int8 file's matmuls in float32 from its dequantized weights (PREFILL_THREADS)."""
    ort = _ort()
    so = ort.SessionOptions()
    if float_matmuls:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or default_threads()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1  # one decoder graph: no parallel branches worth a second pool
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def open_session(path_or_bytes, device: str = "auto", threads: int | None = None, float_matmuls: bool = False):
    """An InferenceSession on the requested device; 'auto' prefers CUDA only when it really works."""
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {device!r})")
    ort = _ort()
    want_cuda = device == "cuda" or (device == "auto" and cuda_usable())
    providers = providers_for("cuda" if want_cuda else "cpu")
    try:
        with library_warnings_silenced():  # onnxruntime warns in Python on some providers' fallbacks
            sess = ort.InferenceSession(path_or_bytes, sess_options=session_options(threads, float_matmuls),
                                        providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        where = path_or_bytes if isinstance(path_or_bytes, (str, Path)) else "the model"
        raise SgptError(f"ONNX Runtime cannot load {where}: {first_line(exc)}") from None
    if device == "cuda" and sess.get_providers()[0] != CUDA_PROVIDER:
        raise SgptError(
            "--device cuda was asked for, but ONNX Runtime's CUDA provider is not usable here "
            "(no GPU, or CUDA/cuDNN libraries missing); use --device cpu or auto"
        )
    return sess


class OnnxModel:
    """One loaded model: its session, vocabulary and shape, and a plain forward()."""

    def __init__(self, path: Path | str, device: str = "auto", threads: int | None = None, session=None):
        self.path = Path(path)
        given = session is not None
        if session is None:
            check_file(self.path)
            session = open_session(str(self.path), device, threads)
        self.session = session
        self.meta = dict(session.get_modelmeta().custom_metadata_map)
        # parsed once, then checked against the graph before any number is used as a shape
        self.block_size, self.n_layer, self.n_head, self.n_embd, self.n_kv_head = parse_metadata(self.meta, self.path)
        self.tokenizer = CharTokenizer.from_json(self.meta["sgpt.vocab"])
        self.vocab_size = self.tokenizer.vocab_size
        check_graph(self, session)
        self.provider = session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA_PROVIDER else "cpu"
        # more one-thread sessions for the parts of a step of several rows (STEP_PARTS), opened when
        # first needed; a caller that passed its own session or thread count gets that one alone
        self._parts = [session] if (given or threads or os.environ.get(THREADS_ENV) or self.device != "cpu") else None
        # the session of prefills and plain passes (PREFILL_THREADS), opened when first needed; a caller's
        # own session, or a device, does everything
        self._prefill = session if (given or self.device != "cpu") else None
        self._threads = threads

    def step_sessions(self, rows: int) -> list:
        """The sessions a step of `rows` rows runs on, one per part (module doc: why)."""
        if rows < 2 * PART_MIN_ROWS:
            return [self.session]
        if self._parts is None:
            self._parts = [self.session] + [open_session(str(self.path), "cpu", DEFAULT_THREADS)
                                            for _ in range(STEP_PARTS - 1)]
        return self._parts

    @property
    def prefill_session(self):
        """The session for many characters in one call: prefills and plain passes (PREFILL_THREADS)."""
        if self._prefill is None:
            int8 = self.meta.get("sgpt.quantization") == "int8"
            threads = self._threads or (default_threads() if os.environ.get(THREADS_ENV) else PREFILL_THREADS)
            self._prefill = open_session(str(self.path), "cpu", threads, float_matmuls=int8)
        return self._prefill

    @property
    def kv_width(self) -> int:
        """Features per position in one layer's key (or value) cache."""
        return self.n_kv_head * (self.n_embd // self.n_head)

    @property
    def val_loss(self) -> float | None:
        v = self.meta.get("sgpt.val_loss")
        try:
            value = float(v) if v not in (None, "") else None
        except ValueError:
            return None
        return value if value is None or math.isfinite(value) else None  # "nan" in a file is no record

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """Per layer [key, value] flattened, each (B, block_size, kv_width) of zeros: rows with nothing written."""
        return [np.zeros((batch, self.block_size, self.kv_width), dtype=np.float32) for _ in range(2 * self.n_layer)]

    def forward(self, ids: np.ndarray, past: list[np.ndarray] | None = None,
                position_ids: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids (B, T) -> logits (B, T, V), present (flattened [k0, v0, k1, v1, ...]). Without `past`,
        from empty rows at positions 0..T-1 (T <= block_size): a plain pass over a window. With plain
        session.run ONNX Runtime copies the cache (sgpt_cli.infer.engine binds it in place)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if past is None:
            past = self.empty_cache(ids.shape[0])
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
        feed = {INPUT_IDS: ids, POSITION_IDS: np.ascontiguousarray(position_ids, dtype=np.int64)}
        feed.update(zip(past_names(self.n_layer), past))
        with RunGuard() as run_options:  # Ctrl-C ends even a run that never ends a step
            outs = self.prefill_session.run([LOGITS] + present_names(self.n_layer), feed, run_options)
        return outs[0], outs[1:]


def check_file(path: Path) -> None:
    """Before ONNX Runtime opens it: a regular file, well-formed, reading no data from outside its
    own folder (sgpt_cli.infer.onnx_file)."""
    from sgpt_cli.infer.onnx_file import MalformedModel, Refused, external_data_escapes

    st = probe(path, "model file")
    if st is None:
        raise SgptError(f"model file {shown(path)} does not exist; export one with `sgpt export` or pass --model")
    if stat.S_ISDIR(st.st_mode):
        raise SgptError(f"model path {shown(path)} is a folder; give an .onnx file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device would never end
        raise SgptError(f"model path {shown(path)} is not a regular file; give an .onnx file")
    try:
        escaping = external_data_escapes(path)
    except Refused as exc:  # control flow, a PyTorch checkpoint, too large: the reason is whole
        raise SgptError(f"refused {shown(path)}: {exc}") from None
    except MalformedModel as exc:
        raise SgptError(f"{shown(path)} is not a well-formed ONNX file ({exc}); give an .onnx file from "
                        "`sgpt export`") from None
    except (OSError, ValueError) as exc:
        raise SgptError(f"cannot read model file {shown(path)}: {getattr(exc, 'strerror', None) or exc}") from None
    if escaping:
        raise SgptError(f"refused {shown(path)}: its tensors would read data from outside its folder "
                        f"({shown(escaping[0])}); sgpt models keep their weights inside the file")


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def check_graph(model: "OnnxModel", session) -> None:
    """The parsed metadata against the graph, so that no edited number reaches numpy or ONNX Runtime
    as a shape: block_size in 1..MAX_BLOCK_SIZE, n_layer = the past inputs, n_kv_head x head width = the
    cache inputs' last axis, block_size = their slots axis where it is static, the vocabulary = the
    logits' width. Sets model.slots_fixed: True when the cache must be bound with block_size slots."""
    block, n_layer, n_head, n_embd, n_kv = model.block_size, model.n_layer, model.n_head, model.n_embd, model.n_kv_head
    b, nl, nh, ne, nkv = (shown(v) for v in (block, n_layer, n_head, n_embd, n_kv))  # an edited 400-digit number: cut

    def refuse(what: str) -> None:
        raise SgptError(f"{shown(model.path)} has sgpt metadata that does not fit its graph ({what}); re-export "
                        "it with `sgpt export`")

    if not 1 <= block <= MAX_BLOCK_SIZE:
        refuse(f"sgpt.block_size {b} is not from 1 to {MAX_BLOCK_SIZE}")
    if n_layer < 1 or n_head < 1 or n_embd < 1 or n_kv < 1:
        refuse(f"n_layer {nl}, n_head {nh}, n_embd {ne}, n_kv_head {nkv}: each must be at least 1")
    if n_embd % n_head or n_head % n_kv:
        refuse(f"sgpt.n_embd {ne}, sgpt.n_head {nh}, sgpt.n_kv_head {nkv}: each must divide the one before")
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layers = sum(1 for name in inputs if name.startswith(PAST + ".") and name.endswith("." + KV[0]))
    if layers != n_layer:
        refuse(f"sgpt.n_layer {nl}, but the graph has {layers} layers of past keys")
    for name in [INPUT_IDS, POSITION_IDS]:
        if name not in inputs:
            refuse(f"no input {name}")
    fixed = False  # a cache axis of block_size slots only (files from before the "slots" axis)
    for name in past_names(n_layer):
        past = inputs.get(name)
        if past is None:
            refuse(f"no input {name}")
        shape = list(past.shape or [])
        if len(shape) != 3:
            refuse(f"{name} has {len(shape)} axes, not 3 (batch, slots, features)")
        width, channels = _static(shape[1]), _static(shape[2])
        if width is not None and width != block:
            refuse(f"sgpt.block_size {b}, but the cache holds {shown(shape[1])} positions")
        fixed = fixed or width is not None
        if channels != model.kv_width:
            refuse(f"sgpt.n_kv_head {nkv} x {n_embd // n_head} features, but the cache is {shown(shape[2])} wide")
    logits = outputs.get(LOGITS)
    if logits is None:
        refuse(f"no output {LOGITS}")
    width = _static((list(logits.shape or []) or [None])[-1])
    vocab = model.vocab_size
    if width is not None and width != vocab:
        refuse(f"{vocab} characters in sgpt.vocab, but the logits are {width} wide")
    model.slots_fixed = fixed


def parse_metadata(meta: dict, path: Path) -> tuple[int, int, int, int, int]:
    """(block_size, n_layer, n_head, n_embd, n_kv_head) from a file's sgpt metadata, its format checked."""
    if "sgpt.format" not in meta:
        raise SgptError(f"{shown(path)} is not an sgpt model (no sgpt metadata); export one with `sgpt export`")
    got = meta["sgpt.format"]
    if got == "1":
        raise SgptError(f"{shown(path)} is sgpt model format 1 (a growing cache, from sgpt before 0.2); this sgpt "
                        f"reads format {FORMAT}: make a new file with `sgpt export CHECKPOINT.pt --out {shown(path)}`")
    if got != FORMAT:
        raise SgptError(f"{shown(path)} is sgpt model format '{shown(got)}'; this sgpt reads format {FORMAT}: "
                        "upgrade sgpt or re-export the model")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise SgptError(f"{shown(path)} lacks sgpt metadata {', '.join(missing)}; re-export it with `sgpt export`")
    try:
        block, n_layer, n_head, n_embd = (int(meta[k]) for k in REQUIRED_KEYS[2:])
        n_kv = int(meta.get(KV_HEADS_KEY, n_head))
    except (ValueError, OverflowError):
        raise SgptError(f"{shown(path)} has damaged sgpt metadata; re-export it with `sgpt export`") from None
    return block, n_layer, n_head, n_embd, n_kv


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def score_ids(model: OnnxModel, ids: np.ndarray, batch: int = 16, progress=None) -> tuple[float, int]:
    """Mean cross-entropy (nats/char) of predicting ids[1:], over non-overlapping windows of
    block_size characters (each window starts fresh, as in training). Returns (loss, characters scored)."""
    T = model.block_size
    n_windows = (len(ids) - 1) // T
    if n_windows == 0:
        T = len(ids) - 1
        n_windows = 1 if T >= 1 else 0
    if n_windows == 0:
        raise SgptError("the text is too short to score: it needs at least 2 characters the model knows")
    total, count = 0.0, 0
    starts = np.arange(n_windows) * T
    for b in range(0, n_windows, batch):
        chunk = starts[b:b + batch]
        windows = np.stack([ids[s:s + T + 1] for s in chunk])  # (b, T+1)
        try:
            logits, _ = model.forward(windows[:, :-1])
        except Exception as exc:  # ONNX Runtime's own exception types, as generation reports them
            raise SgptError(f"ONNX Runtime failed while scoring with {shown(model.path)} ({first_line(exc)}); "
                            "re-export the model with `sgpt export`") from None
        if logits.shape[-1] != model.tokenizer.vocab_size:  # a dynamic logits axis escapes check_graph
            raise SgptError(f"{shown(model.path)} writes logits {logits.shape[-1]} wide for a vocabulary of "
                            f"{model.tokenizer.vocab_size}; re-export it with `sgpt export`")
        logp = log_softmax(logits.astype(np.float64))
        picked = np.take_along_axis(logp, windows[:, 1:, None], axis=-1)
        total -= float(picked.sum())
        count += picked.size
        if progress:
            progress(min(b + batch, n_windows), n_windows)
    return total / count, count


def model_summary(model: OnnxModel) -> dict:
    cfg = {}
    try:
        cfg = json.loads(model.meta.get("sgpt.train_config", "{}"))
    except (ValueError, RecursionError):  # shown as far as it reads; a hostile nesting is no config
        pass
    if not isinstance(cfg, dict):
        cfg = {}
    return {
        "path": str(model.path),
        "size_bytes": model.path.stat().st_size if model.path.exists() else None,
        "device": model.device,
        "n_layer": model.n_layer, "n_head": model.n_head, "n_kv_head": model.n_kv_head, "n_embd": model.n_embd,
        "block_size": model.block_size, "vocab_size": model.tokenizer.vocab_size,
        "val_loss": model.val_loss, "train_config": cfg,
    }
