"""`sgpt serve`'s lanes: the engines that decode the server's requests, each stepped by a thread.

What it holds: `Batcher` (the engine's lanes: on the CPU, SERVE_LANES engines of a share of the rows
each, every one in a worker thread of its own that loops `Engine.step` while its lane has work and
sleeps on a condition when none; requests are submitted and cancelled from the event loop, and each
step's events come back to it with `loop.call_soon_threadsafe` into each request's bounded `Sink`,
sgpt_cli.web.limits) and `merged` (several events of one request as one).

What it does not do: speak HTTP (sgpt_cli.web.server does) or import a web framework.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING

from sgpt_cli.errors import SgptError, first_line
from sgpt_cli.infer.engine import Event
from sgpt_cli.web.limits import Sink
from sgpt_cli.web.openai_api import ApiError

if TYPE_CHECKING:  # the counters a lane updates; the server makes them
    from sgpt_cli.web.server import Metrics

RETRY_AFTER_S = 1  # what a 429 tells a client to wait: a row frees every few hundred characters

log = logging.getLogger("sgpt.serve")


# --- the engine's thread -----------------------------------------------------------------------------

class Batcher:
    """The engine's lanes, each an Engine of its own rows stepped by a worker thread of its own (a
    lane's Python, sampling and events, overlaps the other lanes' ONNX Runtime calls, which release
    the GIL, instead of waiting for them). `submit` and `cancel` are called on the event loop; a
    request's choices all go to the lane with the fewest in flight (they share its prefill); their
    numbers are (lane, engine request); events reach each request's Sink as (choice index, Event)."""

    def __init__(self, engines, metrics: Metrics, capacity: int):
        self.engines, self.metrics, self.capacity = list(engines), metrics, capacity
        self.cond = threading.Condition()
        self.sinks: dict[tuple[int, int], tuple[Sink, int]] = {}
        self.held: dict[tuple[int, int], list[Event]] = {}  # events so far of requests whose sink takes them whole
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = self.closed = False
        self.failure: str | None = None  # the last engine failure, said to the requests it ended
        self.threads = [threading.Thread(target=self._run, args=(lane,), name=f"sgpt-engine-{lane}", daemon=True)
                        for lane in range(len(self.engines))]
        self.outbox_lock = threading.Lock()
        self.outbox: list = []
        self.posted = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for t in self.threads:
            t.start()

    @property
    def in_flight(self) -> int:
        return len(self.sinks)

    @property
    def load(self) -> list[int]:
        """Choices in flight per lane."""
        counts = [0] * len(self.engines)
        for lane, _ in self.sinks:
            counts[lane] += 1
        return counts

    def submit(self, jobs, sink: Sink, whole: bool = False) -> list[tuple[int, int]]:
        """Queue one engine request per job; their events go to `sink`. whole: only each request's
        last event, holding all its text (a response that is not streamed: no wake-up per step)."""
        with self.cond:
            if self.stopping:
                raise ApiError(503, "the server is shutting down; try another", code="shutting_down",
                               kind="server_error")
            if len(self.sinks) + len(jobs) > self.capacity:
                raise ApiError(429, f"the server is busy: {len(self.sinks)} choices running or queued, "
                                    f"{self.capacity} at most (--rows + --queue); retry in {RETRY_AFTER_S} s",
                               code="rate_limit_exceeded", kind="rate_limit_error",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            load = self.load
            lane = min(range(len(self.engines)), key=load.__getitem__)
            ids = [(lane, self.engines[lane].submit(prompt, params)) for prompt, params in jobs]
            for index, key in enumerate(ids):
                self.sinks[key] = (sink, index)
                if whole:
                    self.held[key] = []
            self.metrics.in_flight = len(self.sinks)
            self.cond.notify_all()
        return ids

    def cancel(self, ids) -> None:
        with self.cond:
            for lane, rid in ids:
                if (lane, rid) in self.sinks:
                    self.engines[lane].cancel(rid)
            self.cond.notify_all()

    def stop_all(self) -> None:
        """No more requests; every one in flight ends at the next step."""
        with self.cond:
            self.stopping = True
            for lane, rid in self.sinks:
                self.engines[lane].cancel(rid)
            self.cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t.is_alive():
                t.join(max(deadline - time.monotonic(), 0.0))

    def _run(self, lane: int) -> None:
        engine = self.engines[lane]
        while True:
            with self.cond:
                while not self.closed and not engine.busy:
                    self.cond.wait()
                if self.closed:
                    return
            t0 = time.perf_counter()
            try:
                events = engine.step()
            except Exception as exc:  # SgptError from ONNX Runtime, or a bug: end what runs, keep serving
                self.failure = str(exc) if isinstance(exc, SgptError) else f"the engine failed ({first_line(exc)})"
                log.error(self.failure)
                events = engine.interrupt_all()
            self.metrics.stepped(engine.rows, time.perf_counter() - t0, events)
            if not self._route(lane, events):
                return

    def _route(self, lane: int, events: list[Event]) -> bool:
        """A lane's events to their sinks (a whole response's only when it ends); False when the loop is gone."""
        deliveries = []
        with self.cond:
            for e in events:
                key = (lane, e.request)
                sink = self.sinks.get(key)
                if sink is None:
                    continue
                held = self.held.get(key)
                if held is not None:
                    held.append(e)
                    if e.stats is None:
                        continue
                    e = merged(e.request, self.held.pop(key))
                if e.stats is not None:
                    del self.sinks[key]
                deliveries.append((sink[0], sink[1], e))
            self.metrics.in_flight = len(self.sinks)
            self.metrics.queued = sum(e.queued for e in self.engines)
            self.metrics.rows = sum(e.rows for e in self.engines)
        return not deliveries or self._post(deliveries)

    def _post(self, deliveries) -> bool:
        """Hand events to the loop; one wake-up at a time however fast the steps come (a loop that is
        behind takes them all at once). False when the loop is closed: nobody is waiting any more."""
        with self.outbox_lock:
            self.outbox.extend(deliveries)
            if self.posted:
                return True
            self.posted = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            return False
        return True

    def _deliver(self) -> None:
        with self.outbox_lock:
            deliveries, self.outbox, self.posted = self.outbox, [], False
        for queue, index, event in deliveries:
            queue.put_nowait((index, event))
            if event.stats is not None:
                queue.ended.set()


def merged(request: int, events: list[Event]) -> Event:
    """Several events of one request as one: their texts joined, their logprobs too, the last stats."""
    if len(events) == 1:
        return events[0]
    logprobs = None
    if events[0].logprobs is not None:
        logprobs = tuple(t for e in events for t in e.logprobs)
    stats = next((e.stats for e in reversed(events) if e.stats is not None), None)
    return Event(request, "".join(e.text for e in events), stats, logprobs)
