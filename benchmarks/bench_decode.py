"""Decoding speed: sgpt's KV-cache engine in ONNX Runtime against a nanoGPT-style full-recompute loop.

    python benchmarks/bench_decode.py [--chars 1000] [--repeats 5] [--threads 2]
        [--n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --vocab 65] [--onnx PATH]
        [--device cpu|cuda] [--no-int8] [--no-baseline] [--no-tiny] [--json PATH]
    python benchmarks/bench_decode.py --window-quality --onnx TRAINED.onnx [--text PATH]
    python benchmarks/bench_decode.py --against CHECKOUT    # this code and file vs an earlier commit's

Builds models with random weights of the given dimensions (default: ~10M parameters, nanoGPT's
shakespeare_char shape), saved as sgpt checkpoints and exported with `sgpt_cli.train.onnx_export.export`
(verified against PyTorch), plus an int8 copy (`sgpt_cli.train.onnx_graph.build(int8=True)`). Then, for --chars characters end
to end from a one-character prompt, it times:

  * baseline: nanoGPT's sample.py loop in PyTorch eager: the whole (cropped) window re-run per
    character, softmax, torch.multinomial;
  * sgpt_cli.infer.engine.Engine on the fp32 and the int8 file (prefill, then one step per character from
    the cache, rolling past block_size);
  * the same engine on a tiny model (2 layers, 32 wide, one thread), where nearly all the time is
    per-step overhead.

Each figure is the median of --repeats runs (the baseline's of --baseline-repeats): characters per
wall-clock second, and for the engine also CPU milliseconds per character (all threads together),
which other load on the machine disturbs less. --onnx PATH times an existing file instead (the
baseline then gets random weights of its shape).

--window-quality checks the rolling window's quality instead: the loss on text past block_size
with the engine's rolling cache (the ring), with re-prefilling the latest half window when full, and
with a fresh full pass over the latest block_size characters per character (nanoGPT; the reference).
It needs a trained model (--onnx) and scores the validation split (last 10%) of --text.

--against CHECKOUT times batch-1 decoding (1000 characters) and the whole `complete -n 200` process
of this checkout's code and shipped model against another checkout's, interleaved (benchmarks/versions.py).
--threads 0 (the default) is the engine's own choice (sgpt_cli.infer.onnx_model.DEFAULT_THREADS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgpt_cli.infer.engine import Engine, SamplingParams  # noqa: E402
from sgpt_cli.infer.onnx_model import OnnxModel, open_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "data" / "tinyshakespeare.txt"  # where `sgpt train` and `sgpt eval` download it
SHIPPED = REPO / "models" / "shakespeare.onnx"


def vocab_for(n: int) -> list[str]:
    """tiny-shakespeare's 65 characters (the shipped model's vocabulary) when n is 65, else the first
    n printable code points."""
    if n == 65 and SHIPPED.exists():
        chars = OnnxModel(SHIPPED, device="cpu").tokenizer.chars
        if len(chars) == 65:
            return list(chars)
    base = ["\n"] + [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + n)]
    return base[:n]


def build_models(dims: dict, folder: Path, int8: bool) -> tuple[Path, Path | None, "GPT"]:  # noqa: F821
    """Random-weight checkpoint of `dims` -> verified fp32 ONNX (+ int8 copy). Returns the paths and
    the PyTorch model (the baseline runs the same weights)."""
    import onnx
    import torch

    from sgpt_cli.train import checkpoint
    from sgpt_cli.config import ModelConfig, TrainConfig
    from sgpt_cli.train import onnx_graph
    from sgpt_cli.train.onnx_export import export, save_checked, set_metadata
    from sgpt_cli.train.model import GPT
    from sgpt_cli.infer.tokenizer import CharTokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=dims["vocab"], block_size=dims["block_size"], n_layer=dims["n_layer"],
                      n_head=dims["n_head"], n_embd=dims["n_embd"])
    model = GPT(cfg).eval()
    ckpt = folder / "random.pt"
    checkpoint.save(ckpt, {
        "model": model.state_dict(), "model_config": dataclasses.asdict(cfg),
        "train_config": dataclasses.asdict(TrainConfig()), "vocab": CharTokenizer(vocab_for(cfg.vocab_size)).to_json(),
        "iter": 0, "val_loss": None, "data_sha256": "", "train_seconds": 0.0, "hardware": "random weights",
    })
    fp32 = folder / "random.onnx"
    report = export(ckpt, fp32)
    print(f"  exported {model.num_params() / 1e6:.2f}M parameters in {report['seconds']:.0f} s, "
          f"max |ONNX - PyTorch| {report['max_abs_diff']:.1e}", flush=True)
    q = None
    if int8:
        # the export's own int8 path also scores the validation split twice; for timing, quantize only
        q = folder / "random.int8.onnx"
        proto = onnx.load(str(fp32))
        quantized = onnx_graph.build({k: v.numpy() for k, v in model.state_dict().items()}, cfg, int8=True)
        set_metadata(quantized, {**{p.key: p.value for p in proto.metadata_props}, "sgpt.quantization": "int8"})
        save_checked(quantized, q)
    return fp32, q, model


def time_engine(path: Path, chars: int, repeats: int, threads: int,
                device: str = "cpu") -> tuple[list[float], list[float]]:
    """One request end to end (prefill included), one figure per repeat: characters per wall
    second, and CPU milliseconds per character (all threads; less sensitive to other load). On
    "cuda" the engine keeps its cache on the GPU (I/O binding), as `sgpt complete --device cuda` does."""
    engine = Engine(OnnxModel(path, session=open_session(str(path), device, threads or None)))
    params = SamplingParams(temperature=1.0, max_tokens=chars, seed=0)
    for _ in engine.stream("\n", dataclasses.replace(params, max_tokens=20)):
        pass  # warm-up: first-run allocations
    rates, cpu_ms = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(len(e.text) for e in engine.stream("\n", dataclasses.replace(params, seed=r)))
        rates.append(n / (time.perf_counter() - t0))
        cpu_ms.append((time.process_time() - c0) * 1e3 / n)
    return rates, cpu_ms


def time_baseline(model, chars: int, repeats: int, threads: int, device: str = "cpu") -> list[float]:
    """nanoGPT sample.py: crop to block_size, full forward, last row, softmax, multinomial."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    model = model.to(device)
    T = model.cfg.block_size
    rates = []
    with torch.no_grad():
        for r in range(repeats):
            gen = torch.Generator(device=device).manual_seed(r)
            idx = torch.zeros((1, 1), dtype=torch.long, device=device)
            t0 = time.perf_counter()
            for _ in range(chars):
                logits, _ = model(idx[:, -T:])
                probs = F.softmax(logits[:, -1, :] / 1.0, dim=-1)
                idx = torch.cat((idx, torch.multinomial(probs, 1, generator=gen)), dim=1)
            rates.append(chars / (time.perf_counter() - t0))
    return rates


def window_quality(path: Path, text_path: Path, segments: int, length: int) -> dict:
    """Mean loss (nats/char) on characters past the first block_size of each segment, predicted with
    teacher forcing by: the engine's ring (the window rolls, positions grow); re-prefilling the latest
    half window whenever the window is full; and a fresh full pass over the latest block_size
    characters per character (nanoGPT's sample.py, the reference). Segments are evenly spaced over
    the validation split of the text."""
    from sgpt_cli.data import split_text
    from sgpt_cli.infer.engine import HostCache
    from sgpt_cli.infer.onnx_model import log_softmax

    model = OnnxModel(path, session=open_session(str(path), "cpu"))
    W = model.block_size
    ids = model.tokenizer.encode(split_text(text_path.read_text(encoding="utf-8"))[1], drop_unknown=True)
    length = min(length, len(ids) // segments)
    losses: dict[str, list[float]] = {"rolling": [], "refill": [], "fresh": []}

    def nll(logits: np.ndarray, target: int) -> float:
        return -float(log_softmax(logits.astype(np.float64))[target])

    for s in range(segments):
        seg = ids[s * (len(ids) // segments):][:length]
        for how in ("rolling", "refill"):
            cache = HostCache(model, 1)
            logits, pos = cache.prefill(0, seg[:W - 1]), W - 1
            for t in range(W - 1, len(seg)):
                if t >= W:
                    losses[how].append(nll(logits, seg[t]))
                if how == "refill" and pos >= W:
                    logits, pos = cache.prefill(0, seg[t + 1 - W // 2:t + 1]), W // 2
                else:
                    cache.tokens[0, 0], cache.positions[0, 0] = seg[t], pos
                    logits, pos = cache.step(1)[0].copy(), pos + 1
        windows = np.stack([seg[t - W:t] for t in range(W, len(seg))])  # (n, W): the latest W characters
        for b in range(0, len(windows), 16):
            out, _ = model.forward(windows[b:b + 16])
            logp = log_softmax(out[:, -1].astype(np.float64))
            targets = seg[W + b:W + b + len(out)]
            losses["fresh"] += (-logp[np.arange(len(out)), targets]).tolist()
    return {k: float(np.mean(v)) for k, v in losses.items()} | {"chars_scored": len(losses["fresh"])}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def report_engine(results: dict, name: str, label: str, rates: list[float], cpu_ms: list[float]) -> None:
    results[f"engine_{name}"] = median(rates)
    results[f"engine_{name}_cpu_ms_per_char"] = median(cpu_ms)
    print(f"engine {label:13s}: {median(rates):7.0f} chars/s, {median(cpu_ms):.2f} CPU ms/char  (medians of "
          f"{len(rates)}: {', '.join(f'{r:.0f}' for r in rates)} chars/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int, default=1000, help="characters per run (default 1000)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per engine figure (median)")
    ap.add_argument("--baseline-repeats", type=int, default=3, help="runs of the slow PyTorch baseline")
    ap.add_argument("--threads", type=int, default=0,
                    help="ONNX Runtime threads (0: the engine's default) and PyTorch's (0: 2)")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="compare this code and shipped model with CHECKOUT's (a git worktree of an earlier commit)")
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--onnx", type=Path, help="time this exported model instead of random weights")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="ONNX Runtime execution provider (and the baseline's PyTorch device); cuda needs a GPU")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 copy")
    ap.add_argument("--no-baseline", action="store_true", help="skip the PyTorch full-recompute loop")
    ap.add_argument("--no-tiny", action="store_true", help="skip the per-step overhead figure")
    ap.add_argument("--window-quality", action="store_true",
                    help="score --text past block_size: rolling cache vs re-prefill vs fresh windows (needs --onnx)")
    ap.add_argument("--text", type=Path, default=TEXT,
                    help="text for --window-quality (its last 10%%); `sgpt eval` downloads the default")
    ap.add_argument("--segments", type=int, default=4, help="--window-quality: evenly spaced stretches")
    ap.add_argument("--segment-chars", type=int, default=1000, help="--window-quality: characters per stretch")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    if args.against:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from versions import compare

        results = compare(args.against, ("decode", "startup"))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return
    results: dict = {"chars": args.chars, "threads": args.threads, "device": args.device, "cpu_count": os.cpu_count(),
                     "load_avg_before": os.getloadavg()[0]}
    if args.window_quality:
        if not args.onnx:
            ap.error("--window-quality needs --onnx PATH of a trained model")
        q = window_quality(args.onnx, args.text, args.segments, args.segment_chars)
        results["window_quality"] = q
        print(f"loss past block_size on {q['chars_scored']} characters (nats/char): rolling cache {q['rolling']:.4f}, "
              f"re-prefill half window {q['refill']:.4f}, fresh full window per character {q['fresh']:.4f}")
    else:
        bench_speed(args, results)
    results["load_avg_after"] = os.getloadavg()[0]
    print(f"load average before/after: {results['load_avg_before']:.2f} / {results['load_avg_after']:.2f} "
          f"on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def bench_speed(args, results: dict) -> None:
    dims = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                vocab=args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = None
        if args.onnx:
            m = OnnxModel(args.onnx, device="cpu")
            dims = dict(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                        vocab=m.tokenizer.vocab_size)
            files = {"onnx": args.onnx}
        else:
            print(f"building a random-weight model {dims}", flush=True)
            fp32, q, model = build_models(dims, folder, not args.no_int8)
            files = {"fp32": fp32, **({"int8": q} if q else {})}
        results["dims"] = dims
        for name, path in files.items():
            report_engine(results, name, f"{name} {args.device}",
                          *time_engine(path, args.chars, args.repeats, args.threads, args.device))
        if not args.no_tiny:
            tiny_dir = folder / "tiny"
            tiny_dir.mkdir()
            tiny, _, _ = build_models(dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab=65), tiny_dir, False)
            rates, cpu_ms = time_engine(tiny, args.chars, args.repeats, 1)
            report_engine(results, "tiny", "tiny (1 thr)", rates, cpu_ms)
            print(f"  2 layers x 32 wide: {1e6 / median(rates):.0f} us per character, nearly all of it per-step "
                  "overhead (ONNX Runtime's per-node cost, sampling, Python)")
        if not args.no_baseline:
            import torch

            from sgpt_cli.config import ModelConfig
            from sgpt_cli.train.model import GPT

            if model is None:
                torch.manual_seed(0)
                model = GPT(ModelConfig(vocab_size=dims["vocab"], block_size=dims["block_size"],
                                        n_layer=dims["n_layer"], n_head=dims["n_head"], n_embd=dims["n_embd"])).eval()
            rates = time_baseline(model, args.chars, args.baseline_repeats, args.threads or 2, args.device)
            results["baseline"] = median(rates)
            print(f"baseline      : {median(rates):7.0f} chars/s  (PyTorch eager, the whole window re-run per "
                  f"character; median of {len(rates)}: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
            for name in files:
                speedup = results[f"engine_{name}"] / results["baseline"]
                results[f"speedup_{name}"] = speedup
                print(f"speed-up {name}: {speedup:.1f}x")


if __name__ == "__main__":
    main()
