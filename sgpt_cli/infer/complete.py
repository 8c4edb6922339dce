"""`sgpt complete`: a prompt from stdin and/or an argument in, the model's continuation out.

What it holds: the command's options (`OPTIONS`, built from the declarations in sgpt_cli.settings;
the Typer command in cli_complete.py and `fast_main`'s argparse parser are both made from it), reading the prompt, and the worker that
streams the continuation to a text stream. `fast_main` lets `sgpt complete ...` start without
importing Typer: when argparse cannot parse the arguments cleanly (--help, a mistake) it hands them
back to Typer, so help and usage errors always come from one place.

The prompt is all of stdin (when it is not a terminal), then the argument, joined as simonw's `llm`
joins them. With neither, the model starts from a line break, as nanoGPT's sample.py does: a fresh
speech is what a character model trained on plays writes best, and an error would make the bare
`sgpt complete` useless. stdin is streamed, never read whole: what is kept is the tail the model
reads (two windows of known characters), the characters it does not know, and at most PROMPT_KEEP
characters for --json; `--echo` writes each chunk through as it arrives.

What it does not: sample or run ONNX (sgpt_cli.infer.engine does), import Typer, rich or torch. numpy and
ONNX Runtime load only once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, TextIO

from sgpt_cli.infer.batch import DEFAULT_BATCH_SIZE, MAX_ROWS
from sgpt_cli.term.common import report, use_color
from sgpt_cli.errors import SgptError, UsageError, visible
from sgpt_cli.settings import DEVICE, FLAG, JSON, MODEL, PARAMS, Setting, argparse_parser, check_values

# The command's flags: the engine's (sampling settings, --logprobs), the shared model/device options,
# and its own.
OPTIONS: tuple[Setting, ...] = PARAMS + (
    MODEL,
    DEVICE,
    Setting("echo", ("--echo",), bool, False, "Write the prompt before the continuation."),
    JSON.but(help="Print one JSON object (text, tokens, timings, model; with --logprobs, what the model "
                  "believed of each character) when done, instead of streaming."),
    Setting("verbose", ("--verbose", "-v"), bool, False, "Say on stderr which model file is used, and how fast it ran."),
    Setting("num_samples", ("--num-samples",), int, 1,  # one: the plain streaming continuation
            "Generate N continuations of the prompt in one batched run; sample i uses seed --seed + i.",
            low=1, high=MAX_ROWS, metavar="N"),
    Setting("batch", ("--batch",), str, None,  # off: one prompt from stdin and the argument
            "Run many prompts: FILE (- for stdin) holds one per line, as JSON ({\"prompt\": ..., \"id\", "
            "\"seed\", \"max_tokens\", ... }) or plain text; JSON Lines come out in input order.",
            shown="off", metavar="FILE"),
    Setting("batch_size", ("--batch-size",), int, DEFAULT_BATCH_SIZE,
            "With --batch or --num-samples: how many rows run at once.", low=1, high=MAX_ROWS, metavar="N"),
)
PROMPT_HELP = "Text to continue, after whatever comes on stdin (default: stdin alone, else a line break)."


# --- the fast path: argparse over the same declaration -------------------------------------------

class _NotForUs(Exception):
    """argparse could not parse the arguments cleanly: Typer will, and will explain any mistake."""


class _QuietParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit; hand the arguments to Typer instead
        raise _NotForUs(message)


def fast_parser() -> argparse.ArgumentParser:
    return argparse_parser(OPTIONS, "sgpt complete", positional=("prompt",), parser_class=_QuietParser)


def fast_parse(argv: list[str]) -> dict | None:
    """The options as parsed (raw, as Typer would hand them over), or None when Typer should
    handle these arguments."""
    if any(a in ("-h", "--help") for a in argv):
        return None
    try:
        return vars(fast_parser().parse_args(argv))
    except _NotForUs:
        return None


def fast_main(argv: list[str]) -> int | None:
    """Run `sgpt complete` without Typer; None means: give these arguments to Typer."""
    values = fast_parse(argv)
    return None if values is None else run(values)


# --- reading the prompt ------------------------------------------------------------------------

PROMPT_CHUNK = 1 << 16  # bytes of stdin read at a time: the prompt streams, it is never read whole
PROMPT_KEEP = 1 << 20  # characters of the prompt kept for --json's "prompt" (its tail, if longer)


def decode_stdin(raw: bytes) -> str:
    """UTF-8 with replacement (U+FFFD, later dropped as unknown), never an exception; no BOM."""
    text = raw.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


class StreamedPrompt:
    """The prompt as it arrives: stdin (when it is not a terminal) in chunks, then the argument,
    joined as simonw's `llm` joins them (with a space), except that a stdin ending in whitespace (a
    line break, usually) is not given a space after it. `pieces()` yields it once, a chunk at a time."""

    def __init__(self, stdin: BinaryIO | None, argument: str | None):
        self.stdin = stdin if stdin is not None and not stdin.isatty() else None
        self.argument = argument

    def pieces(self) -> Iterator[str]:
        last = ""
        if self.stdin is not None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            first = True
            read = getattr(self.stdin, "read1", self.stdin.read)
            while True:
                chunk = read(PROMPT_CHUNK)
                text = decoder.decode(chunk or b"", final=not chunk)
                if first and text:
                    text, first = (text[1:] if text.startswith("\ufeff") else text), False
                if text:
                    last = text[-1]
                    yield text
                if not chunk:
                    break
        if self.argument:
            if last and not last.isspace():
                yield " "
            yield self.argument


@dataclass
class PromptRead:
    """What complete keeps of a streamed prompt: never more than a window and PROMPT_KEEP."""

    fed: str  # the known characters' tail, at most two windows: all the engine reads
    kept: str  # the prompt itself, or its last PROMPT_KEEP characters
    chars: int  # the prompt's length
    unknown: list[str]  # characters the model does not know, each once, in order of appearance
    any_known: bool
    last: str  # the prompt's last character ("" when empty)


def read_for_model(pieces: Iterable[str], stoi: dict, window: int, echo: TextIO | None = None,
                   bold: bool = False) -> PromptRead:
    """Consume the prompt's pieces, echoing each to `echo` as it comes, keeping only the tail the
    model reads (Windows line ends made plain when the model has no '\r'), the characters it does
    not know, and PROMPT_KEEP characters for --json."""
    plain_crlf = "\r" not in stoi
    fed, kept, chars, last, pending = "", "", 0, "", ""
    unknown: dict[str, None] = {}
    any_known = started = False
    for piece in pieces:
        if not piece:
            continue
        if echo is not None:
            if bold and not started:
                echo.write("\x1b[1m")
            started = True
            echo.write(piece)
            echo.flush()
        chars += len(piece)
        last = piece[-1]
        kept = (kept + piece)[-PROMPT_KEEP:]
        text = pending + piece
        pending = ""
        if plain_crlf:
            if text.endswith("\r"):  # its line break may come in the next piece
                text, pending = text[:-1], "\r"
            text = text.replace("\r\n", "\n")
        fed, any_known = _known_tail(text, stoi, unknown, fed, window, any_known)
    if pending:
        fed, any_known = _known_tail(pending, stoi, unknown, fed, window, any_known)
    if echo is not None and bold and started:
        echo.write("\x1b[0m")
        echo.flush()
    return PromptRead(fed, kept, chars, list(unknown), any_known, last)


def _known_tail(text: str, stoi: dict, unknown: dict, fed: str, window: int, any_known: bool) -> tuple[str, bool]:
    new = set(text).difference(stoi)  # set operations: a 50 MB prompt costs no Python loop per character
    if new:
        for c in sorted(new.difference(unknown), key=text.index):
            unknown[c] = None
        text = text.translate({ord(c): None for c in new})
    return (fed + text)[-2 * window:], any_known or bool(text)


# --- the command -----------------------------------------------------------------------------------

def run(values: dict) -> int:
    """The whole command on parsed options (from either parser): exit status, errors said in one line."""
    if sys.stdout is None:  # started with stdout closed (>&-): no reader, as after `| head` ends
        return 0
    try:
        values = check_values(OPTIONS, values, FLAG, from_command_line=True)
        if hasattr(sys.stdout, "reconfigure"):  # a model's odd character never crashes a narrow locale
            sys.stdout.reconfigure(errors="replace")
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        if values.get("batch") is not None:
            return batch_command(values, stdin)
        values.pop("batch", None)
        prompt = StreamedPrompt(stdin, values.pop("prompt", None))  # read once the model is loaded
        complete(prompt, out=sys.stdout, errs=sys.stderr, **values)
        sys.stdout.flush()
        return 0
    except (SgptError, KeyboardInterrupt, BrokenPipeError) as exc:
        return report(exc)


def batch_command(values: dict, stdin: BinaryIO | None) -> int:
    """`sgpt complete --batch FILE`: exit status 0, 1 when a line was malformed, 130 on Ctrl-C."""
    from sgpt_cli.infer.batch import iter_batch, read_lines, run_batch

    if values.get("prompt") is not None:
        raise UsageError("--batch reads its prompts from FILE; give no PROMPT argument")
    if values["num_samples"] != 1 or values["echo"]:
        raise UsageError("--batch writes JSON Lines; it takes neither --num-samples nor --echo "
                         "(give each row its own seed instead)")
    source = values["batch"]
    defaults = flag_params(values)
    with _open_batch(source, stdin) as f:
        engine, _, _ = load_engine(values["model"], values["device"], values["verbose"], sys.stderr)
        stoi, window = engine.model.tokenizer.stoi, engine.model.block_size

        def prepare(line) -> None:  # what the model reads of the prompt, its unknown characters said
            read = read_for_model([line.prompt], stoi, window)
            warn_unknown(read, sys.stderr, f"line {line.number}: ")
            line.prompt = read.fed

        # streamed: lines are read as the engine takes requests (sgpt_cli.infer.batch.run_batch's bound)
        lines = iter_batch(read_lines(f), defaults, prepare)
        return run_batch(engine, lines, sys.stdout, sys.stderr, values["batch_size"])


@contextlib.contextmanager
def _open_batch(source: str, stdin: BinaryIO | None):
    """--batch's input as a binary stream: stdin for "-", else the file (its errors in one line)."""
    if source == "-":
        yield stdin if stdin is not None else io.BytesIO()
        return
    from sgpt_cli.errors import shown

    try:
        f = open(source, "rb")
    except (OSError, ValueError) as exc:
        raise SgptError(f"cannot read --batch {shown(source)}: {getattr(exc, 'strerror', None) or exc}") from None
    with f:
        yield f


def flag_params(values: dict):
    """SamplingParams from the flags (checked)."""
    from sgpt_cli.settings import PARAM_NAMES, SamplingParams

    return SamplingParams(**{n: values[n] for n in PARAM_NAMES if n in values})


def load_engine(model: str | None, device: str, verbose: bool, errs: TextIO):
    """(Engine, model path, seconds to load); --verbose says which model on `errs`."""
    DEVICE.check(device)
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.model_lookup import find_model
    from sgpt_cli.infer.onnx_model import OnnxModel

    t0 = time.perf_counter()
    path, source = find_model(model)
    engine = Engine(OnnxModel(path, device=device))
    load_s = time.perf_counter() - t0
    if verbose:
        errs.write(visible(f"sgpt: model {path} ({source}), on {engine.model.device}, loaded in {load_s:.2f} s") + "\n")
        errs.flush()
    return engine, path, load_s


def complete(prompt: str, *, out: TextIO, errs: TextIO, max_tokens: int = 500, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             seed: int | None = None, stop=(), min_p: float | None = None, logprobs: int | None = None,
             model: str | None = None, device: str = "auto",
             echo: bool = False, as_json: bool = False, verbose: bool = False, color: bool | None = None,
             num_samples: int = 1, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """Stream the continuation of `prompt` to `out` (or one JSON object with --json); return the
    result as the JSON object holds it. Warnings and --verbose lines go to `errs`. With num_samples
    > 1, that many continuations in one batched run (sgpt_cli.infer.batch.run_samples). Without a seed
    one is drawn (sgpt_cli.settings.draw_seed) and reported: in --json, in -v, and in `seed`.
    With `logprobs` K (--json only), the object's "logprobs" is OpenAI's chat shape of what the model
    believed of each character (sgpt_cli.infer.logprobs)."""
    from sgpt_cli.settings import SamplingParams, draw_seed

    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed,
                            stop=stop, logprobs=logprobs)
    if logprobs is not None and not as_json:
        raise UsageError("--logprobs needs --json: the probabilities are written in the JSON object "
                         "(add --json; --batch writes them in its rows)")
    engine, path, load_s = load_engine(model, device, verbose, errs)

    on_terminal = out.isatty()
    if color is None:
        color = use_color(out)
    source = prompt if isinstance(prompt, StreamedPrompt) else StreamedPrompt(None, prompt)
    if num_samples > 1:
        from sgpt_cli.infer.batch import run_samples

        read = read_for_model(source.pieces(), engine.model.tokenizer.stoi, engine.model.block_size)
        warn_unknown(read, errs)
        return run_samples(engine, read.kept, read.fed, params, num_samples, batch_size, out=out, errs=errs,
                           echo=echo, as_json=as_json, verbose=verbose, color=color,
                           about={"model": str(path), "device": engine.model.device, "load_s": round(load_s, 4)})
    if params.seed is None:  # a seed for every run, reported, so any run can be repeated
        params = dataclasses.replace(params, seed=draw_seed())
    seed = params.seed
    read = read_for_model(source.pieces(), engine.model.tokenizer.stoi, engine.model.block_size,
                          echo=out if echo and not as_json else None, bold=color)
    warn_unknown(read, errs)
    pieces: list[str] = []
    believed: list = []  # TokenLogprobs, one per character, with --logprobs
    stats = None
    for event in engine.stream(read.fed, params):
        stats = event.stats or stats
        believed.extend(event.logprobs or ())
        if event.text:
            pieces.append(event.text)
            if not as_json:
                out.write(event.text)
                out.flush()  # a pipeline's reader sees each character as it comes
    text = "".join(pieces)
    result = {
        "model": str(path),
        "prompt": read.kept,
        "text": text,
        "tokens": len(text),
        "prompt_tokens": stats.prompt_chars if stats else None,
        "stop_reason": stats.stop_reason if stats else None,
        "seed": seed,
        "device": engine.model.device,
        "timings": {
            "load_s": round(load_s, 4),
            "ttft_s": round(stats.ttft_s, 4) if stats else None,
            "generate_s": round(stats.seconds, 4) if stats else None,
            "chars_per_s": round(stats.chars_per_s, 1) if stats else None,
        },
    }
    if params.logprobs is not None:
        from sgpt_cli.infer.logprobs import chat_entries

        result["logprobs"] = {"content": chat_entries(believed)}
    if stats is not None and stats.stop_reason == "interrupted":
        raise KeyboardInterrupt  # the engine stopped cleanly on Ctrl-C; the command still exits 130
    if as_json:
        from sgpt_cli.jsonout import dumps

        out.write(dumps(result) + "\n")
    elif on_terminal and not ((read.last if echo else "") + text or "\n").endswith("\n"):
        out.write("\n")  # leave the shell's prompt on a line of its own; pipes get the exact text
    out.flush()
    if verbose and stats is not None:
        errs.write(f"sgpt: {len(text)} characters in {stats.seconds:.2f} s ({stats.chars_per_s:.0f}/s), "
                   f"first after {stats.ttft_s * 1000:.0f} ms, stopped by {stats.stop_reason}, "
                   f"seed {seed}\n")
    return result


def unknown_note(read: PromptRead) -> str | None:
    """What `warn_unknown` says about the characters the model does not know (None when none were
    dropped): `sgpt serve` gives the same words in its responses."""
    if not read.unknown:
        return None
    shown = "".join(read.unknown[:20]) + ("..." if len(read.unknown) > 20 else "")
    then = "" if read.any_known else "; none is left, so it starts from a line break"
    return f"dropped characters the model does not know: {shown!r}{then}"


def warn_unknown(read: PromptRead, errs: TextIO, where: str = "") -> None:
    """The characters the model does not know, announced once (the engine never sees them, and
    starts from a line break when none is left)."""
    note = unknown_note(read)
    if note:
        errs.write(f"sgpt: {where}warning: {note}\n")
        errs.flush()
