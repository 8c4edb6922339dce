"""`sgpt serve`: OpenAI's HTTP API over the engine, every request sharing its decode steps.

What it holds: `Metrics`
(the counters /metrics writes in Prometheus' text format), the Starlette app (`build_app`: the
endpoints, OpenAI-style error objects for every failure, the key check, the body limit), and
`serve`, which opens the model in SERVE_LANES lanes (sgpt_cli.web.lanes.Batcher steps them), binds the
socket, prints where to reach the server and runs uvicorn until Ctrl-C, SIGTERM or SIGHUP. What one
client may take (deadlines, buffered events, connections, the text a body may hold) is bounded in
sgpt_cli.web.limits (docs/serve-limits.md).

How a request runs: its body is checked (sgpt_cli.web.openai_api), one engine request per choice is
submitted (n choices of one prompt go in together and share one prefill), and its events are
streamed as server-sent events or gathered into one response. A client that goes away cancels its
requests, which leave their rows at the next step. Past `--rows` running and `--queue` waiting
choices, a request is answered 429 with Retry-After.

Stopping (Ctrl-C, SIGTERM, SIGHUP): new requests get 503, every running request is cancelled (its stream
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
from sse_starlette.sse import AppStatus, EventSourceResponse, SendTimeoutError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sgpt_cli.infer.engine import Event
from sgpt_cli.infer.onnx_model import STEP_PARTS
from sgpt_cli.errors import SgptError, first_line, shown, visible
from sgpt_cli.jsonout import unreadable_why
from sgpt_cli.web.lanes import Batcher, merged
from sgpt_cli.web.openai_api import ApiError, Limits, Reply, Request, finish_reason, parse_chat, parse_completion
from sgpt_cli.web.limits import (SEND_S, ApiTimeout, HeadDeadline, JSONResponse, Sink, check_api_key, check_host,
                                 connection_cap, json_bytes, json_text, quiet_logging, read_body, unencodable)
from sgpt_cli.web.page import is_public, routes as page_routes

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
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/explain", "/health", "/metrics", "/",
             "/v1/sgpt/props")

log = logging.getLogger("sgpt.serve")


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


# --- the app ---------------------------------------------------------------------------------------

class State:
    """What the endpoints share."""

    def __init__(self, engine, model_path: Path, limits: Limits, max_body: int, api_key: str | None,
                 batcher: Batcher, metrics: Metrics):
        self.engine, self.model_path, self.limits, self.max_body = engine, model_path, limits, max_body
        self.api_key, self.batcher, self.metrics = api_key, batcher, metrics
        # a file name's undecodable bytes (surrogate escapes) as U+FFFD: the id is sent in JSON
        stem = model_path.stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        self.model_id = stem or "model"
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
    try:
        raw = await read_body(request.stream(), limit, too_big)
    except ClientDisconnect:  # gone before the body was whole: nobody to answer
        raise ApiError(400, "the client went away before its body was whole", code="client_disconnected") from None
    except ApiTimeout:
        raise ApiError(408, "the request body did not arrive in time; send it whole at once",
                       code="request_timeout") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                       code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # a number past Python's int-digit limit: its own advice is for a programmer
        raise ApiError(400, f"the body is not valid JSON ({unreadable_why(exc)})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    where = unencodable(body)
    if where is not None:
        raise ApiError(400, f"{where} holds a lone surrogate (a \\ud800-\\udfff escape that is not half of a "
                            "pair): text must be Unicode that UTF-8 can write", param=where, code="invalid_text")
    return body


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def respond(request: HttpRequest, state: State, parsed: Request) -> Response:
    # a stream's backlog is bounded (a client that stops reading has its choices ended); a whole
    # response's one event per choice is what it asked for
    queue = Sink(limit=None if parsed.stream else float("inf"))
    ids = state.batcher.submit(parsed.jobs, queue, whole=not parsed.stream)
    queue.on_full = lambda: state.batcher.cancel(ids)
    reply = Reply(parsed, state.model_id, keep=not parsed.stream)  # a stream's text is sent, not kept
    if parsed.stream:
        async def cancel_rest():  # also when the stream never started (a client gone at once)
            state.batcher.cancel(ids)

        return EventSourceResponse(stream(state, reply, ids, queue), sep="\n", ping=15, send_timeout=SEND_S,
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
    # built and written in a worker thread, in pieces: n=16 x 4096 characters with 20 logprobs is
    # 33 MB of JSON, 1.9 s that would otherwise stall every stream
    content = await asyncio.to_thread(lambda: json_bytes(reply.response()))
    return Response(content, media_type="application/json")


def failed(state: State, reply: Reply) -> None:
    if any(s is not None and s.stop_reason == "interrupted" for s in reply.stats):
        raise ApiError(500, state.batcher.failure or "the engine stopped", code="engine_failed", kind="server_error")


async def stream(state: State, reply: Reply, ids: list[int], queue: Sink):
    """The server-sent events of one request: a chunk per piece of text, each choice's last with its
    finish_reason, the usage when asked for, then [DONE]. Cancelled (the client left): its rows are
    freed in `finally`."""
    parsed = reply.request

    def data(obj) -> dict:
        return {"data": json_text(obj)}  # the one JSON writer (sgpt_cli.jsonout): no terminal controls raw

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
        # loop time of the last chunk sent; None: none yet (the loop's clock has an arbitrary origin,
        # the machine's uptime on Linux, so no number stands for "never")
        sent: float | None = None
        loop = asyncio.get_running_loop()
        while reply.left:
            wait = 0.0 if sent is None else sent + CHUNK_S - loop.time()
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
            if key is not None and scope["path"] != "/health" and not is_public(scope["path"]):
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
        except SendTimeoutError:  # the connection is closed; its rows were freed as the stream closed
            log.warning(f"a client took nothing of its stream for {SEND_S:.0f} s: closed it")
        except Exception as exc:  # a bug: say it in one line, answer 500, keep serving
            log.error(f"{scope.get('method')} {scope['path']}: {first_line(exc)}")
            if not started:
                await error_response(ApiError(500, "the server failed on this request", code="internal_error",
                                              kind="server_error"))(scope, receive, counted)


def build_app(state: State):
    from sgpt_cli.web.explain_api import explain_route

    limits = state.limits

    async def completions(request: HttpRequest) -> Response:
        body = await read_json(request, state.max_body)
        # off the loop: a megabyte of prompts (the worst, tens of thousands of distinct characters the
        # model lacks) is a few hundred ms of reading that would stall every stream
        parsed = await asyncio.to_thread(parse_completion, body, state.model_id, state.engine.tokenizer.stoi,
                                         state.engine.window, limits)
        return await respond(request, state, parsed)

    async def chat(request: HttpRequest) -> Response:
        body = await read_json(request, state.max_body)
        parsed = await asyncio.to_thread(parse_chat, body, state.model_id, state.engine.tokenizer.chars,
                                         state.engine.window, limits)
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
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops it as cleanly
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(stop(state)))
        yield
        state.batcher.close()

    routes = [Route(p, f, methods=["POST"]) for p, f in (("/v1/completions", completions), ("/completions", completions),
                                                         ("/v1/chat/completions", chat), ("/chat/completions", chat))]
    routes += [Route("/v1/models", models), Route("/models", models), Route("/v1/models/{name:path}", one_model),
               Route("/health", health), Route("/metrics", metrics)]
    routes.append(explain_route(state))  # POST /v1/explain, sgpt's own
    routes += page_routes(state)  # the play page at / (sgpt_cli.web.page)
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
    # every name from the command line or a file name through `visible`/`shown`: a model file named
    # with escape sequences must not retitle or clear the terminal
    body = json.dumps({"model": state.model_id, "prompt": "ROMEO:", "max_tokens": 100})  # ASCII: escaped
    auth = ""
    if key_from == "env":
        auth = ' -H "Authorization: Bearer $SGPT_API_KEY"'
    elif key_from == "flag":
        auth = " -H " + shlex.quote(f"Authorization: Bearer {visible(state.api_key)}")
    model = state.engine.model
    return (f"sgpt serve: {visible(base)}/v1 (OpenAI API), model {shown(state.model_id)} ({shown(state.model_path)}, "
            f"on {model.device}), {rows} rows, queue {queue}\n"
            f"try: curl -s {base}/v1/completions -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}\n"
            "Ctrl-C stops it.\n")


def serve(model: str | None, device: str, host: str, port: int, api_key: str | None, rows: int, queue: int,
          max_body: int, max_tokens_limit: int, max_n: int, max_prompt_chars: int) -> int:
    """Run the server until Ctrl-C or SIGTERM; KeyboardInterrupt then (the command exits 130)."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.model_lookup import open_model
    from sgpt_cli.infer.onnx_model import OnnxModel

    key_from = "flag" if api_key is not None else None
    if api_key is None and os.environ.get("SGPT_API_KEY"):
        api_key, key_from = os.environ["SGPT_API_KEY"], "env"
    check_api_key(api_key, "$SGPT_API_KEY" if key_from == "env" else "--api-key")
    check_host(host)
    opened = open_model(model, device, threads=1)  # one thread per lane: the lanes are the parallelism
    path = opened.path
    lanes = SERVE_LANES if opened.model.device == "cpu" and rows >= SERVE_LANES else 1
    share = [rows // lanes + (k < rows % lanes) for k in range(lanes)]  # --rows in all
    opened.engine.max_rows = share[0]  # read at its first step, when its cache is made
    engines = [opened.engine]
    engines += [Engine(OnnxModel(path, device="cpu", threads=1), max_rows=n) for n in share[1:]]
    engine = engines[0]
    sock = listen(host, port)
    port = sock.getsockname()[1]
    metrics = Metrics()
    state = State(engine, Path(path), Limits(max_tokens_limit, max_n, max_prompt_chars), max_body, api_key,
                  Batcher(engines, metrics, rows + queue), metrics)
    quiet_logging()
    AppStatus.disable_automatic_graceful_drain()  # `stop` ends the streams itself, then sets should_exit
    config = uvicorn.Config(build_app(state), http=HeadDeadline.with_cap(connection_cap()), log_config=None,
                            access_log=False, lifespan="on",
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
