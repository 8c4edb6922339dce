"""`sgpt serve` against what a hostile or careless client (or operator) does: clocks with any origin,
half-sent heads and trickled bodies, clients that stop reading, integers past every limit, text UTF-8
cannot write, hostile names in the banner, keys a client could never send, signals. Servers bind
127.0.0.1 only; every loop has a count and a time bound; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")

from conftest import SGPT, run_env  # noqa: E402
from test_serve import in_flight, model, sse, start, wait_idle  # noqa: E402,F401 (model: a fixture)

from sgpt_cli.infer.engine import Event, GenerationStats  # noqa: E402
from sgpt_cli.infer.logprobs import TokenLogprob  # noqa: E402
from sgpt_cli.web.openai_api import Limits, Reply, parse_completion  # noqa: E402
from sgpt_cli.web import limits as web_limits  # noqa: E402

STATS = GenerationStats(prompt_chars=6, chars=2, ttft_s=0.0, seconds=0.0, chars_per_s=0.0, stop_reason="max_tokens")


def loop_with_origin(origin: float):
    """An event loop whose clock reads `origin` when it is made: a machine just booted (small), or
    one up for years (large). asyncio's timers all read loop.time(), so they stay consistent."""

    class Loop(asyncio.SelectorEventLoop):
        def __init__(self):
            super().__init__()
            self.shift = origin - super().time()

        def time(self):
            return super().time() + self.shift

    return Loop


# --- a timer that never fired -------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [0.0, 5.0, 1e9])
def test_a_streams_first_chunk_goes_out_at_once_whatever_the_clocks_origin(model, monkeypatch, origin):
    """The chunk interval counts from the last chunk sent; before the first there is none, which no
    clock value stands for. With CHUNK_S an hour and the loop's clock reading 5 (a machine up 5 s),
    the first chunk still goes out at once, without the choice's end to wake it."""
    from types import SimpleNamespace

    from sgpt_cli.web import server as web

    monkeypatch.setattr(web, "CHUNK_S", 3600.0)
    parsed = parse_completion({"model": "m", "prompt": "ROMEO:", "max_tokens": 2, "stream": True}, "m",
                              model.tokenizer.stoi, model.block_size, Limits())
    state = SimpleNamespace(batcher=SimpleNamespace(cancel=lambda ids: None, failure=None))

    async def run() -> list[str]:
        sink = web.Sink()
        out = []
        sink.put_nowait((0, Event(0, "a")))  # text, and no end: only the interval can send it
        async for chunk in web.stream(state, Reply(parsed, "m", keep=False), [0], sink):
            out.append(chunk["data"])
            if len(out) == 1:
                sink.put_nowait((0, Event(0, "b", STATS)))
                sink.ended.set()
        return out

    with asyncio.Runner(loop_factory=loop_with_origin(origin)) as runner:
        assert runner.get_loop().time() < origin + 60
        out = runner.run(asyncio.wait_for(run(), 30))
    assert out[-1] == "[DONE]" and "".join(json.loads(d)["choices"][0]["text"] for d in out[:-1]) == "ab"


def test_the_log_flood_filter_says_the_first_record_even_at_clock_zero_and_counts_the_rest():
    now = [0.0]
    flood = web_limits.Flood(every_s=10, clock=lambda: now[0])

    def record(msg):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    first = record("socket.accept() out of system resource")
    assert flood.filter(first)  # at clock 0: "never said" is not "said at 0"
    assert [flood.filter(record("socket.accept() out of system resource")) for _ in range(500)] == [False] * 500
    assert flood.filter(record("another kind of message"))
    now[0] = 10.5
    again = record("socket.accept() out of system resource")
    assert flood.filter(again) and again.sgpt_left_out == 500


def test_log_records_are_one_visible_line_whatever_their_shape():
    from sgpt_cli.web.limits import OneLine

    fmt = OneLine()

    def line(msg, exc=None):
        rec = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, None,
                                (type(exc), exc, None) if exc else None)
        return fmt.format(rec)

    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\nKeyboardInterrupt\n'
    assert line(tb) == "sgpt: error: KeyboardInterrupt"
    assert line("Exception in ASGI application\n", ValueError("bad\nsecond")) == \
        "sgpt: error: Exception in ASGI application: bad"
    assert line("title \x1b]0;PWNED\x07 \u202e") == "sgpt: error: title \\x1b]0;PWNED\\x07 \\u202e"
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "x", None, None)
    record.sgpt_left_out = 1234
    assert fmt.format(record) == "sgpt: error: x (1,234 more like it left out)"


# --- memory -------------------------------------------------------------------------------------------------

def believed_event(chars: int, top: int) -> Event:
    entries = tuple(TokenLogprob("a", -0.1, tuple(("b", -1.0) for _ in range(top))) for _ in range(chars))
    return Event(0, "a" * chars, None, entries)


def test_a_sink_past_its_limit_asks_once_to_end_its_choices_and_counts_what_is_taken():
    calls = []

    async def run():
        sink = web_limits.Sink(limit=1000, on_full=lambda: calls.append(1))
        for _ in range(10):
            sink.put_nowait((0, believed_event(4, 20)))  # 1 + 4 + 4 * 21 = 89 each
        assert sink.cost == 890 and not calls
        for _ in range(10):
            sink.put_nowait((1, believed_event(4, 20)))
        assert calls == [1]
        while not sink.empty():
            await sink.get()
        assert sink.cost == 0
        sink.put_nowait((0, Event(0, "x" * 5000)))
        assert calls == [1]  # once: the choices are already ending

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_streams_reply_keeps_counts_not_text_or_logprobs(model):
    parsed = parse_completion({"prompt": "ROMEO:", "stream": True, "logprobs": 3}, "m", model.tokenizer.stoi,
                              model.block_size, Limits())
    kept, streamed = Reply(parsed, "m"), Reply(parsed, "m", keep=False)
    for _ in range(100):
        for reply in (kept, streamed):
            reply.add(0, believed_event(3, 3))
    assert streamed.texts == [[]] and streamed.believed == [[]] and streamed.length == [300]
    assert len(kept.believed[0]) == 300 and kept.length == [300]
    first = streamed.chunk(0, "aaa", logprobs=believed_event(3, 3).logprobs)
    assert first["choices"][0]["logprobs"]["text_offset"][0] == 297


def test_a_client_that_stops_reading_has_its_choices_ended_and_the_server_serves_on(tiny_onnx):
    """n=4 with logprobs 20 and a million characters each, to a client whose socket takes nothing: the
    backlog passes SINK_LIMIT, the choices end ("length"), the rows and the count are given back."""
    s = start(tiny_onnx, "--rows", "4", "--max-tokens-limit", "1000000")
    try:
        body = json.dumps({"prompt": "ROMEO:", "n": 4, "max_tokens": 1_000_000, "logprobs": 20,
                           "stream": True}).encode()
        host, port = s.url[len("http://"):].split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.monotonic() + 120
        seen = False
        while time.monotonic() < deadline:
            n = in_flight(s)
            seen = seen or n > 0
            if seen and n == 0:
                break
            time.sleep(0.2)
        assert seen and in_flight(s) == 0  # ended while its client read nothing
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        sock.settimeout(30)  # now read it all: it ends, each choice with "length", then [DONE]
        raw = b""
        while not raw.endswith(b"data: [DONE]\n\n") and len(raw) < 1 << 28:
            got = sock.recv(1 << 16)
            if not got:
                break
            raw += got
        sock.close()
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        ends = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"][0]["finish_reason"]}
        assert ends == {k: "length" for k in range(4)}
        made = sum(len(c["choices"][0]["text"]) for c in chunks)
        assert made < 4 * 1_000_000 // 10
    finally:
        code, err = s.stop()
    assert "Traceback" not in err, err


# --- JSON and text -----------------------------------------------------------------------------------------

def test_json_is_written_in_pieces_exactly_as_whole_and_never_fails_to_encode():
    big = {"id": "x", "choices": [{"index": k, "logprobs": {"content": [
        {"token": chr(97 + i % 26), "logprob": -i / 7, "top_logprobs": [{"token": "é", "logprob": -1.5}] * 3}
        for i in range(300)]}, "text": "ROMEO: ü"} for k in range(3)], "empty": [], "none": None, "t": True}
    assert json.loads(web_limits.json_bytes(big)) == big
    hostile = {"text": "a\ud800b", "list": ["\udcff"] * 100}
    assert json.loads(web_limits.json_bytes(hostile)) == hostile
    assert json.loads(web_limits.json_text(hostile)) == hostile
    assert web_limits.json_text({"t": "é"}) == '{"t": "é"}'  # characters as they are when they can be
    assert json.loads(web_limits.JSONResponse({"model": "x\udcff"}).body) == {"model": "x\udcff"}


@pytest.mark.parametrize("body, where", [
    ({"prompt": "ROMEO\ud800:"}, "prompt"),
    ({"prompt": ["ok", "ok", "\udfff"]}, "prompt[2]"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udc80"}]}]},
     "messages[0].content[0].text"),
    ({"stop": ["\ud83d"]}, "stop[0]"),
    ({"x\ud800": 1}, "<key>"),
    ({"prompt": "fine \U0001f600 pair", "n": 1}, None),
])
def test_text_utf8_cannot_write_is_found_where_it_is(body, where):
    assert web_limits.unencodable(body) == where


def test_a_body_nested_deep_is_walked_without_recursion():
    deep: list = ["\ud800"]
    for _ in range(100_000):
        deep = [deep]
    assert web_limits.unencodable({"prompt": deep}).endswith("[0]")


def test_unknown_characters_are_listed_in_order_of_first_appearance_in_one_pass():
    """_known_tail: 60,000 distinct unknown characters (sorting them by text.index was quadratic)."""
    from sgpt_cli.infer.prompt import read_for_model

    stoi = {c: i for i, c in enumerate("abc ")}
    unknown = [chr(0x20000 + i) for i in range(60_000)]  # CJK: no surrogates among them
    text = "ab " + "".join(reversed(unknown)) + " c" + "".join(unknown[:100])
    read = read_for_model([text], stoi, 64)
    assert read.unknown == list(reversed(unknown))
    few = read_for_model(["xaYbXa"], stoi, 64)
    assert few.unknown == ["x", "Y", "X"]


# --- deadlines ---------------------------------------------------------------------------------------------

def test_a_body_that_trickles_is_refused_at_its_deadline_and_one_too_big_at_its_limit():
    async def trickle():
        yield b"{"
        await asyncio.sleep(3600)
        yield b"}"

    async def run():
        with pytest.raises(web_limits.ApiTimeout):
            await web_limits.read_body(trickle(), 1000, ValueError("too big"), deadline_s=0.2)

        async def many():
            for _ in range(100):
                yield b"x" * 100

        with pytest.raises(ValueError, match="too big"):
            await web_limits.read_body(many(), 1000, ValueError("too big"), deadline_s=30)

        async def whole():
            yield b'{"a":'
            yield b" 1}"

        assert await web_limits.read_body(whole(), 1000, ValueError(), deadline_s=30) == b'{"a": 1}'

    asyncio.run(asyncio.wait_for(run(), 30))


async def slow_ok(scope, receive, send):
    """An ASGI app that answers "ok" after 0.6 s (longer than the tests' HEAD_S)."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.6)  # a request in hand is never cut by the head's deadline
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def read_all(reader) -> bytes:
    out = b""
    for _ in range(100):
        got = await reader.read(1 << 16)
        if not got:
            break
        out += got
    return out


async def serving(protocol, body):
    """uvicorn on a free 127.0.0.1 port with `protocol`, while `body(port)` runs."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(slow_ok, http=protocol, log_config=None, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    try:
        await body(sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def test_a_head_that_never_ends_gets_408_and_is_closed_and_a_slow_answer_is_not(monkeypatch):
    """uvicorn with the HeadDeadline protocol (HEAD_S 0.3 s here): a half-sent head on a new connection
    and on a kept-alive one is answered 408 and closed; a request whose answer takes longer than
    HEAD_S is answered."""
    monkeypatch.setattr(web_limits, "HEAD_S", 0.3)

    async def body(port, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        assert (await asyncio.wait_for(read_all(reader), 20)).startswith(b"HTTP/1.1 408 ")
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"ok"), 20)
        assert first.startswith(b"HTTP/1.1 200 ")
        writer.write(b"GET / HTTP/1.1\r\nHo")  # kept alive, then a head that never ends
        await writer.drain()
        assert (await asyncio.wait_for(read_all(reader), 20)).startswith(b"HTTP/1.1 408 ")
        writer.close()

    asyncio.run(asyncio.wait_for(serving(web_limits.HeadDeadline, body), 60))


def test_past_the_connection_cap_a_half_sent_head_makes_room_and_requests_in_hand_are_kept():
    """Four connections at most: four half-sent heads, then a whole request: the oldest head is
    closed (408) and the request answered; with four requests in hand, a fifth connection gets 503."""
    async def body(port, server):
        waiting = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
            waiting.append((reader, writer))
            await asyncio.sleep(0.05)  # distinct opening times: the first is the oldest
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 20)).startswith(b"HTTP/1.1 200 ")
        assert (await asyncio.wait_for(read_all(waiting[0][0]), 20)).startswith(b"HTTP/1.1 408 ")
        for _, w in waiting + [(reader, writer)]:
            w.close()
        await asyncio.sleep(0.2)

        busy = []
        for _ in range(4):  # four requests in hand (each answers after 0.6 s)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append((reader, writer))
        for _ in range(200):  # until the server has all four heads in hand (this test's bound: 10 s)
            held = server.server_state.connections
            if len(held) == 4 and all(c.cycle is not None and not c.cycle.response_complete for c in held):
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(read_all(reader), 20)).startswith(b"HTTP/1.1 503 ")
        for r, w in busy:
            assert (await asyncio.wait_for(r.readuntil(b"ok"), 20)).startswith(b"HTTP/1.1 200 ")
            w.close()

    asyncio.run(asyncio.wait_for(serving(web_limits.HeadDeadline.with_cap(4), body), 60))


def test_the_connection_cap_raises_the_soft_descriptor_limit_and_leaves_some_for_the_server():
    code = ("import resource; from sgpt_cli.web.limits import connection_cap, FD_RESERVE;"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard));"
            "cap = connection_cap(); soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0];"
            "print(cap, soft, hard, FD_RESERVE)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), timeout=60)
    cap, soft, hard, reserve = map(int, proc.stdout.split())
    assert soft >= 256 and (soft == hard or soft == 1 << 20 or hard < 0)
    assert 16 <= cap <= soft - reserve


# --- the real server: bodies ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_onnx):
    s = start(tiny_onnx, "--rows", "2")
    yield s
    code, err = s.stop()
    assert "Traceback" not in err, err


HUGE = 10 ** 400


@pytest.mark.parametrize("body, param", [
    ({"prompt": "R", "max_tokens": HUGE}, "max_tokens"),
    ({"prompt": "R", "max_tokens": -HUGE}, "max_tokens"),
    ({"prompt": "R", "seed": HUGE}, "seed"),
    ({"prompt": "R", "top_k": -HUGE}, "top_k"),  # (a huge top_k is "all": valid)
    ({"prompt": "R", "n": HUGE}, "n"),
    ({"prompt": "R", "temperature": HUGE}, "temperature"),
    ({"prompt": "R", "top_p": -HUGE}, "top_p"),
    ({"prompt": "R", "repetition_penalty": HUGE}, "repetition_penalty"),
    ({"prompt": "R", "logprobs": HUGE}, "logprobs"),
    ({"prompt": "R", "stream": True, "stream_options": {"include_usage": HUGE}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": HUGE}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": HUGE}, "max_tokens"),
])
def test_huge_integers_in_any_numeric_field_are_400_with_an_error_object(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert r.json()["error"]["param"] == param and "0" * 100 not in message and "9" * 100 not in message


@pytest.mark.parametrize("raw", [
    b'{"prompt": "R", "max_tokens": 1' + b"0" * 5000 + b"}",
    b'{"prompt": "R", "seed": -' + b"9" * 4400 + b"}",
    b'{"prompt": "R", "temperature": 1e999}',
    b'{"prompt": "R", "n": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
])
def test_integers_past_pythons_digit_limit_and_other_unreadable_numbers_are_400(server, raw):
    r = httpx.post(server.url + "/v1/completions", content=raw, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("body", [
    {"prompt": "ROMEO\ud800:", "echo": True},
    {"prompt": ["ROMEO:", "\udfffJULIET:"], "echo": True},
    {"prompt": "ROMEO:", "stop": ["\ud800"]},
    {"prompt": "\ud800" * 1000},
    {"prompt": "ROMEO:", "user": "\udc00"},
])
def test_text_that_utf8_cannot_write_is_refused_at_the_edge(server, body, stream):
    r = httpx.post(server.url + "/v1/completions", content=json.dumps({**body, "max_tokens": 3, "stream": stream}),
                   headers={"Content-Type": "application/json"}, timeout=30)  # \ud800 escapes, as a client sends them
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_text", r.text


def test_a_lone_surrogate_in_chat_is_refused_and_a_real_pair_is_an_unknown_character(server):
    bad = {"messages": [{"role": "user", "content": "hi \ud800"}], "max_tokens": 3}
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(bad), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    good = {"prompt": "ROMEO \U0001f600:", "max_tokens": 3, "echo": True}
    r = httpx.post(server.url + "/v1/completions", json=good, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("ROMEO \U0001f600:")
    with httpx.stream("POST", server.url + "/v1/completions", json={**good, "stream": True}, timeout=30) as r:
        events = sse(r)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["text"] == "ROMEO \U0001f600:"


def test_a_big_whole_answer_with_logprobs_is_the_same_json_and_the_server_serves_on(server):
    body = {"prompt": "ROMEO:", "n": 2, "max_tokens": 300, "logprobs": 20, "seed": 4}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    choices = r.json()["choices"]
    assert [len(c["logprobs"]["tokens"]) for c in choices] == [300, 300]
    assert all(len(t) in (20, 21) for c in choices for t in c["logprobs"]["top_logprobs"])  # and the chosen
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    wait_idle(server)


# --- start-up values and signals ---------------------------------------------------------------------------

def serve_once(*flags, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*SGPT, "serve", "--port", "0", *flags], capture_output=True, text=True,
                          env=env or run_env(), stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.mark.parametrize("key, what", [
    ("clé-ü", "outside ASCII"), (" padded ", "a space"), ("two words", "a space"), ("tab\tkey", "control"),
    ("esc\x1b]0;PWNED\x07", "control"), ("\u202ekey", "outside ASCII"),
])
def test_an_api_key_a_client_could_never_send_is_refused_at_start_without_being_shown(tiny_onnx, key, what):
    proc = serve_once("--model", str(tiny_onnx), "--api-key", key)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("sgpt: error: --api-key "), proc.stderr
    assert what in proc.stderr and "visible ASCII" in proc.stderr and key.strip() not in proc.stderr


def test_a_key_from_the_environment_is_checked_alike(tiny_onnx):
    proc = serve_once("--model", str(tiny_onnx), env=run_env(SGPT_API_KEY="clé"))
    assert proc.returncode == 1 and proc.stderr.startswith("sgpt: error: $SGPT_API_KEY holds a character outside")


@pytest.mark.parametrize("host", ["x\u202ey", "a" * 64 + ".example", "a\x7fb", "local host", "x\x1b[2J"])
def test_a_host_that_is_no_address_is_one_line(tiny_onnx, host):
    proc = serve_once("--model", str(tiny_onnx), "--host", host)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("sgpt: error: --host ") and "\x1b" not in proc.stderr and "\u202e" not in proc.stderr


def test_a_model_file_named_with_escapes_is_shown_visibly_in_the_banner(tiny_onnx, tmp_path):
    name = "x\x1b]0;PWNED\x07\x1b[2J\u202e"
    hostile = tmp_path / f"{name}.onnx"
    shutil.copy(tiny_onnx, hostile)
    s = start(hostile, "--api-key", "k\\'e\"y$")
    try:
        assert not any(c in s.banner for c in "\x1b\x07\u202e"), repr(s.banner)
        assert "x\\x1b]0;PWNED\\x07" in s.banner
        models = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer k\\'e\"y$"}, timeout=10).json()
        assert models["data"][0]["id"] == name
        curl = next(line for line in s.banner.splitlines() if line.startswith("try: curl"))
        proc = subprocess.run(["bash", "-c", curl[len("try: "):]], capture_output=True, text=True, timeout=60)
        assert json.loads(proc.stdout)["model"] == name  # the banner's own line authenticates
    finally:
        code, err = s.stop()
    assert "Traceback" not in err


def test_sighup_ends_running_streams_cleanly_and_exits_130(tiny_onnx):
    from test_serve import test_a_signal_ends_running_streams_cleanly_and_exits_130 as ends_cleanly

    ends_cleanly(tiny_onnx, signal.SIGHUP)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_serve_starts_is_never_a_traceback(tiny_onnx, sig):
    """The signal at several moments of start-up (imports, model loading, uvicorn starting, idle):
    one line or the default action (before sgpt's entry point runs), never a traceback."""
    # Ctrl-C before sgpt's entry point has run is Python's own KeyboardInterrupt: not this test's moment
    for delay in (0.5, 1.5, 3.0) if sig != signal.SIGINT else (1.5, 3.0):
        proc = subprocess.Popen([*SGPT, "serve", "--model", str(tiny_onnx), "--port", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=run_env(),
                                restore_signals=True, start_new_session=True)
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=15)
            raise AssertionError(f"serve did not stop {delay} s after {sig.name}") from None
        assert "Traceback" not in err and "Error" not in err, (delay, err)
        assert proc.returncode in (130, -sig), (delay, proc.returncode, err)


def test_signals_while_extensions_import_wait_for_the_import_then_interrupt():
    """A Ctrl-C or SIGHUP inside a C extension's initialisation would become `ImportError:
    initialization failed`; held, it is a KeyboardInterrupt once the imports are done."""
    from sgpt_cli.term.serve import signals_after_imports

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals_after_imports():
            for sig in (signal.SIGHUP, signal.SIGINT):
                os.kill(os.getpid(), sig)
                for _ in range(100):  # Python runs the handler at the next bytecode: bounded spin
                    time.sleep(0.001)
            finished.append(True)  # not interrupted in the middle
    assert finished == [True]
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with signals_after_imports():
        pass  # nothing received: nothing raised


def test_a_cancelled_task_is_no_error_on_the_console():
    tb = ('Traceback (most recent call last):\n  File "starlette/routing.py", line 1, in lifespan\n'
          "asyncio.exceptions.CancelledError\n")
    assert not web_limits.not_a_cancellation(logging.LogRecord("uvicorn.error", logging.ERROR, "", 1, tb, None, None))
    exc = asyncio.CancelledError()
    rec = logging.LogRecord("uvicorn.error", logging.ERROR, "", 1, "stopped", None, (type(exc), exc, None))
    assert not web_limits.not_a_cancellation(rec)
    other = logging.LogRecord("uvicorn.error", logging.ERROR, "", 1, tb.replace("asyncio.exceptions.Cancelled",
                                                                                   "Value"), None, None)
    assert web_limits.not_a_cancellation(other)


def test_a_second_ctrl_c_stops_at_once_in_one_line(tiny_onnx):
    s = start(tiny_onnx)
    s.proc.send_signal(signal.SIGINT)
    s.proc.send_signal(signal.SIGINT)
    code, err = s.stop()
    assert code == 130 and err.strip() == "sgpt: interrupted", err
