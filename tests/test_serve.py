"""`sgpt serve`: the real server in a subprocess on a free 127.0.0.1 port, the tiny model, real
clients (the official openai client, httpx for raw HTTP). Every loop has a count and a time limit;
every server is killed in its fixture's finalizer; traffic goes only to 127.0.0.1.

The main server runs where torch, onnx and matplotlib cannot be imported (tests/test_no_torch.py's
blocker), so serving is proved torch-free too.
"""

from __future__ import annotations

import asyncio
import json
import re
import selectors
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
from test_no_torch import without  # noqa: E402

from sgpt_cli.infer.prompt import read_for_model  # noqa: E402
from sgpt_cli.web.openai_api import ApiError, Limits, chat_script, parse_chat, parse_completion  # noqa: E402
from sgpt_cli.settings import SamplingParams  # noqa: E402

START_S = 60  # a server on a busy 2-core machine starts in seconds; this is the bound, not the expectation


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, banner: str):
        self.proc, self.url, self.banner = proc, url, banner

    def stop(self) -> tuple[int, str]:
        """(exit status, stderr); SIGKILL if it does not go within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, err


def start(model, *flags, env=None) -> Server:
    """`sgpt serve --port 0` started and answering /health, or a failed test (never a hang)."""
    proc = subprocess.Popen([*SGPT, "serve", "--model", str(model), "--device", "cpu", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env or run_env())
    deadline = time.monotonic() + START_S
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while not lines and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=1):  # the banner's three lines come in one write
                lines = [proc.stdout.readline() for _ in range(3)]
        banner = "".join(lines)
        found = re.search(r"(http://127\.0\.0\.1:\d+)/v1 ", banner)
        assert found, (banner, proc.poll())
        server = Server(proc, found.group(1), banner)
        while time.monotonic() < deadline:
            try:
                if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not answer /health in time")
    except BaseException:
        proc.kill()
        proc.communicate(timeout=15)
        raise


@pytest.fixture(scope="module")
def model(tiny_onnx):
    from sgpt_cli.infer.onnx_model import OnnxModel

    return OnnxModel(tiny_onnx, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_onnx, tmp_path_factory):
    env = without(tmp_path_factory.mktemp("no-torch"), "torch", "onnx", "matplotlib")
    s = start(tiny_onnx, "--rows", "8", env=env)
    yield s
    code, err = s.stop()
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def small(tiny_onnx):
    """One row, one waiting, a key, a small body limit: the limits' tests."""
    s = start(tiny_onnx, "--rows", "1", "--queue", "1", "--api-key", "sesame", "--max-body", "2048",
              "--max-tokens-limit", "1000000")
    yield s
    s.stop()


KEY = {"Authorization": "Bearer sesame"}


def alone(model, prompt: str, **params) -> str:
    """The text `sgpt complete --seed S PROMPT` gives: the prompt read as complete reads it, one
    request alone in a fresh engine."""
    from sgpt_cli.infer.engine import Engine

    fed = read_for_model([prompt], model.tokenizer.stoi, model.block_size).fed
    return "".join(e.text for e in Engine(model).stream(fed, SamplingParams(**params)))


def sse(response) -> list:
    """The JSON objects of a server-sent event stream, then "[DONE]"."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return out


def in_flight(server, headers=None) -> int:
    text = httpx.get(server.url + "/metrics", headers=headers, timeout=10).text
    return int(re.search(r"^sgpt_requests_in_flight (\d+)$", text, re.M).group(1))


def wait_idle(server, headers=None, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while in_flight(server, headers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(server, headers) == 0


# --- the official client ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_banner_says_the_url_the_model_and_a_curl_line(server, tiny_onnx):
    assert f"{server.url}/v1" in server.banner and "model tiny" in server.banner
    curl = next(line for line in server.banner.splitlines() if line.startswith("try: curl"))
    proc = subprocess.run(["bash", "-c", curl[len("try: "):]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["choices"][0]["text"], proc.stderr


def test_openai_client_completion_is_sgpt_complete_with_the_same_seed(client, tiny_onnx):
    got = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=40, seed=7, temperature=0.8)
    proc = subprocess.run([*SGPT, "complete", "--model", str(tiny_onnx), "--seed", "7", "-n", "40", "ROMEO:"],
                          capture_output=True, text=True, env=run_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert got.choices[0].text == proc.stdout and len(proc.stdout) == 40
    assert got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 40 and got.usage.prompt_tokens == len("ROMEO:")


def test_openai_client_streams_the_same_text(client, model):
    stream = client.completions.create(model="tiny", prompt="JULIET:", max_tokens=30, seed=3, stream=True,
                                       stop=["Qx"], extra_body={"top_k": 8, "repetition_penalty": 1.2})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text == alone(model, "JULIET:", max_tokens=30, seed=3, stop=("Qx",), top_k=8, repetition_penalty=1.2)
    assert chunks[-1].choices[0].finish_reason == "length"  # 30 characters, no "Qx" in them


def test_a_stream_sends_at_most_a_chunk_per_chunk_interval_and_the_same_text(server, model):
    """Text made between two chunks goes out in one (sgpt_cli.web.server.CHUNK_S): a stream of 600
    characters is far fewer than 600 chunks, however fast the model, and still its single run."""
    from sgpt_cli.web.server import CHUNK_S

    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 600, "seed": 8, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        chunks = [c for c in sse(r) if c != "[DONE]"]
    elapsed = time.perf_counter() - t0
    assert "".join(c["choices"][0]["text"] for c in chunks) == alone(model, "ROMEO:", max_tokens=600, seed=8)
    assert len(chunks) <= 2 + elapsed / CHUNK_S


def test_a_streams_last_chunk_goes_out_when_it_is_made_not_at_the_next_chunk_time(model, monkeypatch):
    """The chunk interval gathers text; it never holds back an end. With CHUNK_S an hour, a stream whose
    text and last event come one after the other still ends at once (this test's bound: 30 s)."""
    from types import SimpleNamespace

    from sgpt_cli.infer.engine import Event, GenerationStats
    from sgpt_cli.web.openai_api import Reply
    from sgpt_cli.web import server as web

    monkeypatch.setattr(web, "CHUNK_S", 3600.0)
    parsed = parse_completion({"model": "m", "prompt": "ROMEO:", "max_tokens": 2, "stream": True}, "m",
                              model.tokenizer.stoi, model.block_size, Limits())
    state = SimpleNamespace(batcher=SimpleNamespace(cancel=lambda ids: None, failure=None))
    stats = GenerationStats(prompt_chars=6, chars=2, ttft_s=0.0, seconds=0.0, chars_per_s=0.0, stop_reason="max_tokens")

    async def run() -> list[str]:
        sink = web.Sink()
        out = []
        sink.put_nowait((0, Event(0, "a")))
        async for chunk in web.stream(state, Reply(parsed, "m"), [0], sink):
            out.append(chunk["data"])
            if len(out) == 1:  # the last event arrives just after the first chunk went out
                sink.put_nowait((0, Event(0, "b", stats)))
                sink.ended.set()
        return out

    out = asyncio.run(asyncio.wait_for(run(), 30))
    assert out[-1] == "[DONE]" and "".join(json.loads(d)["choices"][0]["text"] for d in out[:-1]) == "ab"


def test_openai_client_chat_is_the_reply_sgpt_chat_makes(client, model):
    from sgpt_cli.infer.chat_session import ChatSession
    from sgpt_cli.infer.engine import Engine

    messages = [{"role": "user", "name": "ROMEO", "content": "But soft, what light?"},
                {"role": "user", "content": "JULIET:"}]
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=50, seed=11)
    session = ChatSession(model.tokenizer.chars, model.block_size)
    session.set("seed", "11")
    session.set("max_tokens", "50")
    session.add_user_text("ROMEO: But soft, what light?")
    session.add_user_text("JULIET:")
    assert session.script == "ROMEO:\nBut soft, what light?\n\nJULIET:\n"
    expected = "".join(session.stream_reply(Engine(model)))
    assert got.choices[0].message.content == expected and got.choices[0].message.role == "assistant"
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=50, seed=11, stream=True)
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == got.choices[0].finish_reason


def believed_alone(model, prompt: str, **params) -> list:
    """The TokenLogprobs one request alone gives (as `alone` gives its text)."""
    from sgpt_cli.infer.engine import Engine

    fed = read_for_model([prompt], model.tokenizer.stoi, model.block_size).fed
    return [t for e in Engine(model).stream(fed, SamplingParams(**params)) for t in e.logprobs]


def test_openai_client_completion_logprobs_in_the_legacy_shape_streamed_and_not(client, model):
    """/v1/completions' `logprobs` K: tokens, token_logprobs, top_logprobs (the K likeliest and the
    chosen one) and text_offset, exactly the engine's numbers for the request alone."""
    got = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, seed=7, logprobs=3)
    choice = got.choices[0]
    lp = choice.logprobs
    ref = believed_alone(model, "ROMEO:", max_tokens=30, seed=7, logprobs=3)
    assert "".join(lp.tokens) == choice.text and lp.text_offset == list(range(30))
    assert lp.tokens == [t.token for t in ref] and lp.token_logprobs == [t.logprob for t in ref]
    assert lp.top_logprobs == [{**dict(t.top), t.token: t.logprob} for t in ref]
    assert all(3 <= len(top) <= 4 for top in lp.top_logprobs)
    chunks = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, seed=7, logprobs=3,
                                            stream=True))
    parts = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset  # offsets run on across chunks
    assert [x for p in parts for x in p.token_logprobs] == lp.token_logprobs
    plain = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, seed=7)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == choice.text


def test_openai_client_chat_logprobs_in_the_chat_shape_streamed_and_not(client, model):
    """/v1/chat/completions' `logprobs: true` and `top_logprobs`: content entries with token,
    logprob, bytes and top_logprobs, one per character of the reply."""
    messages = [{"role": "user", "content": "JULIET:"}]
    kw = dict(model="tiny", messages=messages, max_tokens=40, seed=2)
    got = client.chat.completions.create(**kw, logprobs=True, top_logprobs=2)
    content = got.choices[0].logprobs.content
    from sgpt_cli.infer.engine import Engine

    script, _ = chat_script(messages, model.tokenizer.chars, model.block_size)
    events = Engine(model).stream(script, SamplingParams(max_tokens=40, seed=2, stop=("\n\n",), logprobs=2))
    ref = [t for e in events for t in e.logprobs]
    assert "".join(c.token for c in content) == got.choices[0].message.content
    assert [(c.token, c.logprob, [(t.token, t.logprob) for t in c.top_logprobs]) for c in content] == [
        (t.token, t.logprob, list(t.top)) for t in ref]
    assert all(c.bytes == list(c.token.encode("utf-8")) and len(c.top_logprobs) == 2 for c in content)
    chunks = list(client.chat.completions.create(**kw, logprobs=True, top_logprobs=2, stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]
    chosen_only = client.chat.completions.create(**kw, logprobs=True)
    assert all(c.top_logprobs == [] for c in chosen_only.choices[0].logprobs.content)
    assert client.chat.completions.create(**kw).choices[0].logprobs is None


def test_n_choices_and_a_list_of_prompts_each_equal_their_single_run(server, model):
    body = {"prompt": ["ROMEO:", "K"], "n": 3, "max_tokens": 15, "seed": 5, "echo": True}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    for c in choices:
        prompt, j = body["prompt"][c["index"] // 3], c["index"] % 3
        assert c["text"] == prompt + alone(model, prompt, max_tokens=15, seed=5 + j)
    usage = r.json()["usage"]
    assert usage["completion_tokens"] == 6 * 15 and usage["prompt_tokens"] == len("ROMEO:") + 1
    body = {"messages": [{"role": "user", "content": "JULIET:"}], "n": 2, "seed": 8, "max_tokens": 12,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        events = sse(r)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] <= 24
    for j in range(2):
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"][0]["index"] == j)
        assert text == alone(model, "JULIET:\n", max_tokens=12, seed=8 + j, stop=("\n\n",))


def test_requests_spread_over_the_lanes_each_its_single_run_and_a_cancel_reaches_its_lane(tiny_onnx, model):
    """Two lanes (each an Engine with a 1-thread session and a thread of its own): requests go to the
    lane with the fewest in flight, a row's text is its single run whatever lane it ran in, and a
    cancel by the (lane, request) number ends that request (this test's bound: 60 s)."""
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel
    from sgpt_cli.web import server as web

    engines = [Engine(OnnxModel(tiny_onnx, device="cpu", threads=1), max_rows=2) for _ in range(2)]
    batcher = web.Batcher(engines, web.Metrics(), capacity=16)
    prompts = ["ROMEO:", "JULIET:", "HAMLET:", "To be"]
    fed = lambda p: read_for_model([p], model.tokenizer.stoi, model.block_size).fed  # noqa: E731

    async def drain(sink) -> tuple[str, str]:
        text = ""
        while True:
            _, event = await sink.get()
            text += event.text
            if event.stats is not None:
                return text, event.stats.stop_reason

    async def run():
        batcher.start(asyncio.get_running_loop())
        sinks = [web.Sink() for _ in range(len(prompts) + 1)]
        ids = [batcher.submit([(fed(p), SamplingParams(max_tokens=40, seed=k))], sinks[k]) for k, p in enumerate(prompts)]
        endless = batcher.submit([(fed("KING:"), SamplingParams(max_tokens=10**6, seed=9))], sinks[-1])
        batcher.cancel(endless)
        return ids, endless, [await drain(sink) for sink in sinks]

    try:
        ids, endless, results = asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        batcher.close()
    assert [key[0][0] for key in ids] == [0, 1, 0, 1] and endless[0][0] == 0
    assert [text for text, _ in results[:-1]] == [alone(model, p, max_tokens=40, seed=k) for k, p in enumerate(prompts)]
    assert results[-1][1] == "cancelled" and batcher.in_flight == 0 and batcher.load == [0, 0]


def test_models_health_and_metrics(server):
    models = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert httpx.get(server.url + "/v1/models/tiny", timeout=10).json()["id"] == "tiny"
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    metrics = httpx.get(server.url + "/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("requests_total", "errors_total", "queue_depth", "rows_per_step", "chars_per_second",
                 "generated_chars_total"):
        assert f"# TYPE sgpt_{name} " in metrics.text


def test_unknown_characters_are_dropped_and_said_in_the_response(server, model):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "ROMEO\u00e9\u4e00:", "max_tokens": 10, "seed": 2},
                   timeout=60).json()
    assert r["warnings"] == ["dropped characters the model does not know: '\u00e9\u4e00'"]
    assert r["choices"][0]["text"] == alone(model, "ROMEO:", max_tokens=10, seed=2)


# --- bad input: raw HTTP ------------------------------------------------------------------------------

BAD = [
    (b"{not json", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, "invalid_json"),
    (b"\xff\xfe", 400, None, "invalid_json"),
    ({"prompt": "A", "temperature": "hot"}, 400, "temperature", "invalid_value"),
    ({"prompt": "A", "top_p": 0}, 400, "top_p", "invalid_value"),
    ({"prompt": "A", "max_tokens": 5000}, 400, "max_tokens", "invalid_value"),
    ({"prompt": "A", "max_tokens": 2.5}, 400, "max_tokens", "invalid_value"),
    ({"prompt": "A", "n": 0}, 400, "n", "invalid_value"),
    ({"prompt": "A", "n": 17}, 400, "n", "invalid_value"),
    ({"prompt": "A", "stream": "yes"}, 400, "stream", "invalid_value"),
    ({"prompt": "A", "stop": [""]}, 400, "stop", "invalid_value"),
    ({"prompt": "A", "seed": -1}, 400, "seed", "invalid_value"),
    ({"prompt": "A", "max_tokenz": 5}, 400, "max_tokenz", "unknown_field"),
    ({"prompt": "A", "logprobs": 21}, 400, "logprobs", "invalid_value"),
    ({"prompt": "A", "logprobs": "3"}, 400, "logprobs", "invalid_value"),
    ({"prompt": "A", "logprobs": 1, "echo": True}, 400, "logprobs", "unsupported"),
    ({"prompt": "A", "presence_penalty": 0.5}, 400, "presence_penalty", "unsupported"),
    ({"prompt": [1, 2, 3]}, 400, "prompt", "invalid_type"),
    ({"max_tokens": 3}, 400, "prompt", "missing_field"),
    ({"prompt": "A", "model": "gpt-4"}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize("body, status, param, code", BAD, ids=[str(b)[:40] for b, *_ in BAD])
def test_bad_requests_get_openai_error_objects(server, body, status, param, code):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/completions", timeout=30, headers={"Content-Type": "application/json"}, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    assert "\n" not in error["message"] and "Traceback" not in r.text
    if code == "unsupported" and param == "logprobs":
        assert "leave out echo or logprobs" in error["message"]


CHAT_BAD = [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "name": "R2D2", "content": "x"}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
]


@pytest.mark.parametrize("body, param", CHAT_BAD, ids=[p for _, p in CHAT_BAD])
def test_bad_chat_requests(server, body, param):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_paths_and_methods(server):
    r = httpx.get(server.url + "/v2/anything", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/completions", timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    assert httpx.get(server.url + "/v1/models/gpt-4", timeout=10).status_code == 404


def test_the_server_serves_on_after_bad_input(server):
    for junk in (b"\x00" * 100, b"{" * 5000, b'{"prompt": "' + b"A" * 70_000 + b'"}'):
        assert httpx.post(server.url + "/v1/completions", content=junk, timeout=30).status_code == 400
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        s.recv(1000)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "A", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 3


# --- keys and limits -----------------------------------------------------------------------------------

def test_a_key_is_asked_for_everywhere_but_health(small):
    body = {"prompt": "A", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
        r = httpx.post(small.url + "/v1/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(small.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(small.url + "/health", timeout=10).status_code == 200
    assert httpx.post(small.url + "/v1/completions", json=body, headers=KEY, timeout=30).status_code == 200


def test_an_oversized_body_is_413(small):
    r = httpx.post(small.url + "/v1/completions", json={"prompt": "A" * 3000}, headers=KEY, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit holds while the body streams in
        for _ in range(4):
            yield b" " * 1000

    r = httpx.post(small.url + "/v1/completions", content=chunked(), headers=KEY, timeout=30)
    assert r.status_code == 413


def long_stream(server, **extra):
    body = {"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True, **extra}
    return httpx.stream("POST", server.url + "/v1/completions", json=body, headers=KEY, timeout=30)


def test_past_the_queue_is_429_with_retry_after(small):
    with long_stream(small) as running, long_stream(small) as waiting:
        assert running.status_code == 200 and waiting.status_code == 200
        lines = running.iter_lines()  # kept: a closed iterator closes the stream (a disconnect)
        next(lines)
        r = httpx.post(small.url + "/v1/completions", json={"prompt": "A", "max_tokens": 2}, headers=KEY, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    wait_idle(small, KEY)


def test_a_client_that_disconnects_frees_its_row(small):
    """One row: while the endless stream held it, the next request could not start."""
    with long_stream(small) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    t0 = time.monotonic()
    r = httpx.post(small.url + "/v1/completions", json={"prompt": "A", "max_tokens": 5}, headers=KEY, timeout=20)
    assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 5
    assert time.monotonic() - t0 < 20
    wait_idle(small, KEY)
    # a non-streamed request whose client goes away is cancelled too
    port = int(small.url.rsplit(":", 1)[1])
    payload = json.dumps({"prompt": "A", "max_tokens": 1_000_000}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.monotonic() + 20
        while in_flight(small, KEY) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    wait_idle(small, KEY)


# --- many clients at once --------------------------------------------------------------------------------

PROMPTS = ["ROMEO:", "JULIET:", "K", "", "First Citizen:\n", "What, ho!", "MENENIUS:\nWhy", "Is't possible?"]


def test_32_streaming_clients_each_get_their_single_run(server, model):
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6 + i % 7, "seed": 1000 + i, "stream": True,
               "temperature": 0.0 if i % 5 == 0 else 0.9, "stop": ["\n\n"] if i % 3 == 0 else None}
              for i in range(32)]

    async def one(client, body):
        async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            chunks = [json.loads(line[6:]) for line in [x async for x in r.aiter_lines()]
                      if line.startswith("data: {")]
        return "".join(c["choices"][0]["text"] for c in chunks)

    async def everyone():
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, b) for b in bodies)), 120)

    texts = asyncio.run(everyone())
    for body, text in zip(bodies, texts):
        expected = alone(model, body["prompt"], max_tokens=body["max_tokens"], seed=body["seed"],
                         temperature=body["temperature"], stop=tuple(body["stop"] or ()))
        assert text == expected, body
    steps = httpx.get(server.url + "/metrics", timeout=10).text
    assert float(re.search(r"^sgpt_rows_per_step (\S+)$", steps, re.M).group(1)) > 1  # they shared steps


# --- stopping ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_running_streams_cleanly_and_exits_130(tiny_onnx, sig):
    s = start(tiny_onnx, "--rows", "2", "--max-tokens-limit", "1000000")
    try:
        results: dict[int, list] = {}
        started = threading.Semaphore(0)

        def reader(i):
            body = {"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True}
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
                out = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        if not out:
                            started.release()
                        out.append(line[6:])
                results[i] = out

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        for _ in range(2):  # two run; the third waits for a row (and gets its first chunk at the end)
            assert started.acquire(timeout=30)
        deadline = time.monotonic() + 30
        while in_flight(s) < 3 and time.monotonic() < deadline:  # the third is queued, not still connecting
            time.sleep(0.05)
        assert in_flight(s) == 3
        t0 = time.monotonic()
        s.proc.send_signal(sig)
        for t in threads:
            t.join(15)
        assert time.monotonic() - t0 < 10 and all(not t.is_alive() for t in threads)
        for i in range(3):
            assert results[i][-1] == "[DONE]", results[i][-3:]
            last = json.loads(results[i][-2])
            assert last["choices"][0]["finish_reason"] == "length"
        s.proc.wait(15)
    finally:
        code, err = s.stop()
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err


# --- command line -------------------------------------------------------------------------------------------

def test_serve_without_the_extra_says_how_to_install_it(tmp_path):
    env = without(tmp_path, "uvicorn")
    proc = subprocess.run([*SGPT, "serve"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "sgpt serve needs uvicorn" in proc.stderr and "pip install 'sgpt[serve]'" in proc.stderr


def test_a_port_in_use_is_one_line(tiny_onnx, server):
    port = server.url.rsplit(":", 1)[1]
    proc = subprocess.run([*SGPT, "serve", "--model", str(tiny_onnx), "--port", port], capture_output=True,
                          text=True, env=run_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot listen on 127.0.0.1" in proc.stderr and "--port" in proc.stderr


def test_bad_flags_are_usage_errors():
    proc = subprocess.run([*SGPT, "serve", "--port", "70000"], capture_output=True, text=True, env=run_env(),
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 2 and "--port must be a whole number from 0 to 65535" in proc.stderr


# --- the request checks, without a server ----------------------------------------------------------------

def test_messages_become_the_play_script(model):
    vocab = model.tokenizer.chars
    script, dropped = chat_script([
        {"role": "system", "content": "A room in the castle."},
        {"role": "user", "name": "first_citizen", "content": "Before we proceed, hear me."},
        {"role": "assistant", "content": "ALL:\nSpeak, speak."},
        {"role": "user", "name": "ROMEO", "content": ""},
    ], vocab, 1000)
    assert script == ("A room in the castle.\n\nFIRST CITIZEN:\nBefore we proceed, hear me.\n\nALL:\nSpeak, speak."
                      "\n\nROMEO:\n")
    assert dropped == []


def test_parsing_gives_one_job_per_choice(model):
    stoi, window = model.tokenizer.stoi, model.block_size
    req = parse_completion({"prompt": ["A", "B"], "n": 2, "seed": 9, "stop": "\n"}, "tiny", stoi, window, Limits())
    assert [(p, s.seed, s.stop) for p, s in req.jobs] == [("A", 9, ("\n",)), ("A", 10, ("\n",)),
                                                          ("B", 9, ("\n",)), ("B", 10, ("\n",))]
    chat = parse_chat({"messages": [{"role": "user", "content": "JULIET:"}]}, "tiny", model.tokenizer.chars,
                      window, Limits())
    assert chat.jobs[0][1].stop == ("\n\n",) and chat.jobs[0][1].max_tokens == 300  # sgpt chat's reply
    odd = parse_chat({"messages": [{"role": "user", "content": "JULIET\u00e9:"}]}, "tiny", model.tokenizer.chars,
                     window, Limits())
    assert odd.jobs[0][0] == "JULIET:\n" and odd.warnings == ["dropped characters the model does not know: '\u00e9'"]
    asked = parse_chat({"messages": [{"role": "user", "content": "JULIET:"}], "logprobs": True, "top_logprobs": 3},
                       "tiny", model.tokenizer.chars, window, Limits())
    assert asked.logprobs and asked.jobs[0][1].logprobs == 3 and not chat.logprobs
    assert parse_completion({"prompt": "A", "logprobs": 0}, "tiny", stoi, window, Limits()).jobs[0][1].logprobs == 0
    with pytest.raises(ApiError) as e:
        parse_completion({"prompt": "A", "max_tokens": 11}, "tiny", stoi, window, Limits(max_tokens_limit=10))
    assert e.value.param == "max_tokens" and "10" in e.value.message


def test_where_the_banner_points():
    from sgpt_cli.web.server import is_local, url_host

    assert [url_host(h) for h in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost")] == [
        "127.0.0.1", "127.0.0.1", "[::1]", "[::1]", "localhost"]
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.2") and not is_local("example.org")


def test_the_key_can_come_from_the_environment(tiny_onnx):
    s = start(tiny_onnx, env=run_env(SGPT_API_KEY="from-env"))
    try:
        assert '"Authorization: Bearer $SGPT_API_KEY"' in s.banner and "from-env" not in s.banner
        curl = next(line for line in s.banner.splitlines() if line.startswith("try: curl"))[len("try: "):]
        proc = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                              env=run_env(SGPT_API_KEY="from-env"))
        assert proc.returncode == 0 and "choices" in proc.stdout, proc.stdout
        assert httpx.get(s.url + "/v1/models", timeout=10).status_code == 401
    finally:
        s.stop()
