"""`sgpt complete --batch FILE` and `--num-samples N`: many continuations in one batched run.

What it holds: reading a JSON Lines batch (`parse_batch`: one request per line, or a plain line
that is a prompt; a malformed line becomes an error for that line only), running requests through
`Engine.generate_batch` and writing each result in input order as soon as it and every earlier one
are done (`run_batch`), and the N samples of one prompt (`run_samples`).

What it does not do: sample or run ONNX (sgpt_cli.engine does), parse flags (sgpt_cli.complete),
import Typer, rich or torch.

Exit status of a batch: 0 when every line was a good request, 1 when any line was malformed (the
good ones still ran and were written), 130 on Ctrl-C (what had finished is written first).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Iterable, TextIO

from sgpt_cli.errors import SgptError, UsageError
from sgpt_cli.settings import draw_seed

DEFAULT_BATCH_SIZE = 16  # rows at once: on 2 cores the speed stops growing past 16 rows (64 was
# slower: benchmarks/bench_batch.py), each step copying every row's whole key/value cache
MAX_ROWS = 4096  # --num-samples and --batch-size: a typo of 10**9 is refused, not allocated
ROW_SETTINGS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop")
ROW_KEYS = ("prompt", "id", *ROW_SETTINGS)


@dataclass
class BatchLine:
    """One line of the input: a request, or the error that keeps it from being one."""
    number: int  # 1-based line number in the input
    id: object  # the row's "id", else its line number
    prompt: str = ""
    params: object = None  # SamplingParams when the line is good
    error: str | None = None


def parse_line(number: int, line: str, defaults) -> BatchLine | None:
    """A line -> BatchLine (None for a blank line). `defaults`: SamplingParams from the flags, which
    a row's own settings override."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        if text.lstrip().startswith("{"):
            return BatchLine(number, number, error=f"not valid JSON ({exc.msg} at column {exc.colno})")
        return BatchLine(number, number, text, params=defaults)  # a plain line is a prompt
    if not isinstance(value, dict):
        return BatchLine(number, number, text, params=defaults)  # e.g. a line that reads 1999
    row_id = value.get("id", number)
    unknown = sorted(set(value) - set(ROW_KEYS))
    if unknown:
        return BatchLine(number, row_id, error=f"unknown key {unknown[0]!r}; a row may have {', '.join(ROW_KEYS)}")
    if not isinstance(value.get("prompt"), str):
        return BatchLine(number, row_id, error='needs "prompt" as a string')
    settings = {k: value[k] for k in ROW_SETTINGS if k in value}
    if isinstance(settings.get("stop"), str):
        settings["stop"] = [settings["stop"]]  # one stop string as the flag takes it
    try:
        params = row_params(defaults, settings)
    except (UsageError, SgptError, TypeError, ValueError) as exc:
        return BatchLine(number, row_id, error=str(exc))
    return BatchLine(number, row_id, value["prompt"], params=params)


def row_params(defaults, settings: dict):
    """The flags' SamplingParams with a row's settings over them, checked (UsageError naming the key)."""
    from sgpt_cli.settings import NAME, sampling_params_from

    return sampling_params_from(settings, NAME, defaults=dataclasses.asdict(defaults))


def parse_batch(lines: Iterable[str], defaults) -> list[BatchLine]:
    out = []
    for number, line in enumerate(lines, 1):
        parsed = parse_line(number, line, defaults)
        if parsed is not None:
            out.append(parsed)
    return out


def result_row(line: BatchLine, text: str, stats) -> dict:
    return {"id": line.id, "text": text, "chars": len(text), "stop_reason": stats.stop_reason,
            "seed": line.params.seed}


def run_batch(engine, lines: list[BatchLine], out: TextIO, err: TextIO, batch_size: int | None,
              clean=lambda s: s) -> int:
    """Generate every good line, write JSON Lines to `out` in input order (an error object for a
    malformed line), report malformed lines on `err`. Returns the exit status (module doc).
    `clean` makes model text safe for a terminal (the caller's sanitiser)."""
    for line in lines:
        if line.error:
            err.write(f"sgpt: line {line.number}: {line.error}\n")
    err.flush()
    good = [i for i, line in enumerate(lines) if not line.error]
    for i in good:  # a row given no seed (nor --seed) gets one drawn, and says it: it can be redone
        if lines[i].params.seed is None:
            lines[i].params = dataclasses.replace(lines[i].params, seed=draw_seed())
    texts: dict[int, list[str]] = {i: [] for i in good}
    results: dict[int, dict] = {}  # line index -> the object to write
    for i, line in enumerate(lines):
        if line.error:
            results[i] = {"id": line.id, "line": line.number, "error": line.error}
    written = 0

    def write_ready() -> None:
        nonlocal written
        while written < len(lines) and written in results:
            out.write(json.dumps(results.pop(written), ensure_ascii=False) + "\n")
            written += 1
        out.flush()

    interrupted = False
    events = engine.generate_batch([(lines[i].prompt, lines[i].params) for i in good], batch_size)
    try:
        write_ready()
        for ev in events:
            i = good[ev.index]
            texts[i].append(ev.piece)
            if ev.stats is not None:
                if ev.stats.stop_reason == "interrupted":
                    interrupted = True
                    continue
                results[i] = result_row(lines[i], clean("".join(texts[i])), ev.stats)
                write_ready()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if hasattr(events, "close"):
            events.close()
    if interrupted:
        # Ctrl-C: what finished is written (in input order), what did not is left out
        for i in sorted(k for k in results if k >= written):
            out.write(json.dumps(results[i], ensure_ascii=False) + "\n")
        out.flush()
        return 130
    return 1 if any(line.error for line in lines) else 0


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
    done: dict[int, object] = {}
    shown = 0
    t0 = time.perf_counter()
    interrupted = False
    events = engine.generate_batch(reqs, batch_size)
    try:
        for ev in events:
            texts[ev.index].append(ev.piece)
            if ev.stats is None:
                continue
            if ev.stats.stop_reason == "interrupted":
                interrupted = True
                continue
            done[ev.index] = ev.stats
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
        "samples": [{"seed": seeds[i], "text": "".join(texts[i]), "tokens": len("".join(texts[i])),
                     "stop_reason": done[i].stop_reason} for i in range(n)],
        "timings": {"load_s": about["load_s"], "generate_s": round(seconds, 4),
                    "chars_per_s": round(chars / seconds, 1) if seconds > 0 else 0.0},
    }
    if as_json:
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
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
