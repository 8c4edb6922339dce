"""Every user-facing setting declared once: name, flags, type, default, help and valid range.

What it holds: `Setting` (one knob: how it is spelled as a flag and as a /set name, what it holds,
its limits, and how its values are checked and read from text), the sampling settings `SAMPLING`
(temperature, top_k, top_p, min_p, repetition_penalty, max_tokens, seed, stop), `LOGPROBS` (what the
model believed, reported beside the text), chat's own settings (heat among them), the
options several commands share (`MODEL`, `DEVICE`, `DATA`), `SamplingParams` (the engine's
parameters, a dataclass whose fields are `PARAMS`': SAMPLING and LOGPROBS) and `sampling_params_from`, which checks a dict of
per-row settings (a JSONL request, say). `sgpt_cli.term.common` builds a Typer command
(`typer_command`) and an argparse parser (`argparse_parser`, `sgpt complete`'s Typer-free fast path)
from a list of them; chat's `/set` parses, completes and shows from it.

What it does not do: import numpy, Typer or rich (it is read at start-up of every command), or sample.

Why these ranges: sampling runs in float64 on float32 logits, so a temperature of at least 0.001 and
a repetition penalty between 0.01 and 100 keep every scaled logit finite (|logit| < 3.4e38 times
1000 is far below float64's 1.8e308); 1e-310 would overflow to inf and pick the last character for
ever. Seeds are what NumPy and PyTorch accept (0 to 2**64 - 1).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from sgpt_cli.errors import UsageError

# the largest number a setting without an upper limit takes: what numpy's and PyTorch's int64 hold, so
# no count reaches a C library as an overflow (a 400-digit max_tokens is a typo, not a request)
WHOLE_MOST = 2**63 - 1
FLAG, NAME = "flag", "name"  # how a message names a setting: --top-k (command line) or top_k (/set, rows)
_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


def decode_escapes(text: str) -> str:
    r"""`\n`, `\t` and `\\` in a flag's text become a line break, a tab and a backslash (a shell's
    '\n\n' reaches us as four characters); any other backslash stays as it is."""
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in ("\\n", "\\t", "\\\\"):
            out.append({"\\n": "\n", "\\t": "\t", "\\\\": "\\"}[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _number(x) -> str:
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else repr(float(x))


def _cut(text: str, limit: int = 80) -> str:
    """A refused value as a one-line message quotes it: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _quoted(value) -> str:
    """repr(value) cut for a message. A whole number is written by its size past 60 digits: repr of one
    over Python's int-digit limit (4,300) raises ValueError, and 400 digits say nothing to a reader."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    return _cut(repr(value))


@dataclass(frozen=True)
class Setting:
    """One knob. `name` is the keyword (and the /set name); `flags` its command-line spellings."""

    name: str
    flags: tuple[str, ...]
    kind: type  # int, float, str, Path, or bool (an on/off flag)
    default: object
    help: str
    shown: str | None = None  # how help states a default that is not a plain value
    low: float | None = None  # the smallest valid value
    high: float | None = None  # the largest valid value
    above: bool = False  # low itself is not valid (top_p > 0)
    zero: str | None = None  # 0 is also valid, and means this (temperature 0: "greedy")
    none: str | None = None  # None is valid and shown as this word ("off", "random")
    choices: tuple[str, ...] = ()
    repeat: bool = False  # a flag given several times; the value is a tuple
    escapes: bool = False  # text given on a command line reads \n, \t and \\ as escapes
    metavar: str | None = None
    valid: str | None = None  # what a valid value is, where the rule for its type says too little
    most: int | None = None  # a repeated setting: at most this many values
    longest: int | None = None  # text: at most this many characters
    # a number without `high`: the largest taken (None: the command's own check bounds it, as
    # TrainConfig.validate does the training flags)
    whole_most: int | None = WHOLE_MOST

    def but(self, **changes) -> "Setting":
        """The same setting with another default or help text (chat's max_tokens, say)."""
        return replace(self, **changes)

    # --- how it is spelled ---------------------------------------------------------------------

    @property
    def flag(self) -> str:
        return self.flags[0].split("/")[0]

    def label(self, style: str = FLAG) -> str:
        return self.flag if style == FLAG else self.name

    @property
    def worded(self) -> bool:
        """A number that a word also sets (--top-k off, --seed random): a command line gives it as text,
        which `parse` reads, so the word --help shows as the default is accepted too."""
        return self.kind in (int, float) and self.none is not None and not self.repeat

    def annotation(self, command_line: bool = False):
        """The Python type Typer reads to build the option (`command_line`: as a flag's text)."""
        if command_line and self.worded:
            return Optional[str]
        if self.kind is bool:
            return Optional[bool] if self.default is None else bool
        if self.repeat:
            return Optional[List[self.kind]]
        return Optional[self.kind] if self.default is None else self.kind

    def show(self, value) -> str:
        """A value as /show, --help and messages write it."""
        if value is None:
            return self.none or "none"
        if self.kind is bool:
            return "on" if value else "off"
        if self.repeat:
            return ", ".join(repr(v) for v in value) if value else "none"
        return str(value)

    def help_text(self) -> str:
        shown = self.shown if self.shown is not None else self.show(self.default)
        rule = f" Valid: {self.rule()}." if self.low is not None or self.high is not None else ""
        return f"{self.help}{rule} [default: {shown}]"

    def rule(self, style: str = FLAG) -> str:
        """What a valid value is, in words: 'a whole number of 1 or more', ..."""
        if self.valid:
            return self.valid
        if self.kind is bool:
            return "on or off"
        if self.choices:
            return " or ".join(filter(None, (", ".join(self.choices[:-1]), self.choices[-1])))
        if self.kind not in (int, float):
            return "a non-empty text"
        what = "a whole number" if self.kind is int else "a number"
        lo = None if self.low is None else _number(self.low)
        hi = None if self.high is None else _number(self.high)
        if lo is not None and hi is not None:
            span = f"above {lo} and at most {hi}" if self.above else f"from {lo} to {hi}"
        elif lo is not None:
            span = f"above {lo}" if self.above else f"of {lo} or more"
        elif hi is not None:
            span = f"of {hi} or less"
        else:
            span = ""
        text = f"{what} {span}".strip()
        if self.zero:
            text = f"0 ({self.zero}) or {text}"
        if self.none and style == NAME:
            text += f", or {self.none}"
        return text

    # --- checking and reading values ------------------------------------------------------------

    def _bad(self, value, style: str) -> UsageError:
        return UsageError(f"{self.label(style)} must be {self.rule(style)} (got {_quoted(value)})")

    def check(self, value, style: str = FLAG):
        """`value` as the setting holds it (5.0 -> 5 for whole numbers, a list -> a tuple), or a
        one-line UsageError that names the setting as `style` says."""
        if value is None and (self.none is not None or self.default is None):
            return None
        if self.repeat:
            # a list (or tuple) of values: a string, a mapping ({"a": 1} is not the list ["a"]) or a
            # set is refused, whatever iterates
            if not isinstance(value, (list, tuple)):
                raise UsageError(f"{self.label(style)} must be a list of strings (got {_quoted(value)})")
            if self.most is not None and len(value) > self.most:
                raise UsageError(f"{self.label(style)} takes at most {self.most:,} values (got {len(value):,})")
            return tuple(self._check_one(v, style) for v in value)
        return self._check_one(value, style)

    def _check_one(self, value, style: str):
        if self.kind is bool:
            if not isinstance(value, bool):
                raise self._bad(value, style)
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise self._bad(value, style)
            if isinstance(value, numbers.Integral):
                # exact: math.isfinite and float() raise OverflowError on a whole number past ~1e308
                # (400 digits on a command line, in a /set or a JSON row); the range below refuses it
                value = int(value)
                if self.kind is float:
                    if value.bit_length() > 1000:  # past any range a float setting has
                        raise self._bad(value, style)
                    value = float(value)
            elif not math.isfinite(value) or (self.kind is int and int(value) != value):
                raise self._bad(value, style)
            try:
                value = int(value) if self.kind is int else float(value)
            except OverflowError:  # an int past float's range, for a float setting
                raise self._bad(value, style) from None
            if self.zero and value == 0:
                return value
            if self.low is not None and (value < self.low or (self.above and value == self.low)):
                raise self._bad(value, style)
            if self.high is not None and value > self.high:
                raise self._bad(value, style)
            if self.high is None and self.whole_most is not None and abs(value) > self.whole_most:
                raise UsageError(f"{self.label(style)} must be at most {self.whole_most:,} (got {_quoted(value)})")
            return value
        if self.kind is Path and isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or value == "":
            raise self._bad(value, style)
        if self.longest is not None and len(value) > self.longest:
            raise UsageError(f"{self.label(style)} must be at most {self.longest:,} characters long "
                             f"(got {len(value):,})")
        if self.choices and value not in self.choices:
            raise self._bad(value, style)
        return Path(value) if self.kind is Path else value

    def parse(self, text: str, style: str = NAME):
        """A value from text (/set's argument, or a flag's text): checked, UsageError if bad."""
        raw = text.strip() if self.kind is not str else text
        low = raw.strip().lower()
        if self.none is not None and low in ("none", "off", self.none):
            return None
        if self.kind is bool:
            if low not in _ON + _OFF:
                raise self._bad(raw, style)
            return low in _ON
        if self.kind in (int, float):
            try:
                value = int(raw) if self.kind is int else float(raw)
            except ValueError:
                raise self._bad(raw, style) from None
            return self.check(value, style)
        value = decode_escapes(raw) if self.escapes else raw
        return self.check((value,) if self.repeat else value, style)

    def completions(self) -> tuple[str, ...]:
        """The words /set offers after this setting's name."""
        if self.kind is bool:
            return ("on", "off")
        return tuple(self.choices) + ((self.none,) if self.none else ())


def by_name(settings: Iterable[Setting]) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def check_values(settings: Sequence[Setting], values: dict, style: str = FLAG, *,
                 from_command_line: bool = False) -> dict:
    """Every value in `values` that a setting declares, checked (and, for text from a command line,
    escapes read); other keys pass through untouched. UsageError for the first bad one."""
    out = dict(values)
    for s in settings:
        if s.name not in out:
            continue
        value = out[s.name]
        if from_command_line and s.worded and isinstance(value, str):
            value = s.parse(value, style)
        if from_command_line and s.escapes and value is not None:
            value = [decode_escapes(v) for v in value] if s.repeat else decode_escapes(value)
        if s.repeat and value is None:
            value = ()
        out[s.name] = s.check(value, style)
    return out


# --- the sampling settings: one declaration for complete, chat, the engine and JSONL rows ----------

STOP_MOST = 1000  # stop strings per request: far beyond any real use (llama.cpp's users give a few)
STOP_LONGEST = 256  # characters per stop string: twice the cpu preset's window

SAMPLING: tuple[Setting, ...] = (
    Setting("temperature", ("--temperature", "-t"), float, 0.8,  # nanoGPT's sample.py: lively, coherent
            "Sampling temperature: lower is safer, higher is wilder; 0 always takes the likeliest character.",
            low=0.001, high=100.0, zero="greedy", metavar="T"),
    Setting("top_k", ("--top-k",), int, None,  # no cut: a 65-character vocabulary has no junk tail
            "Sample only among the K likeliest characters.", low=1, none="off", metavar="K"),
    Setting("top_p", ("--top-p",), float, None,  # off by default, like top_k
            "Nucleus sampling: only the likeliest characters whose probabilities add up to P.",
            low=0.0, high=1.0, above=True, none="off", metavar="P"),
    Setting("min_p", ("--min-p",), float, None,  # off by default, like top_k and top_p
            "Min-p sampling (llama.cpp, Hugging Face): drop the characters less likely than P times the "
            "likeliest one.", low=0.0, high=1.0, none="off", metavar="P"),
    Setting("repetition_penalty", ("--repetition-penalty",), float, 1.0,  # 1 = none: letters repeat
            "Make characters already in the context less likely (CTRL, as Hugging Face applies it); 1 is off.",
            low=0.01, high=100.0, metavar="R"),
    Setting("max_tokens", ("--max-tokens", "-n"), int, 500,  # a screenful of verse
            "Characters to generate.", low=0, metavar="N"),
    Setting("seed", ("--seed",), int, None,  # None: fresh randomness each run
            "Random seed: the same seed, prompt and flags give the same text.",
            low=0, high=2**64 - 1, none="random", metavar="N"),
    Setting("stop", ("--stop",), str, (),  # generation ends before the first of these strings
            "Stop before this string would be written; repeat for several. \\n, \\t and \\\\ are a "
            "line break, a tab and a backslash.", shown="none", repeat=True, escapes=True, metavar="TEXT",
            # matching costs the same whatever the count (sgpt_cli.infer.stops); the caps bound the
            # matcher's table (count x length characters) and what one request may ask for
            most=STOP_MOST, longest=STOP_LONGEST),
)
SAMPLING_NAMES = tuple(s.name for s in SAMPLING)

# what the model believed, beside what it chose: not a sampling setting (it changes no character)
# but a request's, so SamplingParams holds it, as vLLM's does; None computes nothing at all
LOGPROBS_MOST = 20  # OpenAI's top_logprobs limit; a character vocabulary has few more worth reading
LOGPROBS = Setting("logprobs", ("--logprobs",), int, None,
                   "With --json (or --batch): each generated character's log probability under the model "
                   "(softmax of its raw logits, before temperature and the other settings) and the K likeliest "
                   "characters, in OpenAI's shape; 0 gives the chosen character's alone.",
                   low=0, high=LOGPROBS_MOST, none="off", metavar="K")
PARAMS: tuple[Setting, ...] = SAMPLING + (LOGPROBS,)  # SamplingParams' fields, in order
PARAM_NAMES = tuple(s.name for s in PARAMS)
SEED_DRAW = 2**31  # a seed drawn for an unseeded run is below this: short enough to type back


def draw_seed() -> int:
    """A fresh seed for a run given none, so that the run can be repeated with --seed (every
    command reports the seed it used)."""
    import secrets

    return secrets.randbelow(SEED_DRAW)


@dataclass(frozen=True)
class SamplingParams:
    """The engine's parameters of one request, valid by construction: every value checked and
    normalised (5.0 -> 5, a list of stops -> a tuple) where it enters; a one-line UsageError naming
    the flag otherwise. Nothing downstream (the engine, the sampler) checks again. The fields, their
    defaults and limits are PARAMS' (SAMPLING, then LOGPROBS), in order: a test holds them equal."""

    temperature: float = 0.8
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    max_tokens: int = 500
    seed: Optional[int] = None
    stop: Optional[List[str]] = ()
    logprobs: Optional[int] = None

    def __post_init__(self) -> None:
        for name, value in check_values(PARAMS, {n: getattr(self, n) for n in PARAM_NAMES}).items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ReplyParams(SamplingParams):
    """A chat reply's parameters (`sgpt serve`'s /v1/chat/completions): SamplingParams, and a reply
    is never empty: a stop string completed before any character was given out (the model closed the
    speech at once) is passed over, and the reply goes on to the next speech. Not a setting: no
    command offers an empty reply a choice."""
    never_empty: bool = True


def sampling_params_from(values: dict, style: str = NAME, defaults: dict | None = None) -> "SamplingParams":
    """SamplingParams from a dict of settings (one JSONL request row, say): unknown keys and bad
    values are a one-line UsageError naming the key; missing ones take `defaults`, then SAMPLING's."""
    unknown = [k for k in values if k not in PARAM_NAMES]
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r}; settings: {', '.join(PARAM_NAMES)}")
    merged = {s.name: s.default for s in PARAMS}
    merged.update(defaults or {})
    merged.update(values)
    return SamplingParams(**check_values(PARAMS, merged, style))


# --- chat's settings: the sampling ones, with chat's defaults, and two of its own -------------------

CHAT_SETTINGS: tuple[Setting, ...] = tuple(
    s.but(default=300, help="Characters per reply, at most.") if s.name == "max_tokens"  # a reply reads at a glance
    else s.but(help="Random seed: the same seed and inputs give the same session (drawn, and shown, when "
                    "not given).") if s.name == "seed"
    else s.but(help="End a reply before this string would be written (as complete's --stop); repeat for "
                    "several, /set stop TEXT sets one, /set stop none clears. \\n, \\t and \\\\ are a "
                    "line break, a tab and a backslash.", none="none") if s.name == "stop"
    else s for s in SAMPLING
) + (
    Setting("one_speech", ("--one-speech/--no-one-speech",), bool, True,  # as llama.cpp's reverse prompt
            "End each reply at the end of a speech (a blank line), or let it run to --max-tokens."),
    Setting("verbose", ("--verbose", "-v"), bool, False,
            "After each reply, a line with its length, time to first character and speed."),
    Setting("heat", ("--heat/--no-heat",), bool, False,  # off: a reply in one colour reads as a play
            "Colour each character of a reply by the probability the model gave it (/help shows the "
            "legend); plain text where colour is off (NO_COLOR, not a terminal)."),
)

# --- options several commands share ------------------------------------------------------------

MODEL = Setting("model", ("--model", "-m"), str, None, "The ONNX model file.",
                shown="$SGPT_MODEL, else the shipped model", metavar="PATH",
                valid="the path of an .onnx file")
DEVICE = Setting("device", ("--device",), str, "auto", "auto (CUDA when usable), cpu or cuda.",
                 choices=("auto", "cpu", "cuda"), metavar="auto|cpu|cuda")
DATA = Setting("data", ("--data",), Path, None, "UTF-8 text.",
               shown="tiny-shakespeare: data/tinyshakespeare.txt in a checkout, else $SGPT_HOME/data/, "
                     "unpacked from the copy inside sgpt (SHA-256 checked) when missing", metavar="PATH",
               valid="the path of a text file")
JSON = Setting("as_json", ("--json",), bool, False, "Print one JSON object instead of the report.")

# --- `sgpt serve`: the command's flags and limits, and the request fields beyond the sampling ones ---

SERVE: tuple[Setting, ...] = (
    MODEL,
    DEVICE,
    Setting("host", ("--host",), str, "127.0.0.1",  # this machine only, unless told otherwise
            "Address to listen on; 0.0.0.0 listens on every interface (give --api-key then).", metavar="ADDRESS"),
    Setting("port", ("--port", "-p"), int, 8000,  # llama-server's and vLLM's default
            "TCP port; 0 takes a free one (the URL printed says which).", low=0, high=65535, metavar="PORT"),
    Setting("api_key", ("--api-key",), str, None,  # none: a server on 127.0.0.1 is this machine's
            "Require `Authorization: Bearer KEY` on every endpoint but /health.",
            shown="$SGPT_API_KEY, else none", metavar="KEY"),
    Setting("rows", ("--rows",), int, 16,  # the engine's MAX_ROWS: where 2 cores' speed per row levels off
            "Requests decoded at once; each joins the running batch at the next step and leaves when done.",
            low=1, high=256, metavar="N"),
    Setting("queue", ("--queue",), int, 64,  # four batches of 16 waiting: seconds, not minutes, on 2 cores
            "Requests (choices) waiting for a row, at most; past that the server answers 429 with Retry-After.",
            low=0, high=100_000, metavar="N"),
    Setting("max_body", ("--max-body",), int, 1 << 20,  # 1 MiB: 4,000 windows of prompt text
            "Largest request body, in bytes (413 past it).", low=1024, high=1 << 30, metavar="BYTES"),
    Setting("max_tokens_limit", ("--max-tokens-limit",), int, 4096,  # 20 s of one row on 2 cores
            "Largest max_tokens a request may ask for.", low=1, high=10_000_000, metavar="N"),
    Setting("max_n", ("--max-n",), int, 16,  # one batch of rows
            "Most choices one request may ask for (n, times the prompts of a list).", low=1, high=4096, metavar="N"),
    Setting("max_prompt_chars", ("--max-prompt-chars",), int, 65_536,  # the model reads only its window's tail
            "Longest prompt in characters (chat: all the messages together).", low=1, high=1 << 30, metavar="N"),
)

# the request fields of /v1/completions and /v1/chat/completions that are not sampling settings
SERVE_REQUEST: tuple[Setting, ...] = (
    Setting("n", (), int, 1, "Choices per prompt.", low=1),  # the upper limit is --max-n
    Setting("stream", (), bool, False, "Send the text as server-sent events as it is made.", valid="true or false"),
    Setting("echo", (), bool, False, "Put the prompt before the completion (completions only).",
            valid="true or false"),
    Setting("one_speech", (), bool, True, "End a chat reply at the end of a speech (a blank line).",
            valid="true or false"),
)
SERVE_STOPS = 16  # stop strings one request may give (OpenAI allows 4)


# --- export's settings (read by sgpt_cli.train.onnx_export's checks too, which must not differ) ------------

CHECKPOINT = Setting("checkpoint", (), Path, Path("models/model.pt"),  # where `sgpt train` writes by default
                     "Checkpoint written by `sgpt train` (default: models/model.pt).", metavar="CHECKPOINT")
EXPORT_FOLDER = Path("export")


def export_out_for(checkpoint) -> Path:
    """Where `sgpt export CHECKPOINT` writes without --out: export/NAME.onnx, NAME the checkpoint's, so
    exporting a fine-tune (models/dev-tuned.pt) never replaces another model's export (export/model.onnx)."""
    return EXPORT_FOLDER / (Path(checkpoint).stem + ".onnx")


EXPORT_OUT = Setting("out", ("--out", "-o"), Path, None,  # None: export_out_for(checkpoint); run it with --model
                     "The ONNX file to write (one file, weights inside).",
                     shown="export/NAME.onnx, NAME the checkpoint's (models/model.pt: export/model.onnx)", metavar="PATH")
QUANTIZE = Setting("quantize", ("--quantize", "-q"), str, None,  # None: float32
                   "Store the weight matrices as int8 (standard DequantizeLinear, one scale per column): about 4x smaller; "
                   "refused if the validation loss rises by more than 0.02 nats/char.", shown="float32",
                   choices=("int8",), metavar="int8")


# /set heat on (the terminal) and the page's heat toggle: a character's colour is the probability the
# model gave it (its own softmax, before temperature and the other settings), in five bins: (lowest
# probability, colour, legend)
HEAT = ((0.9, "bright_blue", "90% or more"), (0.6, "cyan", "60–90%"), (0.3, "green", "30–60%"),
        (0.1, "yellow", "10–30%"), (0.0, "red", "under 10%"))
