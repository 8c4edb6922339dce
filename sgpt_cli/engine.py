"""Text generation with an exported model: prefill the prompt once, then one character per step
from the key/value cache, streamed as a generator of text pieces.

What it holds: `GenerationStats`
(what a run cost; the sampling knobs, `SamplingParams`, are
declared in sgpt_cli.settings), `Engine.generate` (the decode loop, stop strings, Ctrl-C) and the two caches it
decodes with: `CpuCache` (numpy arrays through `session.run`) and `BoundCache` (OrtValues through
ONNX Runtime I/O binding: on CUDA the cache stays on the GPU between steps).

What it does not do: import torch, print, or know about terminals. onnxruntime + numpy only.

Past the trained window the cache rolls: once it holds block_size - 1 entries, the oldest is dropped
before each step, and position ids keep growing. Rotary positions are relative, so the model still
sees only distances below block_size, as in training, at the same cost per step as inside the window.
This costs nothing in quality: on 4976 characters of the validation text past the window, the shipped
2.7M-parameter model's loss was 1.2923 nats/char rolling, 1.2927 with a fresh full window per
character (nanoGPT's sample.py) and 1.2916 re-prefilling the latest half window when full
(benchmarks/bench_decode.py --window-quality). Graphs without position_ids cannot roll; for them
the engine re-prefills the latest half window when the window is full.
Absolute positions are re-based (one re-prefill of the window from position 0) every
`position_limit` characters, so float32 rotary angles never grow large enough to lose precision.

Batches (`Engine.generate_batch`): B rows decode in one loop, each with its own settings, RNG, stop
strings and window; a finished row leaves the batch at once (its cache rows are dropped). A row's
text is bitwise the text it gets alone, whatever shares the batch, because every row is computed
exactly as a batch of one computes it (and `generate` IS a batch of one for such models):
- each prompt is prefilled alone (batch 1, its own length, no padding), as the single run does;
- in the decode steps each row's cache has the same width and layout alone as in any batch: left-
  padded to at least block_size - 1 columns (`attention_mask` 0 on the padding), growing by one a
  step and cut back by DROP_EVERY columns every DROP_EVERY steps; rows join a batch only right after
  such a cut. ONNX Runtime's softmax and matmul sums depend on how many columns there are, not on
  the rows beside them, so equal widths give equal bits (measured: unequal widths do not);
- the graph looks rotary angles up instead of calling Cos/Sin (sgpt_cli.model.rotary_tables), and
  the int8 export quantizes activations per row (sgpt_cli.export.quantize_int8).
Models without `attention_mask` (older exports) and the I/O-bound CUDA cache run the rows of a batch
one after another through the plain path, which is exact too.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from sgpt_cli.errors import SgptError, UsageError, first_line
from sgpt_cli.interface import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, past_names, present_names
from sgpt_cli.sampling import Sampler
from sgpt_cli.settings import SamplingParams  # noqa: F401  (declared with the settings; re-exported)

POSITION_LIMIT = 1 << 14  # float32 angle error at this position: ~1e-3 rad, far below what matters
DROP_EVERY = 16  # padded decoding cuts its cache every 16 steps: one numpy copy per 16 steps, not per step


@dataclass
class GenerationStats:
    prompt_chars: int  # ids fed: the known prompt characters in the window, or 1 ("\n") for none
    chars: int  # characters yielded
    ttft_s: float  # from the call to the first generated character (prefill + first step)
    seconds: float  # from the call to the end, the consumer's time between pieces included
    chars_per_s: float  # chars / seconds
    stop_reason: str  # "max_tokens" | "stop" | "interrupted"


@dataclass
class RowEvent:
    """What `Engine.generate_batch` yields: text for request `index`, and its stats once it is done."""
    index: int  # the request's place in the list given
    piece: str  # text made since the last event of this row (may be "")
    stats: GenerationStats | None = None  # set on the row's last event only


def _stats(prompt_chars: int, yielded: int, t0: float, ttft: float | None, reason: str) -> GenerationStats:
    seconds = time.perf_counter() - t0
    return GenerationStats(prompt_chars=prompt_chars, chars=yielded, ttft_s=seconds if ttft is None else ttft,
                           seconds=seconds, chars_per_s=yielded / seconds if seconds > 0 else 0.0,
                           stop_reason=reason)


def _runtime_failed(model, exc: Exception) -> SgptError:
    """ONNX Runtime's own exception types (they derive from Exception) as one line for the user."""
    return SgptError(f"ONNX Runtime failed while generating with {model.path} ({first_line(exc)}); "
                     "re-export the model with `sgpt export`")


def check_interface(model) -> None:
    """The inputs and outputs the decode loop feeds and reads (sgpt_cli.interface)."""
    need_in = [INPUT_IDS] + past_names(model.n_layer)
    need_out = [LOGITS] + present_names(model.n_layer)
    missing = [n for n in need_in if n not in model.input_names] + [n for n in need_out if n not in model.output_names]
    if missing:
        raise SgptError(f"{model.path} does not follow the sgpt ONNX interface (no {missing[0]!r}); "
                        "re-export it with `sgpt export`")


class CpuCache:
    """The cache as numpy arrays, (1, n_head, P, head_dim) per layer and key/value, fed back through
    `session.run`. Feeds are prepared once; a step changes two scalars and swaps the cache arrays."""

    def __init__(self, model):
        self.model = model
        self.session = model.session
        self.past_names = past_names(model.n_layer)
        self.out_names = [LOGITS] + present_names(model.n_layer)
        self.feed: dict[str, np.ndarray] = {}
        self.one_position = np.zeros((1, 1), dtype=np.int64)
        self.length = 0

    def run(self, ids: np.ndarray, start: int, drop: int = 0) -> np.ndarray:
        """Feed ids (T,) at absolute positions start.. after dropping the `drop` oldest cached
        entries (drop = -1: start from an empty cache). Returns the last position's logits (V,)."""
        T = ids.shape[0]
        feed = self.feed
        if drop < 0 or not feed:
            empty = np.zeros((1, self.model.n_head, 0, self.model.head_dim), dtype=self.model.cache_dtype)
            feed.update((name, empty) for name in self.past_names)
            self.length = 0
        elif drop:
            for name in self.past_names:
                feed[name] = np.ascontiguousarray(feed[name][:, :, drop:])  # ONNX Runtime takes contiguous arrays
            self.length -= drop
        feed[INPUT_IDS] = ids.reshape(1, T)
        if self.model.has_position_ids:
            if T == 1:
                self.one_position[0, 0] = start  # the decode step: reuse one (1, 1) array
                feed[POSITION_IDS] = self.one_position
            else:
                feed[POSITION_IDS] = np.arange(start, start + T, dtype=np.int64).reshape(1, T)
        try:
            outs = self.session.run(self.out_names, feed)
        except Exception as exc:  # onnxruntime's exception types
            raise _runtime_failed(self.model, exc) from None
        for name, present in zip(self.past_names, outs[1:]):
            feed[name] = present
        self.length += T
        return outs[0][0, -1]


class BoundCache:
    """The cache as OrtValues on `device` ("cuda" or "cpu"), fed back through ONNX Runtime I/O
    binding: on a GPU the cache stays in GPU memory between steps, and only the ids, positions and
    one row of logits cross the bus. Dropping the oldest entries runs a small Slice graph on the
    same device. Tested here with device "cpu"; on CUDA it is UNTESTED (no GPU was available)."""

    def __init__(self, model, device: str = "cuda", trim=None):
        """trim: a session of `trim_session(model, device)`, to share one between generations."""
        self.model = model
        self.session = model.session
        self.device = device
        n = model.n_layer
        self.past_names = past_names(n)
        self.present_names = present_names(n)
        self.values: list = []  # OrtValues on the device, (1, n_head, P, head_dim), [k0, v0, k1, ...]
        self.length = 0
        self.trim = trim if trim is not None else trim_session(model, device)

    def _drop(self, drop: int) -> None:
        b = self.trim.io_binding()
        b.bind_cpu_input("drop", np.array([drop], dtype=np.int64))
        for i, v in enumerate(self.values):
            b.bind_ortvalue_input(f"x{i}", v)
        for i in range(len(self.values)):
            b.bind_output(f"y{i}", self.device)
        try:
            self.trim.run_with_iobinding(b)
        except Exception as exc:  # onnxruntime's exception types
            raise _runtime_failed(self.model, exc) from None
        self.values = b.get_outputs()  # in the order bound: y0, y1, ...
        self.length -= drop

    def run(self, ids: np.ndarray, start: int, drop: int = 0) -> np.ndarray:
        """As CpuCache.run."""
        T = ids.shape[0]
        if drop < 0 or not self.values:
            self.values, self.length = [], 0
        elif drop:
            self._drop(drop)
        b = self.session.io_binding()
        b.bind_cpu_input(INPUT_IDS, np.ascontiguousarray(ids, dtype=np.int64).reshape(1, T))
        if self.model.has_position_ids:
            b.bind_cpu_input(POSITION_IDS, np.arange(start, start + T, dtype=np.int64).reshape(1, T))
        if self.values:
            for name, v in zip(self.past_names, self.values):
                b.bind_ortvalue_input(name, v)
        else:
            empty = np.zeros((1, self.model.n_head, 0, self.model.head_dim), dtype=self.model.cache_dtype)
            for name in self.past_names:
                b.bind_cpu_input(name, empty)
        b.bind_output(LOGITS, "cpu")  # one (1, T, V) row block back to the host for sampling
        for name in self.present_names:
            b.bind_output(name, self.device)
        try:
            self.session.run_with_iobinding(b)
        except Exception as exc:  # onnxruntime's exception types
            raise _runtime_failed(self.model, exc) from None
        outs = b.get_outputs()  # in the order bound: logits, then the presents
        self.values = list(outs[1:])
        self.length += T
        return outs[0].numpy()[0, -1]


def trim_session(model, device: str):
    """An InferenceSession on `device` that drops the oldest cached entries of every layer."""
    import onnxruntime as ort

    from sgpt_cli.onnx_model import providers_for

    return ort.InferenceSession(_slice_graph(2 * model.n_layer, model.cache_dtype), providers=providers_for(device)[:1])


def _slice_graph(n: int, dtype) -> bytes:
    """ONNX bytes: y_i = x_i[:, :, drop:, :] for i < n (dropping the oldest cached positions); built
    without the onnx package, which the runtime install does not have (sgpt_cli.onnx_build)."""
    from sgpt_cli.onnx_build import slice_graph

    return slice_graph(n, float16=dtype == np.float16)


class StopMatcher:
    """Holds back generated text while it may still become a stop string. `push` returns the text
    that is certainly not part of a stop string, and whether a stop string was completed."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stops)
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        # keep the longest tail of the pending text that begins some stop string
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Row:
    """One request in a batched run: its sampler, RNG, stop strings, window and progress."""

    def __init__(self, index: int, ids: np.ndarray, params: SamplingParams, vocab_size: int, window: int):
        self.index, self.ids, self.params = index, ids, params
        # the RNG is seeded exactly as a single run seeds it: a row's draws do not depend on its batch
        self.sampler = Sampler(vocab_size, np.random.default_rng(params.seed), params.temperature,
                               params.top_k, params.top_p, params.repetition_penalty)
        self.stops = StopMatcher(params.stop)
        self.context = collections.deque(maxlen=window)  # ids the model sees for the next choice
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.n = 0  # characters sampled
        self.yielded = 0  # characters given out
        self.pos = 0  # absolute position of the next id fed
        self.logits: np.ndarray | None = None  # (V,) for the next choice
        self.done = False  # its last event was given

    def stats(self, reason: str) -> GenerationStats:
        self.done = True
        return _stats(int(len(self.ids)), self.yielded, self.t0, self.ttft, reason)

    def advance(self, chars: list[str]) -> tuple[str, str | None, int]:
        """One choice, as one turn of the single loop: (text to give out, stop reason when the row
        is done, else None, the id chosen)."""
        nxt = self.sampler(self.logits)
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0
        piece, stopped = self.stops.push(chars[nxt])
        self.n += 1
        if stopped:
            return self._give(piece), "stop", nxt
        if self.n == self.params.max_tokens:
            return self._give(piece + self.stops.flush()), "max_tokens", nxt
        if len(self.context) == self.context.maxlen:
            self.sampler.remove(self.context[0])
        self.context.append(nxt)
        self.sampler.add(nxt)
        return self._give(piece), None, nxt

    def _give(self, piece: str) -> str:
        self.yielded += len(piece)
        return piece


class Engine:
    """Generates text with one OnnxModel (batch 1). Not thread-safe: one generation at a time."""

    def __init__(self, model, cache: str = "auto"):
        """cache: "auto" (I/O binding on CUDA, numpy on the CPU), "numpy" or "bound" (CpuCache or
        BoundCache on the model's device)."""
        if cache not in ("auto", "numpy", "bound"):
            raise ValueError(f"cache must be auto, numpy or bound (got {cache!r})")
        check_interface(model)
        self.model = model
        self.tokenizer = model.tokenizer
        self.window = model.block_size
        self.position_limit = max(POSITION_LIMIT, 2 * self.window)
        self.last_stats: GenerationStats | None = None
        bound = cache == "bound" or (cache == "auto" and model.device == "cuda")
        self.cache_kind = "bound" if bound else "numpy"
        self._trim = None  # BoundCache's Slice session, made on first use
        # without position_ids the graph places tokens at past_sequence + j: no rolling possible,
        # so such a model re-prefills its latest half window when the window is full
        self.rolling = bool(model.has_position_ids)
        # rows of different lengths in one batch need the mask (and positions); see the module doc
        self.padded = bool(model.has_attention_mask and model.has_position_ids and self.cache_kind == "numpy")
        self._names = past_names(model.n_layer)
        self._outs = [LOGITS] + present_names(model.n_layer)

    def _new_cache(self):
        if self.cache_kind == "numpy":
            return CpuCache(self.model)
        if self._trim is None:  # one session for all generations: creating one costs milliseconds
            self._trim = trim_session(self.model, self.model.device)
        return BoundCache(self.model, self.model.device, self._trim)

    def unknown_chars(self, text: str) -> list[str]:
        return self.tokenizer.unknown(text)

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """The ids the model is fed: known characters only, "\\n" when none, the window's tail."""
        ids = self.tokenizer.encode(prompt, drop_unknown=True)
        if ids.size == 0:
            start = self.tokenizer.stoi.get("\n", 0)
            ids = np.array([start], dtype=np.int64)
        return ids[-self.window:]

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Text pieces as they are produced; `last_stats` is set when the iteration ends, however it
        ends. Bad params raise UsageError here, before the first piece. Ctrl-C (KeyboardInterrupt)
        during generation ends the iteration quietly with stop_reason "interrupted"."""
        params = params.checked()
        self.last_stats = None
        if self.padded and self.rolling:
            return self._generate_one(self.prompt_ids(prompt), params)
        return self._generate(self.prompt_ids(prompt), params)

    def _generate_one(self, ids: np.ndarray, params: SamplingParams) -> Iterator[str]:
        """A batch of one through the padded loop: the same arithmetic as every row of any batch."""
        row = _Row(0, ids, params, len(self.tokenizer.chars), self.window)
        try:
            for event in self._decode_padded([row], 1):
                if event.stats is not None:
                    self.last_stats = event.stats
                if event.piece:
                    yield event.piece
        finally:
            if self.last_stats is None:  # the consumer stopped iterating, or an error
                self.last_stats = row.stats("interrupted")

    def generate_batch(self, requests: list[tuple[str, SamplingParams]],
                       batch_size: int | None = None) -> Iterator[RowEvent]:
        """Generate for every (prompt, params) with at most `batch_size` rows at once (None: all).
        Yields RowEvents as text is made; each row's last event carries its stats. Each row's text is
        exactly what `generate(prompt, params)` gives alone. Bad params raise UsageError here, before
        anything runs. Ctrl-C ends every running row with stop_reason "interrupted" (their last
        events) and starts no more; rows not started get no event."""
        requests = [(prompt, params.checked()) for prompt, params in requests]
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise UsageError(f"--batch-size must be a whole number of at least 1 (got {batch_size})")
        self.last_stats = None
        vocab, W = len(self.tokenizer.chars), self.window
        rows = [_Row(i, self.prompt_ids(prompt), params, vocab, W) for i, (prompt, params) in enumerate(requests)]
        if self.padded and self.rolling:
            return self._decode_padded(rows, batch_size or max(len(rows), 1))
        return self._one_by_one(rows)

    def _one_by_one(self, rows: list[_Row]) -> Iterator[RowEvent]:
        """Batches for models without attention_mask: each row through the single path in turn."""
        for row in rows:
            gen = self._generate(row.ids, row.params)
            try:
                for piece in gen:
                    yield RowEvent(row.index, piece)
            finally:
                gen.close()
            yield RowEvent(row.index, "", self.last_stats)
            if self.last_stats.stop_reason == "interrupted":
                return

    # -- the padded (batched) decode loop ---------------------------------------------------------

    def _prefill(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """One prompt alone, batch 1, no padding: (last logits (V,), cache [(1, nh, L, hs)] * 2L)."""
        m = self.model
        T = len(ids)
        feed = {INPUT_IDS: ids.reshape(1, T).astype(np.int64),
                POSITION_IDS: np.arange(T, dtype=np.int64).reshape(1, T),
                ATTENTION_MASK: np.ones((1, T), dtype=np.int64)}
        empty = np.zeros((1, m.n_head, 0, m.head_dim), dtype=m.cache_dtype)
        feed.update((name, empty) for name in self._names)
        try:
            outs = self.session_run(feed)
        except Exception as exc:  # onnxruntime's exception types
            raise _runtime_failed(m, exc) from None
        return outs[0][0, -1], outs[1:]

    def session_run(self, feed: dict) -> list[np.ndarray]:
        return self.model.session.run(self._outs, feed)

    def _padded(self, cache: list[np.ndarray], width: int) -> tuple[list[np.ndarray], np.ndarray]:
        """A row's cache cut to its latest window - 1 entries, left-padded to `width` columns:
        ([(1, nh, width, hs)] * 2L, mask (1, width))."""
        n = min(cache[0].shape[2], self.window - 1)
        out = []
        for c in cache:
            p = np.zeros(c.shape[:2] + (width,) + c.shape[3:], dtype=c.dtype)
            if n:
                p[:, :, width - n:] = c[:, :, c.shape[2] - n:]
            out.append(p)
        mask = np.zeros((1, width), dtype=np.int64)
        mask[0, width - n:] = 1
        return out, mask

    def _decode_padded(self, rows: list[_Row], cap: int) -> Iterator[RowEvent]:
        """Rows through one decode loop (module doc: why each row's bits equal its single run's)."""
        chars, W = self.tokenizer.shown, self.window  # control characters made visible (tokenizer doc)
        base = W - 1  # the cache's width right after a cut: rows join only then
        waiting = collections.deque(rows)
        active: list[_Row] = []
        past: list[np.ndarray] = []  # 2L arrays (B, nh, width, hs)
        mask = np.zeros((0, base), dtype=np.int64)  # (B, width), 1 = a real cached character
        width = base
        memo: tuple[bytes, np.ndarray, list[np.ndarray]] | None = None  # the last prompt prefilled
        try:
            while waiting or active:
                if waiting and len(active) < cap and width == base:
                    joined = []
                    while waiting and len(active) + len(joined) < cap:
                        row = waiting.popleft()
                        row.t0 = time.perf_counter()
                        if row.params.max_tokens == 0:
                            yield RowEvent(row.index, "", row.stats("max_tokens"))
                            continue
                        key = row.ids.tobytes()
                        if memo is None or memo[0] != key:  # N samples of one prompt: one prefill
                            memo = (key, *self._prefill(row.ids))
                        row.logits, cache = memo[1], memo[2]
                        row.context.extend(int(i) for i in row.ids)
                        row.sampler.add(row.ids)
                        row.pos = len(row.ids)
                        joined.append((row, *self._padded(cache, base)))
                    if joined:
                        active += [j[0] for j in joined]
                        past = [np.concatenate(([p] if len(p) else []) + [j[1][i] for j in joined])
                                for i, p in enumerate(past or [np.zeros((0,), np.float32)] * len(self._names))]
                        mask = np.concatenate([mask] + [j[2] for j in joined])
                if not active:
                    continue
                B = len(active)
                tokens = np.zeros((B, 1), dtype=np.int64)
                positions = np.zeros((B, 1), dtype=np.int64)
                real = np.ones((B, 1), dtype=np.int64)  # 0: the row feeds a placeholder this step
                keep = []
                for b, row in enumerate(active):
                    piece, reason, nxt = row.advance(chars)
                    if reason is not None:
                        yield RowEvent(row.index, piece, row.stats(reason))
                        continue
                    if piece:
                        yield RowEvent(row.index, piece)
                    keep.append(b)
                    if row.pos >= self.position_limit:
                        # re-base positions: prefill the window alone from 0 (as a single run does
                        # at the same step); the row feeds a masked placeholder in this step
                        row.logits, cache = self._prefill(np.array(row.context, dtype=np.int64))
                        row.pos = len(row.context)
                        fresh, fresh_mask = self._padded(cache, width)
                        for p, f in zip(past, fresh):
                            p[b] = f[0]
                        mask[b] = fresh_mask[0]
                        real[b, 0] = 0
                    else:
                        tokens[b, 0], positions[b, 0] = nxt, row.pos
                        row.pos += 1
                if len(keep) < B:  # finished rows leave the batch: the cost follows the rows running
                    active = [active[b] for b in keep]
                    past = [p[keep] for p in past]
                    mask, tokens, positions, real = mask[keep], tokens[keep], positions[keep], real[keep]
                    if not active:
                        past, mask, width = [], np.zeros((0, base), dtype=np.int64), base
                        continue
                mask = np.concatenate([mask, real], axis=1)  # (B, width + 1)
                feed = dict(zip(self._names, past))
                feed.update({INPUT_IDS: tokens, POSITION_IDS: positions, ATTENTION_MASK: mask})
                try:
                    outs = self.session_run(feed)
                except Exception as exc:  # onnxruntime's exception types
                    raise _runtime_failed(self.model, exc) from None
                logits, past = outs[0], outs[1:]
                width += 1
                for b, row in enumerate(active):
                    if real[b, 0]:
                        row.logits = logits[b, 0]
                # the window: at most W - 1 real cached characters before the next step
                over = np.flatnonzero(mask.sum(axis=1) > W - 1)
                for b in over:
                    mask[b, int(np.argmax(mask[b]))] = 0  # the oldest real one
                if width == base + DROP_EVERY:
                    past = [np.ascontiguousarray(p[:, :, DROP_EVERY:]) for p in past]
                    mask = np.ascontiguousarray(mask[:, DROP_EVERY:])
                    width = base
        except KeyboardInterrupt:
            for row in active:  # the caller decides what Ctrl-C means; the stats say it happened
                if not row.done:
                    yield RowEvent(row.index, "", row.stats("interrupted"))

    def _generate(self, ids: np.ndarray, params: SamplingParams) -> Iterator[str]:
        t0 = time.perf_counter()
        ttft = None
        yielded = 0
        reason = "interrupted"
        chars = self.tokenizer.shown  # control characters made visible: no escape reaches a terminal
        W = self.window
        rng = np.random.default_rng(params.seed)
        sampler = Sampler(len(chars), rng, params.temperature, params.top_k, params.top_p,
                          params.repetition_penalty)
        stops = StopMatcher(params.stop)
        context = collections.deque(maxlen=W)  # ids the model sees for the next choice
        token = np.zeros(1, dtype=np.int64)  # reused one-id input, (1,)
        try:
            if params.max_tokens == 0:
                reason = "max_tokens"
                return
            cache = self._new_cache()
            context.extend(int(i) for i in ids)
            sampler.add(ids)
            logits = cache.run(ids, 0, drop=-1)
            pos = len(ids)  # absolute position of the next token
            for n in range(params.max_tokens):
                nxt = sampler(logits)
                if ttft is None:
                    ttft = time.perf_counter() - t0
                piece, stopped = stops.push(chars[nxt])
                if piece:
                    yielded += len(piece)
                    yield piece
                if stopped:
                    reason = "stop"
                    return
                if n == params.max_tokens - 1:
                    break  # the last character needs no logits after it
                if len(context) == W:
                    sampler.remove(context[0])
                context.append(nxt)
                sampler.add(nxt)
                if not self.rolling and cache.length >= W:
                    keep = np.array(list(context)[-(W // 2):], dtype=np.int64)
                    logits = cache.run(keep, 0, drop=-1)
                    pos = len(keep)
                elif pos >= self.position_limit:
                    # re-base positions: one prefill of the whole window from position 0
                    logits = cache.run(np.array(context, dtype=np.int64), 0, drop=-1)
                    pos = len(context)
                else:
                    token[0] = nxt
                    logits = cache.run(token, pos, drop=max(cache.length - (W - 1), 0))
                    pos += 1
            tail = stops.flush()
            if tail:
                yielded += len(tail)
                yield tail
            reason = "max_tokens"
        except KeyboardInterrupt:
            reason = "interrupted"  # the caller decides what Ctrl-C means; the stats say it happened
        finally:
            # GeneratorExit (the consumer stopped iterating) passes through here with "interrupted",
            # and so does an error (it propagates; the stats only say the text is incomplete)
            seconds = time.perf_counter() - t0
            self.last_stats = GenerationStats(
                prompt_chars=int(len(ids)), chars=yielded,
                ttft_s=seconds if ttft is None else ttft, seconds=seconds,
                chars_per_s=yielded / seconds if seconds > 0 else 0.0, stop_reason=reason)
