"""`sgpt serve`'s bounds on what one client can take from everyone else: time (a request's head and
body arrive within deadlines), memory (what is buffered for a client that does not read), the event
loop (large JSON written in pieces, off the loop), the text a response can hold (UTF-8 JSON only),
the console (one line per log record, a flood cut to a line per kind every few seconds), and the
values the server is started with (an API key a client can send, a host that is an address).

What it holds: `HEAD_S`, `BODY_S`, `SINK_LIMIT`, `SEND_S`; `HeadDeadline` (uvicorn's h11 protocol with a
deadline on each request's head), `read_body` (the body with a deadline), `Sink` (one request's
events, bounded), `unencodable` (where a body holds text UTF-8 cannot write), `json_text`,
`JSONResponse` and `json_bytes` (JSON that always encodes, big objects in pieces), `Flood` and
`not_a_cancellation` (the log filters), `OneLine` and `quiet_logging` (a record a line, on stderr),
`check_api_key`, `check_host`.

What it does not do: import sgpt_cli.web.server (the server imports this), or the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time

from starlette.responses import JSONResponse as _StarletteJSON
from uvicorn.protocols.http.h11_impl import H11Protocol

from sgpt_cli.errors import SgptError, first_line, visible
from sgpt_cli.jsonout import dumps, escaped

# A request's head (its line and headers) must be whole this long after the connection opened or
# the previous response ended: a client on any network sends a few hundred bytes in well under a
# second, and a connection that never finishes its head holds a file descriptor (with 250 of them a
# server at a 256-descriptor limit refused everyone).
HEAD_S = 10.0
# A request's body must be whole this long after its head: the default --max-body (1 MiB) in 30 s
# is 35 kB/s, slower than any link that reaches a model server; a body trickled in a byte at a time
# is refused (408), not held for ever.
BODY_S = 30.0
# What one request's Sink may hold unread, in units of `event_cost` (an event, a character, a
# logprob alternative: each some tens of bytes, so a few MB at most). A client that stops reading
# while the model writes has its choices ended (finish_reason "length") when its backlog passes
# this; a client that reads gets its text in longer chunks and never comes near it. Without it a
# stream with n=16, logprobs=20, max_tokens=4096 to a client that never reads held 172 MB.
SINK_LIMIT = 1 << 16
# A stream whose client takes nothing for this long (its socket's buffers full) is closed, so that a
# client that neither reads nor leaves does not hold its connection and backlog for ever.
SEND_S = 60.0
FLOOD_S = 10.0  # a log message of one kind is said once per this many seconds, with a count of the rest


# --- time ----------------------------------------------------------------------------------------------

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
             b"Connection: close\r\n\r\n")
FD_RESERVE = 64  # descriptors kept from connections: the model's files, the engine's threads, logs


def connection_cap() -> int:
    """How many connections the server holds at once: the descriptor limit (its soft limit raised
    to the hard one first, as servers do) less FD_RESERVE, at least 16. Past it asyncio's accept
    fails with EMFILE, and Python 3.11 then retries in a busy loop (a log record per try)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
        if soft != resource.RLIM_INFINITY and soft < wanted:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except ImportError:  # not a Unix
        return 1 << 12
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(16, soft - max(FD_RESERVE, soft // 8))


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, where a request's head must be whole HEAD_S after the connection
    opened or the previous response ended; else the connection gets 408 and is closed. (uvicorn's
    keep-alive timeout ends when the first byte arrives: a head sent a byte a minute was held for
    ever.) Past `cap` connections (`with_cap`), a new one closes the oldest that has no request in
    hand (408), so that half-sent heads cannot keep everyone else out; if every one has a request
    in hand, the new one is answered 503 with Retry-After."""

    head_timer: asyncio.TimerHandle | None = None
    cap: int | None = None
    opened = 0.0

    @classmethod
    def with_cap(cls, cap: int) -> type:
        return type(cls.__name__, (cls,), {"cap": cap})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.opened = self.loop.time()
        if self.cap is not None and len(self.connections) > self.cap:
            idle = [c for c in self.connections if c is not self and isinstance(c, HeadDeadline) and c._waiting()]
            if idle:
                min(idle, key=lambda c: c.opened)._late()
            else:
                transport.write(_BUSY_503)
                transport.close()
                return
        self._arm()

    def _waiting(self) -> bool:
        """No request in hand: a head is due (or the connection is idle between requests)."""
        return (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = None if self.transport.is_closing() else self.loop.call_later(HEAD_S, self._late)

    def _late(self) -> None:
        self.head_timer = None
        if self._waiting():
            self.transport.write(_TIMEOUT_408)
            self.transport.close()


class ApiTimeout(Exception):
    """The body did not arrive in time (the server answers 408)."""


async def read_body(chunks, limit: int, too_big: Exception, deadline_s: float | None = None) -> bytes:
    """The body from `chunks` (Starlette's request.stream()), whole within `deadline_s` (BODY_S),
    or `too_big` past `limit` bytes, or ApiTimeout."""
    size, parts = 0, []
    try:
        async with asyncio.timeout(BODY_S if deadline_s is None else deadline_s):
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_big
                parts.append(chunk)
    except TimeoutError:
        raise ApiTimeout() from None
    return b"".join(parts)


# --- memory --------------------------------------------------------------------------------------------

def event_cost(event) -> int:
    """What an Event holds, in SINK_LIMIT's units: itself, its characters, its logprob alternatives."""
    cost = 1 + len(event.text)
    for entry in event.logprobs or ():
        cost += 1 + len(entry.top)
    return cost


class Sink(asyncio.Queue):
    """One request's events, (choice index, Event), bounded by what they hold (`event_cost`): past
    `limit` unread, `on_full` is called once (the server cancels the request's choices: their
    last events follow within a step, and the queue holds nothing more after them). `ended` is set
    when a choice's last event arrives, so that a stream sends it at once rather than at its next
    chunk time (CHUNK_S)."""

    def __init__(self, limit: int | None = None, on_full=None):
        super().__init__()
        self.ended = asyncio.Event()
        self.limit = SINK_LIMIT if limit is None else limit
        self.on_full = on_full
        self.cost = 0
        self.full_once = False

    def put_nowait(self, item) -> None:
        super().put_nowait(item)
        self.cost += event_cost(item[1])
        if self.cost > self.limit and not self.full_once:
            self.full_once = True
            if self.on_full is not None:
                self.on_full()

    def get_nowait(self):
        item = super().get_nowait()  # Queue.get ends in get_nowait: both are counted here
        self.cost -= event_cost(item[1])
        return item


# --- text and JSON -------------------------------------------------------------------------------------

def _bad_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unencodable(body, limit: int = 1_000_000) -> str | None:
    """Where `body` (parsed JSON) holds a string UTF-8 cannot write (a lone surrogate, from a
    `\\ud800` escape): its path, such as `prompt[2]` or `messages[0].content`; None when all is
    text. Iterative: a body nested as deep as the JSON parser allows costs no recursion."""
    stack = [(body, "")]
    seen = 0
    while stack and seen < limit:
        value, where = stack.pop()
        seen += 1
        if isinstance(value, str):
            if _bad_text(value):
                return where or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _bad_text(key):
                    return f"{where}.<key>" if where else "<key>"
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
    return None


def json_text(obj) -> str:
    """`obj` as JSON text by sgpt's one writer (sgpt_cli.jsonout: terminal controls and lone surrogates
    escaped, so UTF-8 can always write it); a NaN or an infinity, which strict JSON has no word for,
    as Python's json spells it rather than a failed stream."""
    try:
        return dumps(obj)
    except ValueError:
        return escaped(json.dumps(obj, ensure_ascii=False))


PIECE = 64  # list items per json.dumps call when writing a big object in pieces


def _pieces(obj, depth: int = 0):
    if depth < 8 and isinstance(obj, dict):
        yield "{"
        for i, (key, value) in enumerate(obj.items()):
            yield ("," if i else "") + json.dumps(str(key), ensure_ascii=False) + ":"
            yield from _pieces(value, depth + 1)
        yield "}"
    elif depth < 8 and isinstance(obj, list) and obj:
        yield "["
        if len(obj) <= PIECE:
            for i, value in enumerate(obj):
                if i:
                    yield ","
                yield from _pieces(value, depth + 1)
        else:
            for i in range(0, len(obj), PIECE):
                yield ("," if i else "") + json.dumps(obj[i:i + PIECE], ensure_ascii=False)[1:-1]
        yield "]"
    else:
        yield json.dumps(obj, ensure_ascii=False, allow_nan=False)


def json_bytes(obj) -> bytes:
    """`obj` as UTF-8 JSON, written in many small json.dumps calls: run in a worker thread, a 30 MB
    response lets the event loop in between them (one call would hold the GIL throughout)."""
    return "".join(map(escaped, _pieces(obj))).encode("utf-8")  # by pieces, like the writing


class JSONResponse(_StarletteJSON):
    """Starlette's JSONResponse, written by sgpt's one JSON writer (json_text): C1, bidi and
    zero-width characters escaped, and text UTF-8 cannot write too, never a 500."""

    def render(self, content) -> bytes:
        return json_text(content).encode("utf-8")


# --- the console -------------------------------------------------------------------------------------

class Flood(logging.Filter):
    """At most one record of a kind (its logger and first words) per FLOOD_S; the next one said
    counts those left out. (Out of file descriptors, asyncio reports every failed accept.)"""

    def __init__(self, every_s: float | None = None, clock=time.monotonic):
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self.last: dict[tuple[str, str], float] = {}  # kind -> when it was last said
        self.left_out: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        every = FLOOD_S if self.every_s is None else self.every_s
        kind = (record.name, str(record.msg)[:40])
        now = self.clock()
        said = self.last.get(kind)  # None: never said (no clock value stands for "never")
        if said is not None and now - said < every:
            self.left_out[kind] = self.left_out.get(kind, 0) + 1
            return False
        if len(self.last) > 1000:  # kinds are few; a flood of distinct ones does not grow this for ever
            self.last.clear()
        self.last[kind] = now
        skipped = self.left_out.pop(kind, 0)
        if skipped:
            record.sgpt_left_out = skipped
        return True


def not_a_cancellation(record: logging.LogRecord) -> bool:
    """False for a report whose exception is a cancelled task (Starlette's lifespan traceback when a
    second Ctrl-C cuts the shutdown short): cancelling is what stopping does, not an error."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, asyncio.CancelledError):
        return False
    lines = str(record.msg).strip().splitlines()
    return not (lines and lines[-1].strip() in ("asyncio.exceptions.CancelledError", "CancelledError"))


# --- start-up values -----------------------------------------------------------------------------------

def check_api_key(key: str | None, source: str = "--api-key") -> None:
    """A key a client can send as `Authorization: Bearer KEY` and the server compares as given: visible
    ASCII only (a header is read as latin-1 and a token's surrounding spaces are dropped, so a key with
    other characters could never match). The message names what is wrong, never the key itself."""
    if key is None:
        return
    bad = next((c for c in key if not "!" <= c <= "~"), None)
    if key and bad is None:
        return
    what = ("is empty" if not key else "holds a space" if bad == " " else
            "holds a control character" if ord(bad) < 0x20 or ord(bad) == 0x7f else
            "holds a character outside ASCII")
    raise SgptError(f"{source} {what}: an API key must be visible ASCII only (letters, digits, punctuation; "
                    "no spaces), so that a client can send it in the Authorization header; e.g. "
                    "`openssl rand -hex 16`")


def check_host(host: str) -> None:
    """--host as an address or a host name: printable ASCII after IDNA, else one line (not idna's traceback)."""
    try:
        host.encode("idna")
        if not host.isprintable() or any(c.isspace() for c in host):
            raise UnicodeError  # a NUL or a line break: getaddrinfo raises ValueError, or worse
    except UnicodeError:
        raise SgptError(f"--host {visible(host)} is not a host name or an address; give one such as "
                        "127.0.0.1 or 0.0.0.0") from None


class OneLine(logging.Formatter):
    """uvicorn's, asyncio's and our log records as one line each: never a traceback on the console.
    A message that is a formatted traceback (Starlette's lifespan failure) is said by its last line,
    the exception; a record's exception (exc_info) adds its own first line."""

    def format(self, record: logging.LogRecord) -> str:
        lines = [line for line in record.getMessage().strip().splitlines() if line.strip()] or [""]
        text = lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text.rstrip(': ')}: {first_line(record.exc_info[1], 200)}"
        text = visible(text.strip())[:300]  # no escape reaches a terminal
        left_out = getattr(record, "sgpt_left_out", 0)
        if left_out:
            text += f" ({left_out:,} more like it left out)"
        return f"sgpt: {record.levelname.lower()}: {text}"


def quiet_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    handler.addFilter(not_a_cancellation)
    handler.addFilter(Flood())
    for name in ("uvicorn", "uvicorn.error", "sse_starlette", "sgpt.serve", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
