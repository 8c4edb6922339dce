"""`sgpt complete`: a prompt from stdin and/or an argument in, the model's continuation out.

What it holds: the command's options (`OPTIONS`, built from the declarations in sgpt_cli.settings;
the Typer command (`complete_cmd`, built on first use) and `fast_main`'s argparse parser are both
made from it), and the worker that streams the continuation to a text stream. `fast_main` lets
`sgpt complete ...` start without importing Typer: when argparse cannot parse the arguments cleanly
(--help, a mistake) it hands them back to Typer, so help and usage errors always come from one place.

The prompt is all of stdin (when it is not a terminal), then the argument, joined as simonw's `llm`
joins them (sgpt_cli.infer.prompt reads it). With neither, the model starts from a line break, as
nanoGPT's sample.py does: a fresh speech is what a character model trained on plays writes best, and
an error would make the bare `sgpt complete` useless. `--echo` writes each chunk through as it arrives.

What it does not: sample or run ONNX (sgpt_cli.infer.engine does), import Typer, rich or torch. numpy and
ONNX Runtime load only once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import sys
from typing import BinaryIO, TextIO

from sgpt_cli.errors import SgptError, UsageError, visible
from sgpt_cli.infer.prompt import PromptRead, StreamedPrompt, read_for_model, unknown_note
from sgpt_cli.settings import DEVICE, FLAG, JSON, MODEL, PARAMS, Setting, check_values
from sgpt_cli.term.batch import DEFAULT_BATCH_SIZE, MAX_ROWS
from sgpt_cli.term.common import argparse_parser, report, use_color

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
PROMPT = Setting("prompt", (), str, None, PROMPT_HELP, metavar="PROMPT")

DOC = """Continue a text: the prompt is stdin, then PROMPT; the continuation streams to stdout.

\b
printf 'ROMEO:' | sgpt complete -n 200
sgpt complete --seed 7 --stop '\\n\\n' 'JULIET:'
cat scene.txt | sgpt complete --json -n 100 'HAMLET:' | jq -r .text
"""


def _run(**values) -> int:
    return run(values)


@functools.lru_cache(maxsize=None)
def typer_complete():
    """The Typer command (built on first use: the fast path never imports Typer)."""
    from sgpt_cli.term.common import typer_command

    return typer_command("complete", DOC, (PROMPT,) + OPTIONS, _run, check=False)


def __getattr__(name: str):
    if name == "complete_cmd":
        return typer_complete()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from sgpt_cli.term.batch import iter_batch, read_lines, run_batch

    if values.get("prompt") is not None:
        raise UsageError("--batch reads its prompts from FILE; give no PROMPT argument")
    if values["num_samples"] != 1 or values["echo"]:
        raise UsageError("--batch writes JSON Lines; it takes neither --num-samples nor --echo "
                         "(give each row its own seed instead)")
    source = values["batch"]
    defaults = flag_params(values)
    with _open_batch(source, stdin) as f:
        engine = load_engine(values["model"], values["device"], values["verbose"], sys.stderr).engine
        stoi, window = engine.model.tokenizer.stoi, engine.model.block_size

        def prepare(line) -> None:  # what the model reads of the prompt, its unknown characters said
            read = read_for_model([line.prompt], stoi, window)
            warn_unknown(read, sys.stderr, f"line {line.number}: ")
            line.prompt = read.fed

        # streamed: lines are read as the engine takes requests (sgpt_cli.term.batch.run_batch's bound)
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
    """SamplingParams from the flags (checked): the one place a command's sampling flags become them."""
    from sgpt_cli.settings import PARAM_NAMES, SamplingParams

    return SamplingParams(**{n: values[n] for n in PARAM_NAMES if n in values})


def load_engine(model: str | None, device: str, verbose: bool, errs: TextIO):
    """The model opened (sgpt_cli.infer.model_lookup.open_model); --verbose says which on `errs`."""
    from sgpt_cli.infer.model_lookup import open_model

    opened = open_model(model, device)
    if verbose:
        errs.write(visible(f"sgpt: model {opened.path} ({opened.source}), on {opened.model.device}, "
                           f"loaded in {opened.load_s:.2f} s") + "\n")
        errs.flush()
    return opened


def complete(prompt: str, *, out: TextIO, errs: TextIO, max_tokens: int = 500, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             seed: int | None = None, stop=(), min_p: float | None = None, logprobs: int | None = None,
             model: str | None = None, device: str = "auto",
             echo: bool = False, as_json: bool = False, verbose: bool = False, color: bool | None = None,
             num_samples: int = 1, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
    """Stream the continuation of `prompt` to `out` (or one JSON object with --json); return the
    result as the JSON object holds it. Warnings and --verbose lines go to `errs`. With num_samples
    > 1, that many continuations in one batched run (sgpt_cli.term.batch.run_samples). Without a seed
    one is drawn (sgpt_cli.settings.draw_seed) and reported: in --json, in -v, and in `seed`.
    With `logprobs` K (--json only), the object's "logprobs" is OpenAI's chat shape of what the model
    believed of each character (sgpt_cli.infer.logprobs)."""
    from sgpt_cli.settings import draw_seed

    params = flag_params(dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed,
                              stop=stop, logprobs=logprobs))
    if logprobs is not None and not as_json:
        raise UsageError("--logprobs needs --json: the probabilities are written in the JSON object "
                         "(add --json; --batch writes them in its rows)")
    opened = load_engine(model, device, verbose, errs)
    engine = opened.engine

    on_terminal = out.isatty()
    if color is None:
        color = use_color(out)
    source = prompt if isinstance(prompt, StreamedPrompt) else StreamedPrompt(None, prompt)
    if num_samples > 1:
        from sgpt_cli.term.batch import run_samples

        read = read_for_model(source.pieces(), engine.model.tokenizer.stoi, engine.model.block_size)
        warn_unknown(read, errs)
        return run_samples(engine, read.kept, read.fed, params, num_samples, batch_size, out=out, errs=errs,
                           echo=echo, as_json=as_json, verbose=verbose, color=color,
                           about={"model": str(opened.path), "device": engine.model.device,
                                  "load_s": round(opened.load_s, 4)})
    if params.seed is None:  # a seed for every run, reported, so any run can be repeated
        params = dataclasses.replace(params, seed=draw_seed())
    seed = params.seed
    read = read_for_model(source.pieces(), engine.model.tokenizer.stoi, engine.model.block_size,
                          echo=out if echo and not as_json else None, bold=color)
    warn_unknown(read, errs)
    text, stats, believed = stream_to(out if not as_json else None, engine, read.fed, params)
    result = json_result(opened, read, text, stats, params, believed)
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


def stream_to(out: TextIO | None, engine, prompt: str, params):
    """(text, stats, TokenLogprobs with --logprobs) of one continuation, each piece written to `out`
    (when given) as it comes."""
    pieces: list[str] = []
    believed: list = []  # TokenLogprobs, one per character, with --logprobs
    stats = None
    for event in engine.stream(prompt, params):
        stats = event.stats or stats
        believed.extend(event.logprobs or ())
        if event.text:
            pieces.append(event.text)
            if out is not None:
                out.write(event.text)
                out.flush()  # a pipeline's reader sees each character as it comes
    return "".join(pieces), stats, believed


def json_result(opened, read: PromptRead, text: str, stats, params, believed) -> dict:
    """What `complete --json` writes of one continuation (`stats`: its GenerationStats, None when
    the engine gave none)."""
    from sgpt_cli.term.batch import with_logprobs

    return with_logprobs({
        "model": str(opened.path),
        "prompt": read.kept,
        "text": text,
        "chars": len(text),  # every JSON sgpt writes counts characters (the model's tokens) as "chars"
        "prompt_chars": stats.prompt_chars if stats else None,
        # the same counts under their 0.1 names, still written for one release (drop them after 0.2)
        "tokens": len(text),
        "prompt_tokens": stats.prompt_chars if stats else None,
        "stop_reason": stats.stop_reason if stats else None,
        "seed": params.seed,
        "device": opened.model.device,
        "timings": {
            "load_s": round(opened.load_s, 4),
            "ttft_s": round(stats.ttft_s, 4) if stats else None,
            "generate_s": round(stats.seconds, 4) if stats else None,
            "chars_per_s": round(stats.chars_per_s, 1) if stats else None,
        },
    }, params, believed)


def warn_unknown(read: PromptRead, errs: TextIO, where: str = "") -> None:
    """The characters the model does not know, announced once (the engine never sees them, and
    starts from a line break when none is left)."""
    note = unknown_note(read)
    if note:
        errs.write(f"sgpt: {where}warning: {note}\n")
        errs.flush()
