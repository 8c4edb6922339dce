"""`sgpt serve`: OpenAI's HTTP API over the engine, every request sharing its decode steps.

What it holds: `Batcher` (the engine's lanes: on the CPU, SERVE_LANES engines of a share of the rows
each, every one in a worker thread of its own that loops `Engine.step` while its lane has work and
sleeps on a condition when none; requests are submitted and cancelled from the event loop, and each
step's events come back to it with `loop.call_soon_threadsafe`), `Metrics`
(the counters /metrics writes in Prometheus' text format), the Starlette app (`build_app`: the
endpoints, OpenAI-style error objects for every failure, the key check, the body limit), and
`serve`, which binds the socket, prints where to reach the server and runs uvicorn until Ctrl-C or
SIGTERM.

How a request runs: its body is checked (sgpt_cli.infer.serve_api), one engine request per choice is
submitted (n choices of one prompt go in together and share one prefill), and its events are
streamed as server-sent events or gathered into one response. A client that goes away cancels its
requests, which leave their rows at the next step. Past `--rows` running and `--queue` waiting
choices, a request is answered 429 with Retry-After.

Stopping (Ctrl-C, SIGTERM): new requests get 503, every running request is cancelled (its stream
ends with its last chunk, finish_reason "length", and `data: [DONE]`), then uvicorn closes the
connections and the command exits 130.

What it does not do: import torch; this module (Starlette, uvicorn, sse-starlette: the `serve` extra)
is imported only when `sgpt serve` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sgpt_cli.infer.engine import Event
from sgpt_cli.infer.onnx_model import STEP_PARTS
from sgpt_cli.errors import SgptError, first_line, shown
from sgpt_cli.infer.serve_api import ApiError, Limits, Reply, Request, finish_reason, parse_chat, parse_completion
from sgpt_cli.jsonout import dumps


class JSONResponse(_StarletteJSONResponse):
    """Starlette's, written by sgpt's one JSON writer (C1, bidi and zero-width characters escaped)."""

    def render(self, content) -> bytes:
        return dumps(content).encode("utf-8")


STOP_GRACE_S = 3.0  # how long a stop waits for the running streams to send their last chunks
# A stream sends at most one chunk per choice every CHUNK_S (the first at once, a choice's last as
# soon as it is made: `Sink.ended`): what a client sees
# moves 40 times a second, and 16 streams cost the event loop (which shares the GIL with the engine)
# a chunk per 25 ms each rather than one per character.
CHUNK_S = 0.025
# Lanes of rows on the CPU, each its own Engine, 1-thread session and thread: one per core (the count
# of onnx_model's STEP_PARTS), so that one lane's Python overlaps the other's ONNX Runtime call.
# Engine alone, 16 x 200 characters, 5 rounds on a drifting host: one engine of 16 rows 1,612 chars/s, two lanes of 8 2,020
# (median; better in 3 rounds of 5); the server, 16 clients over one: 2.56x (median of 5 runs) vs the
# single engine's 1.88x (median of 4); three lanes did worse than two. A row's text does not depend on
# its lane (tests/test_serve.py). On CUDA one engine: the device batches by itself.
SERVE_LANES = STEP_PARTS
RETRY_AFTER_S = 1  # what a 429 tells a client to wait: a row frees every few hundred characters
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")

log = logging.getLogger("sgpt.serve")


class OneLine(logging.Formatter):
    """uvicorn's and our log records as one line each: never a traceback on the console."""

    def format(self, record: logging.LogRecord) -> str:
        text = first_line(Exception(record.getMessage()), 300)
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # no escape reaches a terminal
        return f"sgpt: {record.levelname.lower()}: {text}"


def quiet_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    for name in ("uvicorn", "uvicorn.error", "sse_starlette", "sgpt.serve"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


# --- counters ----------------------------------------------------------------------------------------

class Metrics:
    """What /metrics reports; updated from the event loop (requests) and the engine thread (steps)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.steps = self.step_rows = self.generated = self.prompt_chars = 0
        self.decode_s = 0.0
        self.queued = self.rows = self.in_flight = 0

    def answered(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        with self.lock:
            self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
            if status >= 400:
                self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def stepped(self, rows: int, seconds: float, events) -> None:
        with self.lock:
            self.steps += 1
            self.step_rows += rows
            self.decode_s += seconds
            for e in events:
                if e.stats is not None:
                    self.generated += e.stats.chars
                    self.prompt_chars += e.stats.prompt_chars

    def text(self) -> str:
        with self.lock:
            rows_per_step = self.step_rows / self.steps if self.steps else 0.0
            speed = self.generated / self.decode_s if self.decode_s else 0.0
            out = []

            def metric(name, kind, help_, samples):
                out.append(f"# HELP sgpt_{name} {help_}")
                out.append(f"# TYPE sgpt_{name} {kind}")
                for labels, value in samples:
                    out.append(f"sgpt_{name}{labels} {value}")

            metric("requests_total", "counter", "HTTP requests answered, by endpoint.",
                   [(f'{{endpoint="{k}"}}', v) for k, v in sorted(self.requests.items())] or [("", 0)])
            metric("errors_total", "counter", "Requests answered with an error status, by status.",
                   [(f'{{status="{k}"}}', v) for k, v in sorted(self.errors.items())] or [("", 0)])
            metric("requests_in_flight", "gauge", "Choices submitted and not finished (running or waiting).",
                   [("", self.in_flight)])
            metric("queue_depth", "gauge", "Choices waiting for a row.", [("", self.queued)])
            metric("rows_running", "gauge", "Rows in the last decode step.", [("", self.rows)])
            metric("decode_steps_total", "counter", "Decode steps run.", [("", self.steps)])
            metric("rows_per_step", "gauge", "Mean rows per decode step since start.", [("", f"{rows_per_step:.3f}")])
            metric("prompt_chars_total", "counter", "Prompt characters read (the model's tokens).",
                   [("", self.prompt_chars)])
            metric("generated_chars_total", "counter", "Characters generated.", [("", self.generated)])
            metric("decode_seconds_total", "counter", "Seconds spent in decode steps.", [("", f"{self.decode_s:.3f}")])
            metric("chars_per_second", "gauge", "Characters generated per second of decoding, since start.",
                   [("", f"{speed:.1f}")])
        return "\n".join(out) + "\n"


# --- the engine's thread -----------------------------------------------------------------------------

class Sink(asyncio.Queue):
    """One request's events, (choice index, Event). `ended` is set when a choice's last event
    arrives, so that a stream sends it at once rather than at its next chunk time (CHUNK_S)."""

    def __init__(self):
        super().__init__()
        self.ended = asyncio.Event()


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


# --- the app ---------------------------------------------------------------------------------------

class State:
    """What the endpoints share."""

    def __init__(self, engine, model_path: Path, limits: Limits, max_body: int, api_key: str | None,
                 batcher: Batcher, metrics: Metrics):
        self.engine, self.model_path, self.limits, self.max_body = engine, model_path, limits, max_body
        self.api_key, self.batcher, self.metrics = api_key, batcher, metrics
        self.model_id = model_path.stem or "model"
        self.created = int(model_path.stat().st_mtime) if model_path.exists() else int(time.time())
        self.stop_started = False
        self.server: uvicorn.Server | None = None


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def read_json(request: HttpRequest, limit: int) -> dict:
    """The body as a JSON object: 413 past `limit` bytes (before reading when Content-Length says
    so), 400 for anything that is not one JSON object."""
    too_big = ApiError(413, f"the request body is larger than {limit:,} bytes (--max-body)",
                       code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    size, chunks = 0, []
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # gone before the body was whole: nobody to answer
        raise ApiError(400, "the client went away before its body was whole", code="client_disconnected") from None
    raw = b"".join(chunks)
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                       code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from None
    except ValueError:  # a number past Python's int-digit limit: its own advice is for a programmer
        raise ApiError(400, f"the body is not valid JSON (a number has more than {sys.get_int_max_str_digits():,} "
                            "digits)", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    return body


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def respond(request: HttpRequest, state: State, parsed: Request) -> Response:
    queue = Sink()
    ids = state.batcher.submit(parsed.jobs, queue, whole=not parsed.stream)
    reply = Reply(parsed, state.model_id)
    if parsed.stream:
        async def cancel_rest():  # also when the stream never started (a client gone at once)
            state.batcher.cancel(ids)

        return EventSourceResponse(stream(state, reply, ids, queue), sep="\n", ping=15,
                                   headers={"Cache-Control": "no-cache"}, background=BackgroundTask(cancel_rest))

    async def gather():
        while reply.left:
            index, event = await queue.get()
            reply.add(index, event)

    work = asyncio.ensure_future(gather())
    gone = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, gone):
            task.cancel()
        if reply.left:  # the client went away (or we are being cancelled): free the rows now
            state.batcher.cancel(ids[k] for k, s in enumerate(reply.stats) if s is None)
    if reply.left:
        return Response(status_code=499)  # nobody reads it
    failed(state, reply)
    return JSONResponse(reply.response())


def failed(state: State, reply: Reply) -> None:
    if any(s is not None and s.stop_reason == "interrupted" for s in reply.stats):
        raise ApiError(500, state.batcher.failure or "the engine stopped", code="engine_failed", kind="server_error")


async def stream(state: State, reply: Reply, ids: list[int], queue: Sink):
    """The server-sent events of one request: a chunk per piece of text, each choice's last with its
    finish_reason, the usage when asked for, then [DONE]. Cancelled (the client left): its rows are
    freed in `finally`."""
    parsed = reply.request

    def data(obj) -> dict:
        return {"data": dumps(obj)}  # the one JSON writer (sgpt_cli.jsonout): no terminal controls raw

    try:
        for k in range(len(parsed.jobs)):
            first = None
            if parsed.kind == "chat":
                first = reply.chunk(k, role=True)
            elif parsed.echo:
                first = reply.chunk(k, parsed.prompts[k // parsed.n])
            elif k == 0 and parsed.warnings:
                first = reply.chunk(k, "")
            if first is not None:
                if k == 0 and parsed.warnings:
                    first["warnings"] = parsed.warnings
                yield data(first)
        sent = 0.0  # loop time of the last chunk sent
        loop = asyncio.get_running_loop()
        while reply.left:
            wait = sent + CHUNK_S - loop.time()
            if wait > 0:  # the text made meanwhile goes in one chunk; a choice's end goes at once
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await queue.ended.wait()
            queue.ended.clear()
            items = await take(queue)
            sent = loop.time()
            for index, event in items:
                reply.add(index, event)
                text, stats, logprobs = event.text, event.stats, event.logprobs
                if stats is not None and stats.stop_reason == "interrupted":
                    err = ApiError(500, state.batcher.failure or "the engine stopped", code="engine_failed",
                                   kind="server_error")
                    yield data(err.body())
                    continue
                reason = finish_reason(stats.stop_reason) if stats is not None else None
                if parsed.kind == "completion":
                    if text or reason:
                        yield data(reply.chunk(index, text, reason, logprobs=logprobs))
                else:
                    if text:
                        yield data(reply.chunk(index, text, logprobs=logprobs))
                    if reason:
                        yield data(reply.chunk(index, None, reason))
        if parsed.include_usage:
            yield data(reply.usage_chunk())
        yield {"data": "[DONE]"}
    finally:
        left = [ids[k] for k, s in enumerate(reply.stats) if s is None]
        if left:
            state.batcher.cancel(left)


def merged(request: int, events: list[Event]) -> Event:
    """Several events of one request as one: their texts joined, their logprobs too, the last stats."""
    if len(events) == 1:
        return events[0]
    logprobs = None
    if events[0].logprobs is not None:
        logprobs = tuple(t for e in events for t in e.logprobs)
    stats = next((e.stats for e in reversed(events) if e.stats is not None), None)
    return Event(request, "".join(e.text for e in events), stats, logprobs)


async def take(queue: asyncio.Queue) -> list[tuple[int, Event]]:
    """The events waiting (at least one), one per choice: the text (and logprobs) made since its
    last chunk, and its stats if it ended. A client that reads slower than the model writes gets
    longer chunks, never a backlog of tiny ones."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    by_choice: dict[int, list[Event]] = {}
    for index, event in items:
        by_choice.setdefault(index, []).append(event)
    return [(index, merged(index, events)) for index, events in by_choice.items()]


class Guard:
    """Outermost ASGI layer: counts every answer for /metrics, asks for the key, and turns any
    exception into an OpenAI error object (500) and one line on the console, never a traceback."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def counted(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.state.metrics.answered(scope["path"], message["status"])
            await send(message)

        try:
            key = self.state.api_key
            if key is not None and scope["path"] != "/health":
                given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                    what = "no API key was given" if not given else "the API key is not this server's"
                    raise ApiError(401, f"{what}: send the header `Authorization: Bearer KEY` with the key "
                                        "given to `sgpt serve --api-key` (or $SGPT_API_KEY)",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await self.app(scope, receive, counted)
        except ApiError as exc:
            if not started:
                await error_response(exc)(scope, receive, counted)
        except Exception as exc:  # a bug: say it in one line, answer 500, keep serving
            log.error(f"{scope.get('method')} {scope['path']}: {first_line(exc)}")
            if not started:
                await error_response(ApiError(500, "the server failed on this request", code="internal_error",
                                              kind="server_error"))(scope, receive, counted)


def build_app(state: State):
    limits = state.limits

    async def completions(request: HttpRequest) -> Response:
        body = await read_json(request, state.max_body)
        parsed = parse_completion(body, state.model_id, state.engine.tokenizer.stoi, state.engine.window, limits)
        return await respond(request, state, parsed)

    async def chat(request: HttpRequest) -> Response:
        body = await read_json(request, state.max_body)
        parsed = parse_chat(body, state.model_id, state.engine.tokenizer.chars, state.engine.window, limits)
        return await respond(request, state, parsed)

    def model_object() -> dict:
        model = state.engine.model
        return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "sgpt",
                "block_size": model.block_size, "vocab_size": model.vocab_size}

    async def models(request: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [model_object()]})

    async def one_model(request: HttpRequest) -> Response:
        name = request.path_params["name"]
        if name != state.model_id:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {state.model_id!r}",
                           "model", "model_not_found")
        return JSONResponse(model_object())

    async def health(request: HttpRequest) -> Response:
        if state.batcher.stopping:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_id, "rows": state.metrics.rows,
                             "queued": state.metrics.queued})

    async def metrics(request: HttpRequest) -> Response:
        return PlainTextResponse(state.metrics.text(), media_type="text/plain; version=0.0.4")

    async def http_error(request, exc: HTTPException) -> Response:
        message = {404: f"no endpoint {request.url.path}; this server has {', '.join(ENDPOINTS)}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    async def api_error(request, exc: ApiError) -> Response:
        return error_response(exc)

    async def internal(request, exc: Exception) -> Response:  # then Guard says it in one line
        return error_response(ApiError(500, "the server failed on this request", code="internal_error",
                                       kind="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        state.batcher.start(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(stop(state)))
        yield
        state.batcher.close()

    routes = [Route(p, f, methods=["POST"]) for p, f in (("/v1/completions", completions), ("/completions", completions),
                                                         ("/v1/chat/completions", chat), ("/chat/completions", chat))]
    routes += [Route("/v1/models", models), Route("/models", models), Route("/v1/models/{name:path}", one_model),
               Route("/health", health), Route("/metrics", metrics)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, ApiError: api_error, Exception: internal})
    return Guard(app, state)


async def stop(state: State) -> None:
    """Ctrl-C or SIGTERM: stop accepting, end the streams cleanly, then let uvicorn close. A second
    signal closes at once."""
    server = state.server
    if state.stop_started:
        if server is not None:
            server.force_exit = server.should_exit = True
        return
    state.stop_started = True
    batcher = state.batcher
    running = batcher.in_flight
    batcher.stop_all()
    deadline = time.monotonic() + STOP_GRACE_S
    while batcher.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the last chunks and [DONE] go out
    if running:
        log.warning(f"stopping: {running} running request(s) ended")
    AppStatus.should_exit = True  # any stream still open is closed by sse-starlette
    if server is not None:
        server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the app's lifespan installs sgpt's (`stop`), and
    nothing re-raises the signal after a clean stop (we exit 130 ourselves)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        pass


# --- the command's work ---------------------------------------------------------------------------

def listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SgptError(f"cannot listen on {shown(host)}: {exc.strerror}; give --host an address such as "
                        "127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; give another --port (0 takes a free one)" if exc.errno in (98, 48) else ""
        raise SgptError(f"cannot listen on {shown(host)}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def url_host(host: str) -> str:
    """The host as a URL on this machine reaches it (0.0.0.0 is reached at 127.0.0.1)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def banner(base: str, state: State, rows: int, queue: int, key_from: str | None) -> str:
    body = json.dumps({"model": state.model_id, "prompt": "ROMEO:", "max_tokens": 100})
    auth = ""
    if key_from == "env":
        auth = ' -H "Authorization: Bearer $SGPT_API_KEY"'
    elif key_from == "flag":
        auth = " -H " + shlex.quote(f"Authorization: Bearer {state.api_key}")
    model = state.engine.model
    return (f"sgpt serve: {base}/v1 (OpenAI API), model {state.model_id} ({shown(state.model_path)}, "
            f"on {model.device}), {rows} rows, queue {queue}\n"
            f"try: curl -s {base}/v1/completions -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}\n"
            "Ctrl-C stops it.\n")


def serve(model: str | None, device: str, host: str, port: int, api_key: str | None, rows: int, queue: int,
          max_body: int, max_tokens_limit: int, max_n: int, max_prompt_chars: int) -> int:
    """Run the server until Ctrl-C or SIGTERM; KeyboardInterrupt then (the command exits 130)."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.model_lookup import find_model
    from sgpt_cli.infer.onnx_model import OnnxModel

    key_from = "flag" if api_key is not None else None
    if api_key is None and os.environ.get("SGPT_API_KEY"):
        api_key, key_from = os.environ["SGPT_API_KEY"], "env"
    path, _ = find_model(model)
    first = OnnxModel(path, device=device, threads=1)  # one thread per lane: the lanes are the parallelism
    lanes = SERVE_LANES if first.device == "cpu" and rows >= SERVE_LANES else 1
    share = [rows // lanes + (k < rows % lanes) for k in range(lanes)]  # --rows in all
    engines = [Engine(first, max_rows=share[0])]
    engines += [Engine(OnnxModel(path, device="cpu", threads=1), max_rows=n) for n in share[1:]]
    engine = engines[0]
    sock = listen(host, port)
    port = sock.getsockname()[1]
    metrics = Metrics()
    state = State(engine, Path(path), Limits(max_tokens_limit, max_n, max_prompt_chars), max_body, api_key,
                  Batcher(engines, metrics, rows + queue), metrics)
    quiet_logging()
    AppStatus.disable_automatic_graceful_drain()  # `stop` ends the streams itself, then sets should_exit
    config = uvicorn.Config(build_app(state), log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(STOP_GRACE_S), timeout_keep_alive=5, server_header=False)
    server = state.server = _Server(config)
    if not is_local(host) and api_key is None:
        sys.stderr.write(f"sgpt: warning: listening on {shown(host)} without --api-key: anyone who can reach "
                         "this machine can use the model\n")
    sys.stdout.write(banner(f"http://{url_host(host)}:{port}", state, rows, queue, key_from))
    sys.stdout.flush()
    try:
        server.run(sockets=[sock])
    finally:
        state.batcher.close()
        sock.close()
    if state.stop_started:
        raise KeyboardInterrupt
    return 0
