"""Which precision a run's matmuls use: `--precision auto` measures it on the CPU it runs on.

What it holds: `resolve_precision` (the run's `Choice`: float32 or bfloat16, and the reason the header
shows), `measure` (the probe: forward and backward of one batch of the run's own model, float32 and
bfloat16 autocast in alternate rounds, medians), the cache of its verdicts in `$SGPT_HOME/precision.json`,
and `cpu_name`/`machine` (what the CPU is: the name the summary compares figures by, the fingerprint a
cached verdict holds for).

Why measure: whether bfloat16 pays on a CPU is not one instruction set. AMX tiles run its matmuls 4x
float32's; AVX-512 with `avx512_bf16` (Cooper Lake Xeons, Zen 4/5) ran a cpu-preset step 1.58x faster;
AVX2 alone emulates it, slower than float32. torch's kernels move between versions too, so a verdict
is kept per CPU (name, family, model, flags), torch version, thread count and model shape, and measured
again when any of them changes. CUDA is bfloat16 without a probe (its tensor cores always pay).

What it does not do: train, print, or decide anything but the matmuls' precision (attention under
the CPU's autocast, the estimates and the whole-split measurement stay float32: trainer, model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import stat
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sgpt_cli.errors import SgptError
from sgpt_cli.files import atomic_write_text
from sgpt_cli.home import data_home

# the narrowest model whose steps bfloat16 makes faster even on an AMX CPU, its best case (forward +
# backward, one batch of the cpu preset's size: width 32 0.66x, 64 1.11x, 96 1.23x, 128 1.42x): below
# it the casts cost more than the matmuls save on any CPU, so narrower models are float32 unprobed
BF16_CPU_MIN_WIDTH = 64
# bfloat16 must be this much faster to be chosen: within it the two are as fast (the probe's noise,
# and the optimizer's step it does not time), and float32 is the exact one
BF16_MARGIN = 1.05
PROBE_TOKENS = 4096  # a probe batch holds at most this many (the cpu preset's 2,048 whole): bounded on big models
PROBE_ROUNDS = 3  # timed rounds (a step in each precision), after one untimed to warm up
PROBE_SECONDS = 1.0  # no further round once this much is spent: a wide model's probe stays short
# nor once one precision is this many times faster: emulated bfloat16 (AVX2) is 3-5x slower, where
# the rounds' noise is a few percent (a step of AVX2's bf16 is ~0.5 s of the cpu preset, 4 of a busy machine)
PROBE_CLEAR = 2.0
CACHE_NAME = "precision.json"
CACHE_FORMAT = 1
CACHE_KEEP = 32  # verdicts kept (several machines may share one $SGPT_HOME); the newest first
CACHE_MAX_BYTES = 64 * 1024  # a larger file is not ours: ignored, not read
PRECISION_CODES = ("float32", "bfloat16")  # what a DDP broadcast sends: the index


@dataclass(frozen=True)
class Choice:
    """The run's matmul precision, and why (None where the user asked for it, or on CUDA)."""

    precision: str
    why: str | None = None


# --- what the CPU is ---

_CPUINFO_KEYS = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags",  # x86
                 "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features")  # Arm


def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's entry of /proc/cpuinfo (the fields that say what it is, not how busy it
    is); empty where there is none (macOS, Windows)."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    if fields:
                        break
                    continue
                key, sep, value = line.partition(":")
                if sep and key.strip() in _CPUINFO_KEYS:
                    fields.setdefault(key.strip(), " ".join(value.split()))
                if n > 200:  # one entry is ~30 lines
                    break
    except OSError:
        pass
    return fields


def cpu_name(info: dict[str, str] | None = None) -> str:
    """The CPU as its model name says it, with family and model where the name alone does not tell a
    generation (a VM's "AMD EPYC" is Zen 3 or Zen 4): "AMD EPYC (family 25, model 1)"."""
    info = cpuinfo() if info is None else info
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    elif "CPU part" in info:
        name += f" (implementer {info.get('CPU implementer', '?')}, part {info['CPU part']})"
    return name


def machine() -> dict:
    """What a verdict holds for: the CPU (name, family, model, flags), torch's version and the SIMD
    level it dispatches to, and the threads a step runs on."""
    info = cpuinfo()
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return {"cpu": cpu_name(info), "cpuinfo": info, "arch": platform.machine(), "capability": capability,
            "torch": str(torch.__version__), "threads": torch.get_num_threads()}


def probe_batch(batch_size: int, block_size: int) -> int:
    """The probe's batch: the run's, or fewer rows where that holds more than PROBE_TOKENS."""
    return max(1, min(batch_size, PROBE_TOKENS // block_size))


def cache_key(model_cfg, batch: int, block: int, where: dict) -> str:
    """One verdict's identity: the machine, the model's shape and the probe batch."""
    shape = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    blob = json.dumps({"machine": where, "model": shape, "batch": batch, "block": block}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- the probe ---

def measure(model: torch.nn.Module, batch: int, block: int, device: str = "cpu") -> dict[str, float]:
    """Seconds of a forward and backward of one `batch` x `block` batch of `model`, in float32 and
    under bfloat16 autocast: the median of up to PROBE_ROUNDS rounds, the two precisions alternating
    (so a machine that slows down slows both), after one untimed round. The run's random streams and
    the model's gradients are as they were before. A precision that fails to run is infinitely slow."""
    vocab = model.cfg.vocab_size
    times: dict[str, list[float] | None] = {"float32": [], "bfloat16": []}  # None: failed to run
    with torch.random.fork_rng(devices=[]):  # the probe's draws (tokens, dropout) are not the run's
        torch.manual_seed(0)
        x = torch.randint(0, vocab, (batch, block), device=device)
        y = torch.randint(0, vocab, (batch, block), device=device)

        def step(precision: str) -> float:
            model.zero_grad(set_to_none=True)  # as a training step: gradients written, not added to
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits, _ = model(x)
                loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
            loss.backward()
            return time.perf_counter() - t0

        was_training = model.training
        model.train()
        try:
            start = None
            for r in range(PROBE_ROUNDS + 1):
                order = PRECISION_CODES if r % 2 == 0 else PRECISION_CODES[::-1]
                for precision in order:
                    if times[precision] is None:
                        continue
                    try:
                        seconds = step(precision)
                    except RuntimeError:  # a kernel missing for bfloat16 on this CPU or torch
                        times[precision] = None
                        continue
                    if r:
                        times[precision].append(seconds)
                if start is None:
                    start = time.perf_counter()
                elif time.perf_counter() - start >= PROBE_SECONDS or _clear(times):
                    break
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
    return {p: statistics.median(t) if t else math.inf for p, t in times.items()}


def _clear(times: dict) -> bool:
    """One precision is so far ahead (PROBE_CLEAR times faster) that more rounds would not turn it."""
    f32, bf16 = times["float32"], times["bfloat16"]
    if not f32 or not bf16:
        return True  # one of them failed to run
    ratio = statistics.median(f32) / statistics.median(bf16)
    return not 1 / PROBE_CLEAR < ratio < PROBE_CLEAR


# --- the cache ---

def cache_path(home: Path | None = None) -> Path:
    return (data_home() if home is None else Path(home)) / CACHE_NAME


def _read_cache(path: Path) -> list[dict]:
    """The verdicts in the cache file, the well-formed ones only; none where the file is missing,
    not a regular file, too large, not JSON or not ours (it is then measured again and replaced)."""
    try:
        # O_NONBLOCK: a FIFO put there opens without waiting for a writer (and is refused below)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > CACHE_MAX_BYTES:
            return []
        data = os.read(fd, CACHE_MAX_BYTES + 1)
    except OSError:
        return []
    finally:
        os.close(fd)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or not isinstance(doc.get("verdicts"), list):
        return []
    return [v for v in doc["verdicts"][:CACHE_KEEP] if _well_formed(v)]


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _well_formed(v) -> bool:
    def seconds(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and (x == math.inf or 0 < x < 1e6)

    return (isinstance(v, dict) and isinstance(v.get("key"), str) and bool(_HEX64.match(v["key"]))
            and v.get("precision") in PRECISION_CODES
            and seconds(v.get("float32_s")) and seconds(v.get("bfloat16_s"))
            and math.isfinite(v["float32_s"]))


def _write_cache(path: Path, verdicts: list[dict]) -> None:
    """Replace the cache, atomically; where it cannot be written (a read-only home, a folder in its
    place) the run goes on, measuring again next time."""
    doc = {"format": CACHE_FORMAT, "verdicts": verdicts[:CACHE_KEEP]}
    # json writes an infinite time as Infinity, which it reads back (bfloat16 that failed to run)
    try:
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n", what="the precision cache")
    except (SgptError, OSError):
        pass


def verdict(f32: float, bf16: float) -> str:
    """bfloat16 where it is BF16_MARGIN faster than float32, float32 otherwise."""
    return "bfloat16" if bf16 > 0 and f32 / bf16 >= BF16_MARGIN else "float32"


def _why(precision: str, f32: float, bf16: float, how: str) -> str:
    if not math.isfinite(bf16):
        return f"float32: bfloat16 does not run on this CPU ({how})"
    ratio = f32 / max(bf16, 1e-12)
    if precision == "bfloat16":
        return f"bfloat16: {ratio:.2f}x float32 on this CPU ({how})"
    return f"float32: bfloat16 {ratio:.2f}x on this CPU ({how})"


# --- the choice ---

Measure = Callable[[torch.nn.Module, int, int], dict]


def resolve_precision(requested: str, device: str, model: torch.nn.Module, batch_size: int, block_size: int,
                      dist=None, *, probe: Measure | None = None, home: Path | None = None) -> Choice:
    """The run's precision. float32 or bfloat16 asked for: that. auto: bfloat16 on CUDA; on a CPU,
    float32 for a model narrower than BF16_CPU_MIN_WIDTH, else what the probe measured faster (a
    verdict cached for this machine, torch and shape, or measured now and cached). Under DDP rank 0
    measures and every rank takes its verdict (ranks must run the same precision)."""
    if requested != "auto":
        return Choice(requested)
    if device == "cuda":
        return Choice("bfloat16")
    width = model.cfg.n_embd
    if width < BF16_CPU_MIN_WIDTH:
        return Choice("float32", f"float32: {width} wide, under the {BF16_CPU_MIN_WIDTH} where bfloat16 "
                                 "pays on a CPU")
    world, rank = (getattr(dist, "world", 1), getattr(dist, "rank", 0)) if dist is not None else (1, 0)
    choice = _measured(model, batch_size, block_size, probe or measure, home) if rank == 0 else None
    if world > 1:
        import torch.distributed as tdist

        code = torch.tensor([PRECISION_CODES.index(choice.precision) if choice else 0])
        tdist.broadcast(code, src=0)
        choice = choice or Choice(PRECISION_CODES[int(code.item())], "rank 0's measure")
    return choice


def _measured(model, batch_size: int, block_size: int, probe: Measure, home: Path | None) -> Choice:
    batch = probe_batch(batch_size, block_size)
    key = cache_key(model.cfg, batch, block_size, machine())
    path = cache_path(home)
    verdicts = _read_cache(path)
    for v in verdicts:
        if v["key"] == key:  # the rule applied to the cached times (its `precision` is for a reader)
            precision = verdict(v["float32_s"], v["bfloat16_s"])
            return Choice(precision, _why(precision, v["float32_s"], v["bfloat16_s"], "cached"))
    t0 = time.perf_counter()
    seconds = probe(model, batch, block_size)
    f32, bf16 = float(seconds["float32"]), float(seconds["bfloat16"])
    precision = verdict(f32, bf16)
    took = time.perf_counter() - t0
    entry = {"key": key, "precision": precision, "float32_s": f32, "bfloat16_s": bf16, "cpu": cpu_name(),
             "torch": str(torch.__version__), "threads": torch.get_num_threads(),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if _well_formed(entry):
        _write_cache(path, [entry, *(v for v in verdicts if v["key"] != key)])
    return Choice(precision, _why(precision, f32, bf16, f"measured in {took:.1f} s"))


__all__ = ["BF16_CPU_MIN_WIDTH", "BF16_MARGIN", "Choice", "cpu_name", "cpuinfo", "machine", "measure",
           "resolve_precision", "verdict", "cache_path"]
