"""`--batch` is read and scheduled as a stream with bounded memory, output
stays in input order, JSON Lines split on "\\n" only, and whatever a line holds (deep nesting, NaN,
1e999, a mapping as stop list, a line too long) it is that line's error, written as strict JSON."""

from __future__ import annotations

import io
import json
import random
import resource
import subprocess
import sys
import tracemalloc

import pytest

from conftest import SGPT, run_env
from sgpt_cli.term.batch import AHEAD_ROWS, TooLong, iter_batch, parse_line, read_lines, run_batch
from sgpt_cli.infer.engine import Event as RowEvent, GenerationStats
from sgpt_cli.settings import SamplingParams


def strict(line: str):
    """json.loads as strict readers read: NaN and Infinity are errors."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def stats(reason="max_tokens"):
    return GenerationStats(prompt_chars=1, chars=1, ttft_s=0.0, seconds=0.1, chars_per_s=10.0, stop_reason=reason)


class Lines:
    """An output that keeps its lines."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, s):
        self.lines += [x for x in s.split("\n") if x]

    def flush(self):
        pass


class LazyEngine:
    """A stand-in for the engine's promised lazy `generate_batch`: it pulls the next request only
    when one of its `batch_size` row slots is free, and finishes rows in a random order (each after
    a random number of steps), as rows of different lengths do."""

    def __init__(self, seed=0):
        self.rng = random.Random(seed)
        self.pulled = 0

    def generate_batch(self, requests, batch_size=None):
        cap = batch_size or 16
        source = iter(requests)
        active: dict[int, int] = {}  # request index -> steps left
        index, done = 0, False
        while True:
            while not done and len(active) < cap:
                req = next(source, None)
                if req is None:
                    done = True
                    break
                self.pulled += 1
                active[index] = self.rng.randint(1, 6)
                index += 1
            if not active:
                return
            for i in list(active):
                active[i] -= 1
                if active[i] == 0:
                    del active[i]
                    yield RowEvent(i, f"<{i}>", stats())


class EagerEngine(LazyEngine):
    """The engine as it is in this tree: it takes the whole request iterable first."""

    def generate_batch(self, requests, batch_size=None):
        return super().generate_batch(list(requests), batch_size)


class Watched:
    """Batch lines from a generator that counts how far ahead of the output the reader ran."""

    def __init__(self, n, out):
        self.n, self.out, self.taken, self.ahead = n, out, 0, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            self.ahead = max(self.ahead, self.taken - len(self.out.lines))
            yield f'{{"prompt": "p", "id": {i}}}' if i % 97 else "{broken"  # some lines are errors


@pytest.mark.parametrize("engine", [LazyEngine, EagerEngine], ids=["lazy engine", "eager engine"])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_a_long_batch_runs_with_bounded_read_ahead_and_writes_in_input_order(engine, batch_size):
    out, err = Lines(), Lines()
    n = 3000
    watched = Watched(n, out)
    status = run_batch(engine(batch_size), iter_batch(watched, SamplingParams()), out, err, batch_size)
    assert status == 1  # the broken lines
    assert len(out.lines) == n
    rows = [strict(x) for x in out.lines]
    assert [r["id"] for r in rows] == [i if i % 97 else i + 1 for i in range(n)]  # an error row's id is its line
    assert all("error" in r for r in rows[::97])
    assert watched.ahead <= AHEAD_ROWS * batch_size + 1  # the bound the README states


def test_the_stream_pauses_only_at_the_bound_so_a_lazy_engine_keeps_its_rows_full():
    engine = LazyEngine()
    out = Lines()
    lines = iter_batch((json.dumps({"prompt": "p"}) for _ in range(500)), SamplingParams())
    assert run_batch(engine, lines, out, Lines(), 8) == 0
    assert engine.pulled == 500 and len(out.lines) == 500


def test_ctrl_c_in_a_streamed_batch_writes_what_finished_in_order_and_exits_130():
    class Interrupting(LazyEngine):
        def generate_batch(self, requests, batch_size=None):
            for n, ev in enumerate(super().generate_batch(requests, batch_size)):
                if n == 40:
                    raise KeyboardInterrupt
                yield ev

    out = Lines()
    lines = iter_batch((json.dumps({"prompt": "p", "id": i}) for i in range(10_000)), SamplingParams())
    assert run_batch(Interrupting(), lines, out, Lines(), 4) == 130
    ids = [strict(x)["id"] for x in out.lines]
    assert ids == sorted(ids) and len(ids) == 40 and len(ids) < 10_000


# --- 4. lines: b"\n" only -----------------------------------------------------------------------

def test_json_lines_split_on_newline_only():
    rows = [{"prompt": f"a{sep}b", "id": i} for i, sep in enumerate(["\u2028", "\u0085", "\f", "\u2029", "\v", "\x1c", "\r"])]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8") + b"\n"
    got = list(read_lines(io.BytesIO(data)))
    assert len(got) == len(rows)
    assert [json.loads(g)["prompt"] for g in got] == [r["prompt"] for r in rows]


def test_reading_lines_across_chunks_crlf_bom_and_a_missing_last_newline():
    data = "\ufeff" + "x" * 70_000 + "\r\nsecond\nthird"
    got = list(read_lines(io.BytesIO(data.encode("utf-8"))))
    assert got == ["x" * 70_000 + "\r", "second", "third"]
    parsed = list(iter_batch(got, SamplingParams()))
    assert parsed[0].prompt == "x" * 70_000  # the \r of a Windows line end is not the prompt's


def test_a_line_longer_than_the_limit_is_its_own_error_and_is_never_held():
    class Zeros(io.RawIOBase):
        """64 MiB of zero bytes without a line break (what /dev/zero gives), then a good line."""

        def __init__(self):
            self.left = 64 << 20
            self.tail = b'\n{"prompt": "ok"}\n'

        def readable(self):
            return True

        def read(self, n=-1):
            if self.left:
                k = min(n, self.left)
                self.left -= k
                return bytes(k)
            out, self.tail = self.tail[:n], self.tail[n:]
            return out

    tracemalloc.start()
    try:
        got = list(read_lines(Zeros(), limit=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(got[0], TooLong) and int(got[0]) == 64 << 20
    assert got[1:] == ['{"prompt": "ok"}']
    assert peak < 4 << 20  # a MiB line at most, never the 64 MiB
    lines = list(iter_batch(got, SamplingParams()))
    assert "a line may hold at most" in lines[0].error and lines[1].prompt == "ok"


# --- 3. what a line holds ------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("[" * 100_000, None),  # not an object: taken as a plain prompt, never a RecursionError
    ('{"prompt": ' + "[" * 100_000, "nests too deep"),
    ('{"prompt": "x", "id": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}", "nests too deep"),
    ('{"prompt": "x", "id": 1e999}', '"id" must be a string or a finite number'),
    ('{"prompt": "x", "id": -1e999}', '"id" must be a string or a finite number'),
    ('{"prompt": "x", "id": NaN}', "NaN is not JSON"),
    ('{"prompt": "x", "id": Infinity}', "Infinity is not JSON"),
    ('{"prompt": "x", "id": [1, [2e400]]}', '"id" must be a string or a finite number'),
    ('{"prompt": "x", "temperature": NaN}', "NaN is not JSON"),
    ('{"prompt": "x", "stop": {"a": 1}}', "stop must be a list of strings"),
    ('{"prompt": "x", "stop": ["a", 1]}', "stop must be"),
    ('{"prompt": "x", "stop": 5}', "stop must be a list of strings"),
    ('{"prompt": "x", "stop": ["' + "y" * 300 + '"]}', "at most 256 characters"),
    ('{"prompt": "x", "stop": ' + json.dumps(["s"] * 1001) + "}", "at most 1,000 values"),
])
def test_whatever_a_line_holds_it_is_that_lines_error_or_request_only(text, words):
    line = parse_line(3, text, SamplingParams())
    if words is None:
        assert line.error is None and line.prompt == text
        return
    assert line.error is not None and words in line.error, line.error
    assert "\n" not in line.error and len(line.error) < 300


def test_hostile_lines_become_strict_json_error_rows_beside_good_rows(tiny_onnx, tmp_path):
    lines = ['{"prompt": "ROMEO:", "id": "good", "seed": 1, "max_tokens": 5}',
             '{"prompt": ' + "[" * 100_000,
             '{"prompt": "x", "id": 1e999}',
             '{"prompt": "x", "id": NaN}',
             '{"prompt": "x", "stop": {"a": 1}}',
             json.dumps({"prompt": "JULIET:\u2028x\u0085y\fz", "id": "seps", "max_tokens": 3})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run(SGPT + ["complete", "--model", str(tiny_onnx), "--batch", "in.jsonl"], cwd=tmp_path,
                          capture_output=True, env=run_env(), timeout=300)
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
    out = done.stdout.decode("utf-8").split("\n")[:-1]
    rows = [strict(x) for x in out]  # every line strict JSON: no NaN, no Infinity
    assert len(rows) == len(lines)
    assert rows[0]["id"] == "good" and "text" in rows[0] and rows[5]["id"] == "seps" and "text" in rows[5]
    assert [r.get("line") for r in rows[1:5]] == [2, 3, 4, 5] and all("error" in r for r in rows[1:5])
    errors = [x for x in done.stderr.decode().strip().splitlines() if "warning" not in x]
    assert len(errors) == 4  # one line per bad line (line 6 also warns of characters the model lacks)


def test_a_batch_of_many_short_lines_from_a_pipe_runs_in_bounded_memory(tiny_onnx, tmp_path):
    """30 MB of input (blank lines, which are no requests, and 20,000 rows of max_tokens 0):
    the first reader held the whole input and ~540 bytes of memory per input byte; the stream
    holds a window of rows."""
    rows = "".join(json.dumps({"prompt": "A", "id": i, "max_tokens": 0}) + "\n" + "\n" * 1500
                   for i in range(20_000))
    assert len(rows) > 30_000_000
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdin=sys.stdin, "
               "stdout=subprocess.PIPE, stderr=subprocess.PIPE); sys.stderr.buffer.write(r.stderr); "
               "n = r.stdout.count(b'\\n'); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, n)")
    done = subprocess.run([sys.executable, "-c", measure, *SGPT, "complete", "--model", str(tiny_onnx), "--batch", "-"],
                          input=rows.encode(), capture_output=True, env=run_env(), timeout=600)
    rss_kb, status, count = map(int, done.stdout.split())
    assert status == 0 and count == 20_000, done.stderr
    assert rss_kb < 400_000, rss_kb  # the process as loaded (~150 MB), not the input times 540
