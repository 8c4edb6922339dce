"""Text generation with an exported model: requests in, a stream of events out, one decode loop.

What it holds: `Engine` (submit a request, step, receive its `Event`s, cancel it), `Event` (text made
since the last event, with what the model believed of each character when the request asked
(`SamplingParams.logprobs`: sgpt_cli.infer.logprobs); the request's `GenerationStats` on its last
event) and the two caches the one
decode step runs over: `HostCache` (numpy arrays that ONNX Runtime reads and writes in place through
I/O binding: the CPU) and `DeviceCache` (OrtValues on the model's device: CUDA; nothing crosses the
bus but ids, positions and one row of logits per request and step).

What it does not do: import torch, print, know about terminals or tokenization beyond the model's
vocabulary (prompts are ids of known characters; sgpt_cli.infer.prompt says what was dropped).

How a request runs (format 2 of docs/onnx-interface.md): its prompt, trimmed once to the window, is
prefilled alone (batch 1, its own length, on the model's prefill session) into its row of the
cache, `[rows, span, kv_width]` per layer; then each `step` samples one character for every
running row and feeds them all in one call (two parts at once when there are several rows:
sgpt_cli.infer.onnx_model.STEP_PARTS), each row at its own position. The graph writes the new keys and values in place at slot `position mod span` and
masks by position; the span is the smallest multiple of SPAN_STEP that holds every running row's
positions, and block_size once a row's window is full, so past the window the cache rolls by
itself, rows of any lengths share a step without padding, and attention reads only what was written.
A row's text is bitwise the text it gets alone, whatever shares its steps: its prefill is the same
call, masked slots add exact zeros to its sums for any span that is a multiple of 16 (measured), the
rotary angles are looked up (exact per element), and ONNX Runtime's matmuls give a row the same bits
in a batch of 1 or of 16, on 1 thread or 2 (measured, not promised: `sgpt export` and
tests/test_engine.py check it). Rows join at the next step and leave at once (a finished or
cancelled row's slot is refilled by the last row: one row copy, never a copy of the cache per step).

Positions are re-based every `POSITION_LIMIT` characters (the row's window prefilled again from 0),
so float32 rotary angles never grow large enough to lose precision; the tables cover 65,536.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from sgpt_cli.errors import SgptError, first_line, shown
from sgpt_cli.infer.interface import INPUT_IDS, LOGITS, POSITION_IDS, past_names, present_names
from sgpt_cli.infer.interrupt import RunGuard
from sgpt_cli.infer.logprobs import TokenLogprob, believed
from sgpt_cli.infer.sampling import Sampler
from sgpt_cli.settings import SamplingParams
from sgpt_cli.infer.stops import StopMatcher

POSITION_LIMIT = 1 << 14  # float32 angle error at this position: ~1e-3 rad, far below what matters
MAX_ROWS = 16  # rows decoded in one step by default: where a 2-core CPU's speed per row levels off
# The host cache binds slots in multiples of this until a row's window is full: attention then reads
# only the slots the rows have written (a quarter of the cache for 64-character rows). Any multiple
# of 16 kept a row's bits whatever the span (ONNX Runtime 1.31 on this CPU, 300 random rows: every
# multiple of 16 from 16 to 256 gave the bits of 256; a length of p + 1 did not); 32 leaves margin.
SPAN_STEP = 32


@dataclass(frozen=True)
class GenerationStats:
    prompt_chars: int  # ids fed: the known prompt characters in the window, or 1 ("\n") for none
    chars: int  # characters given out
    ttft_s: float  # from submission to the first generated character (waiting + prefill + first choice)
    seconds: float  # from submission to the end, the consumer's time between events included
    chars_per_s: float  # chars / seconds
    stop_reason: str  # "max_tokens" | "stop" | "interrupted" (Ctrl-C) | "cancelled"
    stop_string: str | None = None  # with "stop": which of the request's stop strings ended it


@dataclass(frozen=True)
class Event:
    """Text for request `request` (the number `Engine.submit` gave), and its stats on its last event."""
    request: int
    text: str  # made since this request's last event (may be "")
    stats: GenerationStats | None = None  # set on the request's last event only
    # what the model believed of each character of `text`, in order (their tokens joined are `text`
    # exactly: a held-back stop string's characters come with them, a dropped one's go with it);
    # None when the request asked for none (params.logprobs None: nothing computed)
    logprobs: tuple[TokenLogprob, ...] | None = None


def _runtime_failed(model, exc: Exception) -> SgptError:
    """ONNX Runtime's own exception types (they derive from Exception) as one line for the user."""
    return SgptError(f"ONNX Runtime failed while generating with {shown(model.path)} ({first_line(exc)}); "
                     "re-export the model with `sgpt export`")


class _Run:
    """One request in flight: its sampler, stop strings, window and progress."""

    def __init__(self, rid: int, ids: np.ndarray, params: SamplingParams, vocab: int, window: int):
        self.id, self.ids, self.params = rid, ids, params
        self.sampler = Sampler.from_params(vocab, params)  # seeded as it would be alone
        self.stops = StopMatcher(params.stop)
        self.context = collections.deque(maxlen=window)  # ids the model sees for the next choice
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.n = 0  # characters sampled
        self.given = 0  # characters given out
        self.pos = 0  # absolute position of the next id fed
        self.slot = -1  # its row in the cache while it runs
        self.logits: np.ndarray | None = None  # (V,) for the next choice
        # what the model believed of each character chosen and not given out yet (the stop matcher
        # holds text back); None: the request asked for no logprobs
        self.held: collections.deque[TokenLogprob] | None = None if params.logprobs is None else collections.deque()

    def take_logprobs(self, n: int) -> tuple[TokenLogprob, ...] | None:
        """The held TokenLogprobs of the next n characters given out, in order."""
        held = self.held
        if held is None:
            return None
        out = []
        while n > 0 and held:
            entry = held.popleft()
            if len(entry.token) > n:  # a stop string ends inside a piece of several characters
                entry, rest = entry.cut(n)
                held.appendleft(rest)
            out.append(entry)
            n -= len(entry.token)
        return tuple(out)

    def finish(self, text: str, reason: str) -> Event:
        logprobs = self.take_logprobs(len(text))
        if self.held:
            self.held.clear()  # a matched stop string's characters, never given out
        self.given += len(text)
        seconds = time.perf_counter() - self.t0
        stats = GenerationStats(prompt_chars=int(len(self.ids)), chars=self.given,
                                ttft_s=seconds if self.ttft is None else self.ttft, seconds=seconds,
                                chars_per_s=self.given / seconds if seconds > 0 else 0.0, stop_reason=reason,
                                stop_string=self.stops.matched if reason == "stop" else None)
        return Event(self.id, text, stats, logprobs)

    def choose(self, chars: list[str]) -> tuple[Event | None, int]:
        """One character: (the event to give, None when there is nothing to say; the id chosen, -1
        when the request is done and its event is its last)."""
        nxt = self.sampler(self.logits)
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0
        if self.held is not None:
            self.held.append(believed(self.logits, nxt, self.params.logprobs, chars))
        piece, stopped = self.stops.push(chars[nxt])
        self.n += 1
        if stopped and not piece and not self.given and getattr(self.params, "never_empty", False):
            # a chat reply whose speech the model closed at once: the closing characters stay in
            # the context but are given out as nothing, and the reply goes on (settings.ReplyParams)
            self.stops = StopMatcher(self.params.stop)
            if self.held:
                self.held.clear()
            stopped = False
        if stopped:
            return self.finish(piece, "stop"), -1
        if self.n == self.params.max_tokens:
            return self.finish(piece + self.stops.flush(), "max_tokens"), -1
        if len(self.context) == self.context.maxlen:
            self.sampler.remove(self.context[0])
        self.context.append(nxt)
        self.sampler.add(nxt)
        self.given += len(piece)
        return (Event(self.id, piece, logprobs=self.take_logprobs(len(piece))) if piece else None), nxt


def _wait_all(futures) -> None:
    """Wait for every future to finish, a Ctrl-C included: the guard's RunOptions, shared by every
    part, is terminated by then, so each ends within a node; the Ctrl-C is raised after."""
    interrupted = None
    for f in futures:
        while True:
            try:
                f.exception()
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
    if interrupted is not None:
        raise interrupted


class HostCache:
    """The cache as numpy arrays `[capacity, span, kv_width]` per layer and key/value, wrapped as
    OrtValues that share their memory: ONNX Runtime writes each step's keys and values into them in
    place. Running rows are the first B rows; a step binds views of them (one binding per B and span,
    kept). The span (the graph's `slots`) is block_size until `fit` is called; the engine fits it to
    the smallest multiple of SPAN_STEP that holds every running row's positions (block_size once a
    row's window is full), re-laying the rows out when it changes (growing at once, shrinking when
    it would at least halve): rarely, never per step."""

    def __init__(self, model, capacity: int):
        import onnxruntime as ort

        self.ort, self.model, self.session, self.capacity = ort, model, model.session, capacity
        self.window, self.width = model.block_size, model.kv_width
        size = capacity * model.block_size * model.kv_width
        self.flat = [np.zeros(size, dtype=np.float32) for _ in range(2 * model.n_layer)]  # room for any span
        self._lay_out(self.window)  # the whole window until `fit` says less will do
        self.tokens = np.zeros((capacity, 1), dtype=np.int64)
        self.positions = np.zeros((capacity, 1), dtype=np.int64)
        self.logits = np.zeros((capacity, 1, model.vocab_size), dtype=np.float32)
        self.bindings: dict[tuple[int, int], list] = {}  # (rows, span) -> [(session, binding)] a part each
        self.workers = None  # the threads that run a step's later parts (made when first needed)
        self.names = list(zip(past_names(model.n_layer), present_names(model.n_layer)))
        self.run_options = None  # the step's RunOptions: Ctrl-C terminates a run in flight (sgpt_cli.infer.interrupt)
        self.used = 0  # rows running (host: rows 0..used-1)

    def _lay_out(self, span: int) -> None:
        self.span = span
        self.buffers = [f[:self.capacity * span * self.width].reshape(self.capacity, span, self.width)
                        for f in self.flat]

    def fit(self, needed: int) -> None:
        """Make the span hold positions 0..needed-1 of every running row (module doc, SPAN_STEP)."""
        if self.model.slots_fixed:
            return
        span = min(self.window, -(-max(needed, 1) // SPAN_STEP) * SPAN_STEP)
        if span > self.span or 2 * span <= self.span:
            self._relayout(span)

    def _relayout(self, span: int) -> None:
        """Rows 0..used-1 into a layout of `span` slots, each row's first min(old, new) slots kept
        (they hold positions 0.. in order: a row with fewer positions than the window never wrapped)."""
        old, keep = self.buffers, min(self.span, span)
        order = range(self.used - 1, -1, -1) if span > self.span else range(self.used)  # no row over one not yet moved
        self._lay_out(span)
        for src, dst in zip(old, self.buffers):
            for r in order:
                dst[r, :keep] = src[r, :keep]  # numpy copies overlapping memory correctly
                dst[r, keep:] = 0.0

    def _bind(self, arrays: list[np.ndarray], tokens, positions, logits=None, session=None):
        value = self.ort.OrtValue.ortvalue_from_numpy
        b = (session or self.session).io_binding()
        b.bind_ortvalue_input(INPUT_IDS, value(tokens))
        b.bind_ortvalue_input(POSITION_IDS, value(positions))
        if logits is None:
            b.bind_output(LOGITS, "cpu")  # first: get_outputs()[0]
        else:
            b.bind_ortvalue_output(LOGITS, value(logits))
        for (past, present), a in zip(self.names, arrays):
            v = value(a)
            b.bind_ortvalue_input(past, v)
            b.bind_ortvalue_output(present, v)  # the same memory: updated in place
        return b

    def _run(self, binding, session=None) -> None:
        try:
            (session or self.session).run_with_iobinding(binding, self.run_options)
        except Exception as exc:  # onnxruntime's exception types (a terminated run: RunGuard makes it Ctrl-C)
            raise _runtime_failed(self.model, exc) from None

    def prefill(self, slot: int, ids: np.ndarray) -> np.ndarray:
        """ids (T,) at positions 0..T-1 into row `slot`, alone; returns the last logits (V,)."""
        T, session = len(ids), self.model.prefill_session  # every prefill on it: one row's bits
        b = self._bind([a[slot:slot + 1] for a in self.buffers], np.ascontiguousarray(ids.reshape(1, T)),
                       np.arange(T, dtype=np.int64).reshape(1, T), session=session)
        self._run(b, session)
        return b.get_outputs()[0].numpy()[0, -1].copy()

    def step(self, rows: int) -> np.ndarray:
        """Feed tokens[:rows] at positions[:rows] to rows 0..rows-1; returns logits (rows, V), a view
        valid until the next step. Several rows run as parts at once, each on a session of its own
        (sgpt_cli.infer.onnx_model.STEP_PARTS): a row's bits do not depend on its part."""
        parts = self.bindings.get((rows, self.span))
        if parts is None:
            parts = self.bindings[rows, self.span] = self._bind_parts(rows)
        if len(parts) == 1:
            self._run(parts[0][1], parts[0][0])
        else:
            self._run_parts(parts)
        return self.logits[:rows, 0]

    def _bind_parts(self, rows: int) -> list:
        sessions = self.model.step_sessions(rows)
        cuts = [rows * k // len(sessions) for k in range(len(sessions) + 1)]
        return [(s, self._bind([a[lo:hi] for a in self.buffers], self.tokens[lo:hi], self.positions[lo:hi],
                               self.logits[lo:hi], s)) for s, lo, hi in zip(sessions, cuts, cuts[1:])]

    def _run_parts(self, parts: list) -> None:
        """Parts 1.. on the worker threads, part 0 here; every part has ended when this returns (a
        Ctrl-C terminates them all: they share the guard's RunOptions)."""
        if self.workers is None:
            from concurrent.futures import ThreadPoolExecutor

            self.workers = ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="sgpt-step")
        futures = [self.workers.submit(self._run, b, s) for s, b in parts[1:]]
        try:
            self._run(parts[0][1], parts[0][0])
        finally:
            _wait_all(futures)  # no part may still write the cache when the caller moves on
        for f in futures:
            f.result()  # a part's error

    def take(self) -> int:
        """A row for a request joining: the next after the running ones (they are rows 0..B-1)."""
        self.used += 1
        return self.used - 1

    def release(self, slot: int) -> int | None:
        """Row `slot` is free: the last running row moves into it (its cache, token and position),
        so the running rows stay 0..B-1. Returns the row that moved, or None."""
        self.used -= 1
        last = self.used
        if slot == last:
            return None
        self.copy(last, slot)
        self.tokens[slot], self.positions[slot] = self.tokens[last], self.positions[last]
        return last

    def copy(self, src: int, dst: int) -> None:
        """Row src's cache into row dst (N samples of one prompt share its prefill)."""
        for a in self.buffers:
            a[dst] = a[src]


class DeviceCache(HostCache):
    """The cache as OrtValues on the model's device (CUDA), `[capacity, block_size, kv_width]` each, bound
    as past input and present output of every step (in place). Every step feeds all `capacity` rows
    (idle rows a placeholder at position 0: on a GPU the idle rows cost next to nothing, and device
    memory has no views to bind B rows of); a request is prefilled in a one-row buffer and put into
    its row by a small ScatterND graph (sgpt_cli.infer.onnx_build), on the device. The test suite runs it
    with device "cpu" (tests/test_engine.py), and nothing in it on CUDA: a change here needs a run on a GPU."""

    def __init__(self, model, capacity: int):
        super().__init__(model, capacity)
        ort, device = self.ort, model.device
        new = lambda rows: [ort.OrtValue.ortvalue_from_shape_and_type(  # noqa: E731
            (rows, model.block_size, model.kv_width), np.float32, device, 0) for _ in range(2 * model.n_layer)]
        self.buffers, self.scratch = new(capacity), new(1)
        self.span = model.block_size  # every row's ring whole: nothing to re-lay on the device
        self.free = list(range(capacity - 1, -1, -1))  # rows not in use
        for v in self.buffers + self.scratch:  # a placeholder row must hold finite numbers
            v.update_inplace(np.zeros(v.shape(), dtype=np.float32))
        from sgpt_cli.infer.onnx_model import providers_for
        from sgpt_cli.infer.onnx_build import put_row_graph

        self.put = ort.InferenceSession(put_row_graph(2 * model.n_layer), providers=providers_for(device)[:1])

    def _bind(self, values, tokens, positions, logits=None, session=None):
        b = self.session.io_binding()
        b.bind_cpu_input(INPUT_IDS, tokens)
        b.bind_cpu_input(POSITION_IDS, positions)
        b.bind_output(LOGITS, "cpu")  # one row of logits per request back to the host for sampling
        for (past, present), v in zip(self.names, values):
            b.bind_ortvalue_input(past, v)
            b.bind_ortvalue_output(present, v)
        return b

    def fit(self, needed: int) -> None:
        """The device binds every row's whole ring (block_size slots) always."""

    def _put(self, src: list, row: int, dst: list) -> None:
        b = self.put.io_binding()
        b.bind_cpu_input("row", np.array([[row]], dtype=np.int64))
        for i, (s, d) in enumerate(zip(src, dst)):
            b.bind_ortvalue_input(f"r{i}", s)
            b.bind_ortvalue_input(f"x{i}", d)
            b.bind_ortvalue_output(f"y{i}", d)
        try:
            self.put.run_with_iobinding(b, self.run_options)
        except Exception as exc:  # onnxruntime's exception types
            raise _runtime_failed(self.model, exc) from None

    def prefill(self, slot: int, ids: np.ndarray) -> np.ndarray:
        T = len(ids)
        b = self._bind(self.scratch, np.ascontiguousarray(ids.reshape(1, T)), np.arange(T, dtype=np.int64).reshape(1, T))
        self._run(b)
        self._put(self.scratch, slot, self.buffers)
        return b.get_outputs()[0].numpy()[0, -1].copy()

    def step(self, rows: int) -> np.ndarray:
        b = self._bind(self.buffers, self.tokens, self.positions)
        self._run(b)
        return b.get_outputs()[0].numpy()[:, 0]  # every row's: running rows sit at any slot

    def take(self) -> int:
        return self.free.pop()

    def release(self, slot: int) -> None:
        """Rows keep their rows on the device (no compaction): the freed one feeds a placeholder."""
        self.tokens[slot, 0] = self.positions[slot, 0] = 0
        self.free.append(slot)

    def copy(self, src: int, dst: int) -> None:
        """N samples of one prompt: the prefilled scratch row goes to each of their slots."""
        self._put(self.scratch, dst, self.buffers)


class Engine:
    """Generates text with one OnnxModel: requests join and leave a running batch at any step.
    `submit` and `cancel` may be called from any thread; `step`/`run` from one thread at a time."""

    def __init__(self, model, max_rows: int = MAX_ROWS, cache: str = "auto"):
        """cache: "auto" (device buffers on CUDA, host arrays on the CPU), "host" or "device"."""
        self.model = model
        self.tokenizer = model.tokenizer
        self.window = model.block_size
        self.max_rows = max_rows
        self.device_cache = cache == "device" or (cache == "auto" and model.device == "cuda")
        self._cache: HostCache | None = None  # made on the first step: capacity = max_rows
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Run] = collections.deque()
        self._running: list[_Run] = []  # each in its cache row, run.slot
        self._cancelled: set[int] = set()
        self._next_id = 0
        self.position_limit = POSITION_LIMIT

    # -- requests --------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """The ids the model is fed: known characters only, "\\n" when none, the window's tail."""
        ids = self.tokenizer.encode(prompt, drop_unknown=True)
        if ids.size == 0:
            ids = np.array([self.tokenizer.stoi.get("\n", 0)], dtype=np.int64)
        return ids[-self.window:]

    def submit(self, prompt: str, params: SamplingParams) -> int:
        """Queue a request (params: a checked SamplingParams); returns its number. It joins the
        running rows at the next step with a free row."""
        run = _Run(-1, self.prompt_ids(prompt), params, self.tokenizer.vocab_size, self.window)
        with self._lock:
            run.id, self._next_id = self._next_id, self._next_id + 1
            self._waiting.append(run)
        return run.id

    def cancel(self, request: int) -> None:
        """End a request at the next step (its last event says "cancelled"); unknown numbers are ignored."""
        with self._lock:
            self._cancelled.add(request)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._running)

    @property
    def rows(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    # -- the decode loop ---------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """Admit waiting requests into free rows (prefill), choose one character for every running
        row, feed them in one call. Returns the events made (each request's last one has stats).
        Ctrl-C (KeyboardInterrupt) inside ends every request in flight: their last events say
        "interrupted", after the text already chosen."""
        events: list[Event] = []
        try:
            with RunGuard() as run_options:  # a Ctrl-C ends even a run that never ends a step
                (self._cache or self._make_cache()).run_options = run_options
                self._step(events)
        except KeyboardInterrupt:
            events += self.interrupt_all()
        return events

    def _step(self, events: list[Event]) -> None:
        cache = self._cache or self._make_cache()
        self._drop_cancelled(events)
        self._admit(cache, events)
        chars = self.tokenizer.shown  # control characters made visible: no escape reaches a terminal
        done = []
        for run in self._running:
            event, nxt = run.choose(chars)
            if event is not None:
                events.append(event)
            if nxt < 0:
                done.append(run)
            else:
                cache.tokens[run.slot, 0], cache.positions[run.slot, 0] = nxt, run.pos
                run.pos += 1
        for run in done:
            self._release(run)
        if self._running:
            cache.fit(max(run.pos for run in self._running))  # every fed position has a slot
            logits = cache.step(len(self._running))
            for run in self._running:
                run.logits = logits[run.slot]  # read before the next step writes the buffer again
                if run.pos >= self.position_limit:  # re-base: the window again from position 0, alone
                    run.logits = cache.prefill(run.slot, np.array(run.context, dtype=np.int64))
                    run.pos = len(run.context)

    def _make_cache(self) -> HostCache:
        self._cache = (DeviceCache if self.device_cache else HostCache)(self.model, self.max_rows)
        return self._cache

    def _drop_cancelled(self, events: list[Event]) -> None:
        with self._lock:
            if not self._cancelled:
                return
            gone, self._cancelled = self._cancelled, set()
            waiting = [r for r in self._waiting if r.id in gone]
            self._waiting = collections.deque(r for r in self._waiting if r.id not in gone)
        for run in waiting + [r for r in self._running if r.id in gone]:
            events.append(run.finish(run.stops.flush() if run.slot >= 0 else "", "cancelled"))
            if run.slot >= 0:
                self._release(run)

    def _admit(self, cache: HostCache, events: list[Event]) -> None:
        """Waiting requests into free rows; N requests of one prompt in a row share one prefill."""
        shared: tuple[bytes, int, np.ndarray] | None = None
        while len(self._running) < self.max_rows:
            with self._lock:
                if not self._waiting:
                    return
                run = self._waiting.popleft()
            if run.params.max_tokens == 0:
                events.append(run.finish("", "max_tokens"))
                continue
            run.slot = cache.take()
            key = run.ids.tobytes()
            if shared is not None and shared[0] == key:
                cache.copy(shared[1], run.slot)
                run.logits = shared[2]
            else:
                cache.fit(max([len(run.ids)] + [r.pos for r in self._running]))
                run.logits = cache.prefill(run.slot, run.ids)
                shared = (key, run.slot, run.logits)
            run.context.extend(int(i) for i in run.ids)
            run.sampler.add(run.ids)
            run.pos = len(run.ids)
            self._running.append(run)

    def _release(self, run: _Run) -> None:
        """A finished row leaves at once (the cache says which row, if any, moved into its place)."""
        self._running.remove(run)
        moved = self._cache.release(run.slot)
        if moved is not None:
            next(r for r in self._running if r.slot == moved).slot = run.slot
        run.slot = -1

    def run(self) -> Iterator[Event]:
        """Steps until no request is waiting or running. Ctrl-C (KeyboardInterrupt) ends every
        request in flight with stop_reason "interrupted" (their last events) and returns; a consumer
        that stops iterating (closes the generator) ends them too, silently."""
        finished = False
        try:
            while self.busy:
                yield from self.step()
            finished = True
        except KeyboardInterrupt:  # between steps, in the consumer's code
            finished = True
            yield from self.interrupt_all()
        finally:
            if not finished:  # GeneratorExit, or an error: nothing may stay in flight
                self.interrupt_all()

    def interrupt_all(self) -> list[Event]:
        with self._lock:
            runs, self._waiting = list(self._running) + list(self._waiting), collections.deque()
        events = [r.finish("", "interrupted") for r in runs]
        for r in list(self._running):
            self._release(r)
        return events

    # -- conveniences over submit/run ----------------------------------------------------------------

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Event]:
        """One request alone: its events, the last with its stats (an Engine runs one stream at a time)."""
        self.submit(prompt, params)
        return self.run()

    def generate_batch(self, requests: Iterable[tuple[str, SamplingParams]],
                       batch_size: int | None = None) -> Iterator[Event]:
        """Every (prompt, params), pulled from `requests` only as rows free up (at most `batch_size`
        running and one waiting), each exactly its single run. Events carry the request's place in
        `requests` as their number."""
        source = iter(requests)
        if batch_size and batch_size > self.max_rows and self._cache is None:
            self.max_rows = batch_size  # the cache is made at the first step, this many rows wide
        limit = min(batch_size or self.max_rows, self.max_rows)
        base = self._next_id
        exhausted = finished = False
        try:
            while True:
                while not exhausted and len(self._running) + len(self._waiting) < limit:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                    else:
                        self.submit(*item)
                if not self.busy:
                    finished = True
                    return
                events = self.step()
                for e in events:
                    yield dataclasses.replace(e, request=e.request - base) if base else e  # (2% of a --batch run)
                if any(e.stats is not None and e.stats.stop_reason == "interrupted" for e in events):
                    finished = True  # Ctrl-C inside the step: start nothing more
                    return
        except KeyboardInterrupt:
            finished = True
            for e in self.interrupt_all():
                yield dataclasses.replace(e, request=e.request - base)
        finally:
            if not finished:
                self.interrupt_all()
