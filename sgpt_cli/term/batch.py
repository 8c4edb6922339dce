"""`sgpt complete --batch FILE` and `--num-samples N`: many continuations in one batched run.

What it holds: reading a JSON Lines batch as a stream (`read_lines`: split on b"\\n" only, at most
MAX_LINE_BYTES a line; `iter_batch`/`parse_line`: one request per line, or a plain line that is a
prompt; whatever a line holds, a malformed one becomes an error for that line only), running
requests through `Engine.generate_batch` as its rows free up, never more than AHEAD_ROWS x the batch
size lines ahead of the output, and writing each result in input order as soon as it and every
earlier one are done (`run_batch`), as strict JSON (`dumps`: no NaN, terminal controls escaped),
and the N samples of one prompt (`run_samples`). A row (or sample) that asks for logprobs (its
"logprobs", or --logprobs) carries them as `complete --json` does (`with_logprobs`).

What it does not do: sample or run ONNX (sgpt_cli.infer.engine does), parse flags (sgpt_cli.term.complete),
import Typer, rich or torch.

Exit status of a batch: 0 when every line was a good request, 1 when any line was malformed (the
good ones still ran and were written), 130 on Ctrl-C (what had finished is written first).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, TextIO

from sgpt_cli.errors import SgptError, visible
from sgpt_cli.files import without_bom
from sgpt_cli.jsonout import dumps, unreadable_why  # noqa: F401  (batch.dumps: the one JSON writer)
from sgpt_cli.settings import draw_seed

DEFAULT_BATCH_SIZE = 64  # rows at once: 64 prompts x 200 characters took 7.0 s at 32 rows, 6.5 s at 64
# on 2 idle cores (whole `complete --batch` process, 3 runs each); a step costs ~390 us a row at 32,
# ~350 at 64 (benchmarks: each row streams its 2.4 MB of cache a step, which more rows do not share)
MAX_ROWS = 4096  # --num-samples and --batch-size: a typo of 10**9 is refused, not allocated
AHEAD_ROWS = 8  # --batch reads at most 8 x --batch-size lines past the oldest line not yet written
MAX_LINE_BYTES = 1 << 24  # a --batch line longer than 16 MiB is that line's error (skipped, not held)
READ_CHUNK = 1 << 16  # bytes read at a time
ROW_SETTINGS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop",
                "logprobs")
ROW_KEYS = ("prompt", "id", *ROW_SETTINGS)


@dataclass
class BatchLine:
    """One line of the input: a request, or the error that keeps it from being one."""
    number: int  # 1-based line number in the input
    id: object  # the row's "id", else its line number
    prompt: str = ""
    params: object = None  # SamplingParams when the line is good
    error: str | None = None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads would take NaN, Infinity, -Infinity


def parse_line(number: int, line: str, defaults) -> BatchLine | None:
    """A line -> BatchLine (None for a blank line). `defaults`: SamplingParams from the flags, which
    a row's own settings override. Whatever the line holds, the result is a BatchLine: deep
    nesting, NaN, a non-finite id or a wrong type is that line's error, never an exception."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # 100,000 nested brackets: the decoder's stack, not ours
        if text.lstrip().startswith("{"):
            return BatchLine(number, number, error="not valid JSON (it nests too deep)")
        return BatchLine(number, number, text, params=defaults)  # not an object: a plain prompt
    except ValueError as exc:
        if text.lstrip().startswith("{"):
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else unreadable_why(exc)
            return BatchLine(number, number, error=f"not valid JSON ({why}{where})")
        return BatchLine(number, number, text, params=defaults)  # a plain line is a prompt
    if not isinstance(value, dict):
        return BatchLine(number, number, text, params=defaults)  # e.g. a line that reads 1999
    row_id = value.get("id", number)
    try:
        # a string or a number, as the error says: an object or a list is not an id, nor true or null;
        # "id": 1e999 is infinite and a 5,000-digit one past Python's int-digit limit: no strict JSON
        # writes either back
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int, float)):
            raise ValueError(type(row_id).__name__)
        dumps(row_id)
    except (ValueError, RecursionError):
        return BatchLine(number, number, error='"id" must be a string or a finite number')
    unknown = sorted(set(value) - set(ROW_KEYS))
    if unknown:
        return BatchLine(number, row_id, error=f"unknown key {visible(unknown[0])!r}; a row may have "
                                               f"{', '.join(ROW_KEYS)}")
    if not isinstance(value.get("prompt"), str):
        return BatchLine(number, row_id, error='needs "prompt" as a string')
    settings = {k: value[k] for k in ROW_SETTINGS if k in value}
    if isinstance(settings.get("stop"), str):
        settings["stop"] = [settings["stop"]]  # one stop string as the flag takes it
    try:
        params = row_params(defaults, settings)
    except (SgptError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # whatever a row's values do to a check (OverflowError included) is that row's error: the
        # finished rows and the rest of the batch go on
        return BatchLine(number, row_id, error=str(exc) or type(exc).__name__)
    return BatchLine(number, row_id, value["prompt"], params=params)


def row_params(defaults, settings: dict):
    """The flags' SamplingParams with a row's settings over them, checked (UsageError naming the key)."""
    from sgpt_cli.settings import NAME, sampling_params_from

    return sampling_params_from(settings, NAME, defaults=dataclasses.asdict(defaults))


def iter_batch(lines: Iterable[str], defaults, prepare=None) -> Iterator[BatchLine]:
    """BatchLines of `lines` (blank ones skipped), one at a time; `prepare(line)` is called on each
    good one (the command cuts its prompt to what the model reads, and warns)."""
    for number, line in enumerate(lines, 1):
        if isinstance(line, TooLong):
            yield BatchLine(number, number, error=f"the line is {int(line):,} bytes long; a line may hold at most "
                                                  f"{MAX_LINE_BYTES >> 20} MiB")
            continue
        parsed = parse_line(number, line, defaults)
        if parsed is not None:
            if prepare is not None and not parsed.error:
                prepare(parsed)
            yield parsed


class TooLong(str):
    """A line longer than MAX_LINE_BYTES, as `read_lines` gives it: only its length was kept."""


def read_lines(f: BinaryIO, limit: int = None) -> Iterator[str]:
    """The lines of a binary stream, split on b"\\n" only (JSON Lines: U+2028, U+0085 or a form feed
    inside a string is text), decoded as UTF-8 with replacement, a leading BOM dropped. Streamed: at
    most one line of `limit` bytes (MAX_LINE_BYTES) is held; a longer line is skipped to its end and
    given as a TooLong (its error row), so /dev/zero runs in bounded memory until Ctrl-C."""
    limit = MAX_LINE_BYTES if limit is None else limit
    read = getattr(f, "read1", f.read)
    parts: list[bytes] = []
    size = 0
    skipped = -1  # bytes of a too-long line skipped so far; -1: not skipping
    first = True

    def line() -> str:
        nonlocal first
        if skipped >= 0:
            return TooLong(f"{skipped}")
        text = b"".join(parts).decode("utf-8", errors="replace")
        if first:
            text = without_bom(text)
        first = False
        return text

    while True:
        try:
            chunk = read(READ_CHUNK)
        except OSError as exc:  # EIO, a folder given as the file
            raise SgptError(f"cannot read the --batch input: {exc.strerror or exc}") from None
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if skipped >= 0:
                skipped += len(piece)
            elif size + len(piece) > limit:
                skipped, parts, size = size + len(piece), [], 0
            elif piece:
                parts.append(piece)
                size += len(piece)
            if nl < 0:
                break
            yield line()
            parts, size, skipped, first = [], 0, -1, False
            start = nl + 1
    if parts or skipped >= 0:
        yield line()


def with_logprobs(row: dict, params, believed) -> dict:
    """`row` with "logprobs" (OpenAI's chat shape, as `complete --json` writes it) when `params` asked."""
    if params.logprobs is not None:
        from sgpt_cli.infer.logprobs import chat_entries

        row["logprobs"] = {"content": chat_entries(believed)}
    return row


def result_row(line: BatchLine, text: str, stats, believed=()) -> dict:
    return with_logprobs({"id": line.id, "text": text, "chars": len(text), "stop_reason": stats.stop_reason,
                          "seed": line.params.seed}, line.params, believed)


def run_batch(engine, lines: Iterable[BatchLine], out: TextIO, err: TextIO, batch_size: int | None,
              clean=lambda s: s, ahead: int | None = None) -> int:
    """Generate every good line, write JSON Lines to `out` in input order (an error object for a
    malformed line, reported on `err` too). Returns the exit status (module doc).
    `clean` makes model text safe for a terminal (the caller's sanitiser).

    Streamed: `lines` is pulled only as the engine takes requests, and never more than `ahead`
    lines (AHEAD_ROWS x the batch size) past the oldest line not yet written. When that window is
    full the request stream pauses (it ends this engine run; the running rows finish, are written,
    and a new run takes the next lines), so the memory held is bounded by `ahead` rows' prompts
    and texts, whatever the input's length."""
    ahead = ahead or AHEAD_ROWS * (batch_size or DEFAULT_BATCH_SIZE)
    source = iter(lines)
    taken = written = 0  # lines taken from `source`; lines written to `out`
    results: dict[int, dict] = {}  # line index -> the object to write, until every earlier one is
    held: dict[int, BatchLine] = {}  # line index -> the line, while it runs
    state = {"exhausted": False, "errors": False}

    def write_ready() -> None:
        nonlocal written
        while written in results:
            out.write(dumps(results.pop(written)) + "\n")
            written += 1
        out.flush()

    def requests(starts: list[int]) -> Iterator[tuple]:
        nonlocal taken
        while taken - written < ahead:
            line = next(source, None)
            if line is None:
                state["exhausted"] = True
                return
            i, taken = taken, taken + 1
            if line.error:
                state["errors"] = True
                err.write(visible(f"sgpt: error: line {line.number}: {line.error}") + "\n")
                err.flush()
                results[i] = {"id": line.id, "line": line.number, "error": line.error}
                write_ready()
                continue
            if line.params.seed is None:  # drawn, and written back in its row: it can be redone
                line.params = dataclasses.replace(line.params, seed=draw_seed())
            held[i] = line
            starts.append(i)
            yield line.prompt, line.params

    interrupted = False
    try:
        while not state["exhausted"] and not interrupted:
            starts: list[int] = []  # this run's request index -> line index
            texts: dict[int, list[str]] = {}
            believed: dict[int, list] = {}  # with logprobs: each row's TokenLogprobs so far
            before = taken
            events = engine.generate_batch(requests(starts), batch_size)
            try:
                for ev in events:
                    i = starts[ev.request]
                    texts.setdefault(i, []).append(ev.text)
                    if ev.logprobs:
                        believed.setdefault(i, []).extend(ev.logprobs)
                    if ev.stats is not None:
                        if ev.stats.stop_reason == "interrupted":
                            interrupted = True
                            continue
                        results[i] = result_row(held.pop(i), clean("".join(texts.pop(i))), ev.stats,
                                                believed.pop(i, ()))
                        write_ready()
            finally:
                if hasattr(events, "close"):
                    events.close()
            if interrupted:
                break
            for i in range(written, taken):  # a row the engine gave no end: never silently lost
                if i not in results:
                    line = held.pop(i)
                    results[i] = {"id": line.id, "line": line.number, "error": "no result (the engine ended early)"}
            write_ready()
            if taken == before and not state["exhausted"]:
                break  # an engine that takes no request: nothing more can run
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        # Ctrl-C: what finished is written (in input order), what did not is left out
        for i in sorted(k for k in results if k >= written):
            out.write(dumps(results[i]) + "\n")
        out.flush()
        return 130
    return 1 if state["errors"] else 0


def sample_seeds(seed: int | None, n: int) -> list[int]:
    """Sample i uses seed + i; without --seed a random base, so the samples can be redone one by one."""
    base = draw_seed() if seed is None else seed
    return [base + i for i in range(n)]


def run_samples(engine, prompt: str, fed: str, params, n: int, batch_size: int | None, *, out: TextIO,
                errs: TextIO, echo: bool, as_json: bool, verbose: bool, color: bool, about: dict) -> dict:
    """`--num-samples N`: N continuations of one prompt (prefilled once), sample i with seed
    --seed + i, each exactly what `sgpt complete --seed S+i` writes. Plain output: each sample under
    a header line, written when it and every earlier one are done; --json: one object, a list."""
    seeds = sample_seeds(params.seed, n)
    reqs = [(fed, dataclasses.replace(params, seed=s)) for s in seeds]
    texts: list[list[str]] = [[] for _ in range(n)]
    believed: list[list] = [[] for _ in range(n)]  # with logprobs: each sample's TokenLogprobs
    done: dict[int, object] = {}
    shown = 0
    t0 = time.perf_counter()
    interrupted = False
    events = engine.generate_batch(reqs, batch_size)
    try:
        for ev in events:
            texts[ev.request].append(ev.text)
            believed[ev.request].extend(ev.logprobs or ())
            if ev.stats is None:
                continue
            if ev.stats.stop_reason == "interrupted":
                interrupted = True
                continue
            done[ev.request] = ev.stats
            while not as_json and shown in done:
                _write_sample(out, shown, n, seeds[shown], prompt if echo else "", "".join(texts[shown]), color)
                shown += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        events.close()
    if interrupted:
        raise KeyboardInterrupt  # what finished in order is written; the command exits 130
    seconds = time.perf_counter() - t0
    chars = sum(len("".join(t)) for t in texts)
    result = {
        "model": about["model"], "prompt": prompt, "device": about["device"],
        "samples": [with_logprobs({"seed": seeds[i], "text": "".join(texts[i]), "chars": len("".join(texts[i])),
                                   "tokens": len("".join(texts[i])),  # the 0.1 name, kept for one release
                                   "stop_reason": done[i].stop_reason}, params, believed[i]) for i in range(n)],
        "timings": {"load_s": about["load_s"], "generate_s": round(seconds, 4),
                    "chars_per_s": round(chars / seconds, 1) if seconds > 0 else 0.0},
    }
    if as_json:
        out.write(dumps(result) + "\n")
    out.flush()
    if verbose:
        errs.write(f"sgpt: {n} samples, {chars} characters in {seconds:.2f} s ({chars / max(seconds, 1e-9):.0f}/s)\n")
    return result


def _write_sample(out: TextIO, i: int, n: int, seed: int, echo: str, text: str, color: bool) -> None:
    head = f"--- sample {i + 1} of {n} (seed {seed}) ---"
    out.write(("\n" if i else "") + (f"\x1b[2m{head}\x1b[0m" if color else head) + "\n")
    body = echo + text
    out.write(body + ("" if body.endswith("\n") or not body else "\n"))
    out.flush()
