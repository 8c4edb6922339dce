"""The state of one `sgpt chat`: the growing play script, the settings, and the slash commands.

What it holds: `ChatSettings` (the sampling knobs `/set` changes), `ChatSession` (the script, which
the user's lines and the model's replies both extend; /reset, /regen, /save, /show's rows; with
`/set heat on`, the probability the model gave each character of a reply, for the REPL to colour), parsing
and checking slash commands, joining `\"\"\"` blocks of several lines, and where the input history
lives. Everything here takes and returns plain values, so tests drive it directly.

What it does not do: draw anything, read the keyboard, or import rich, prompt_toolkit or numpy
(sgpt_cli.term.repl renders; sgpt_cli.infer.engine generates; this module only calls `engine.generate` and,
for /regen N, `engine.generate_batch`).

The script convention (also told by /help): the model continues the script as a play. A line of
capitalised words ending in ':' (ROMEO:, First Citizen:) names who speaks next, so the user's
`ROMEO:` makes the model speak as Romeo. Each input starts on a line of its own and ends with a line
break; a speaker's name also gets the blank line that separates speeches in the corpus, and
`ROMEO: text` is written as the corpus writes it, name and speech on separate lines, with the speech's
line left open so that the model finishes it (llama.cpp's way: the prompt ends where the model
goes on). A script can be continued from a file (`load`, exactly what `save` wrote). By default a
reply is one speech: it ends at the first blank line, as llama.cpp's reverse prompt hands the turn
back.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Iterator

from sgpt_cli.config import heads_text
from sgpt_cli.errors import SgptError, UsageError, shown

from sgpt_cli.files import atomic_write_text, check_writable_target, without_bom
from sgpt_cli.home import data_home  # noqa: F401  (re-exported: the history lives there)
from sgpt_cli.settings import CHAT_SETTINGS, NAME, by_name, check_values, draw_seed

SPEECH_END = "\n\n"  # speeches in the corpus are separated by one blank line
CONTEXT_BLOCKS = 2  # the engine is given at most this many windows of the script's tail
FENCE = '"""'
HISTORY_FILE = "chat_history"

# ROMEO:, First Citizen:, KING RICHARD III:, ALL SERVING-MEN:  (1 to 4 capitalised words)
_NAME = r"[A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,3}"
SPEAKER_LINE = re.compile(rf"^{_NAME}:$")
SPEAKER_AND_TEXT = re.compile(rf"^({_NAME}):[ \t]+(\S.*)$")


def is_speaker_line(line: str) -> bool:
    """A line that names who speaks next, as the corpus writes it ('ROMEO:', 'First Citizen:')."""
    return bool(SPEAKER_LINE.match(line.rstrip()))


def char_probs(event) -> list[float]:
    """The probability the model gave each character of `event.text` (its logprobs, one per character)."""
    return [p for t in event.logprobs for p in (math.exp(t.logprob),) * len(t.token)]


def history_path(environ=os.environ) -> Path:
    return data_home(environ) / HISTORY_FILE


# --- settings ----------------------------------------------------------------------------------

def _validate(self) -> None:
    """UsageError (one line, naming the setting as /set does) for values outside the declared ranges."""
    check_values(CHAT_SETTINGS, {n: getattr(self, n) for n in SETTING_NAMES}, NAME)


# The settings /set changes: fields, defaults and limits come from sgpt_cli.settings.CHAT_SETTINGS.
ChatSettings = make_dataclass(
    "ChatSettings", [(s.name, s.annotation(), field(default=s.default)) for s in CHAT_SETTINGS],
    namespace={"validate": _validate, "__module__": __name__,
               "__doc__": "What /set changes (sgpt_cli.settings.CHAT_SETTINGS)."})

SETTINGS = by_name(CHAT_SETTINGS)
SETTING_NAMES = tuple(SETTINGS)


def setting_name(name: str) -> str:
    """The setting `name` means (top-k and TOP_K are top_k); UsageError with a hint if none."""
    name = name.strip().lower().replace("-", "_")
    if name not in SETTING_NAMES:
        near = difflib.get_close_matches(name, SETTING_NAMES, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise UsageError(f"no setting {name!r}; {hint}settings: {', '.join(SETTING_NAMES)}")
    return name


def parse_setting(settings, name: str, raw: str):
    """A copy of `settings` with `name` set from the text `raw`; UsageError (one line) if bad."""
    setting = SETTINGS[setting_name(name)]
    if not raw.strip():
        example = setting.none or setting.show(setting.default)
        raise UsageError(f"/set {setting.name} needs a value, e.g. /set {setting.name} {example}")
    return replace(settings, **{setting.name: setting.parse(raw, NAME)})


def format_value(name: str, value) -> str:
    """A setting's value as /set and /show write it."""
    return SETTINGS[name].show(value)


def set_completions(name: str) -> tuple[str, ...]:
    """What Tab offers after `/set NAME `."""
    setting = SETTINGS.get(name.strip().lower().replace("-", "_"))
    return setting.completions() if setting else ()


# --- what the session's commands take -----------------------------------------------------------

MAX_SCRIPT_BYTES = 16 << 20  # /load: a scene; a larger file is a corpus (`sgpt complete` streams those)


def count_argument(name: str, arg: str, low: int, high: int) -> int:
    """/regen N and /pick K: a whole number from low to high, else a one-line UsageError."""
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise UsageError(f"{name} takes a whole number from {low} to {high} (got {arg!r})")
    return value


# --- multi-line input ----------------------------------------------------------------------------

def block_is_open(text: str) -> bool:
    """True while `text` opens a \"\"\" block (first line) that no later line closes yet."""
    lines = text.split("\n")
    return lines[0].strip() == FENCE and not any(line.strip() == FENCE for line in lines[1:])


class InputJoiner:
    """Turns what the user enters (one line, or several at once from a paste or Esc-Enter) into
    inputs: a \"\"\" line opens a block that the next \"\"\" line closes, and the block is one input."""

    def __init__(self) -> None:
        self.block: list[str] | None = None

    @property
    def open(self) -> bool:
        return self.block is not None

    def cancel(self) -> None:
        self.block = None

    def feed(self, text: str) -> list[str]:
        """The complete inputs `text` finishes (often one; none while a block is open)."""
        done: list[str] = []
        plain: list[str] = []
        for line in text.split("\n"):
            if self.block is None:
                if line.strip() == FENCE:
                    if plain:
                        done.append("\n".join(plain))
                        plain = []
                    self.block = []
                else:
                    plain.append(line)
            elif line.strip() == FENCE:
                done.append("\n".join(self.block))
                self.block = None
            else:
                self.block.append(line)
        if plain:
            done.append("\n".join(plain))
        return done


# --- the session ---------------------------------------------------------------------------------

@dataclass
class Loaded:
    """What `ChatSession.load` read."""

    path: Path
    chars: int  # the script's length now
    dropped: list[str]  # characters the model does not know, dropped, each once


@dataclass
class AltEvent:
    """What `ChatSession.alternatives` yields: a piece of alternative k (1-based) as it is made."""

    k: int
    piece: str
    done: bool  # alternative k is finished (its text and stop reason are in the session)


@dataclass
class Added:
    """What `ChatSession.add_user_text` did with an input."""

    text: str  # what was appended to the script ("" for an empty input: the play goes on)
    dropped: list[str]  # characters the model does not know, dropped, each once


class ChatSession:
    """One play script, its settings, and the bookkeeping /regen needs.

    `vocab` is the model's characters (None: keep every character) and `block_size` its window.
    The script holds only characters the model knows, so what /save writes is what the model read.
    """

    def __init__(self, vocab=None, block_size: int = 256, settings=None):
        self.vocab = set(vocab) if vocab is not None else None
        self.block_size = int(block_size)
        self.settings = settings or ChatSettings()
        self.script = ""
        self.reply_start: int | None = None  # where the last reply begins in the script
        self.replies = 0  # replies generated since the last /reset or /set seed (seeds each one)
        self.choices: list[str] = []  # /regen N's alternatives (each as far as it got), for /pick
        self.choice_ends: list[str | None] = []  # their stop reasons (None: still running)
        self.choice_seeds: list[int | None] = []
        self.last_stop: str | None = None  # the last reply's stop reason
        self.last_stats = None  # the last reply's GenerationStats; None while one runs or if it was stopped
        # with heat on: the probability of each character of the last reply as yielded, and of each
        # alternative's (None for a given-back speech end); empty lists when heat is off
        self.reply_probs: list[float] = []
        self.choice_probs: list[list[float | None]] = []
        if self.settings.seed is None:  # a seed for every session, so any session can be repeated
            self.settings = replace(self.settings, seed=draw_seed())

    # the script ------------------------------------------------------------------------------

    def context(self) -> str:
        """The script's tail, all the engine needs (it keeps the last block_size characters)."""
        return self.script[-CONTEXT_BLOCKS * self.block_size:]

    def current_line(self) -> str:
        """The script's unfinished last line ("" when it ends with a line break)."""
        return self.script[self.script.rfind("\n") + 1:]

    def clean(self, text: str) -> tuple[str, list[str]]:
        """`text` with Windows line ends made plain and characters the model does not know dropped."""
        if self.vocab is None or "\r" not in self.vocab:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.vocab is None:
            return text, []
        dropped = list(dict.fromkeys(c for c in text if c not in self.vocab))
        return "".join(c for c in text if c in self.vocab), dropped

    def add_user_text(self, text: str) -> Added:
        """Append one input to the script, laid out as the corpus lays out a play."""
        self.choices = []  # the script moved on: /pick would rewrite what came after
        text, dropped = self.clean(text)
        if not text.strip("\n"):
            return Added("", dropped)
        lines = text.strip("\n").split("\n")
        first = SPEAKER_AND_TEXT.match(lines[0].rstrip())
        # 'ROMEO: But soft', one line: the speaker begins his line and the model finishes it
        open_line = bool(first) and len(lines) == 1
        if first:  # 'ROMEO: But soft' -> 'ROMEO:' and 'But soft' on lines of their own
            lines[0:1] = [first.group(1) + ":", first.group(2)]
        lines = [line.rstrip() if is_speaker_line(line) else line for line in lines]
        prefix = ""
        if self.script and not self.script.endswith("\n"):
            prefix = "\n"  # a reply cut off mid-line: the user's text starts a line of its own
        if is_speaker_line(lines[0]) and self.script and not (self.script + prefix).endswith(SPEECH_END):
            prefix += "\n"  # a new speaker: the blank line that ends the previous speech
        added = prefix + "\n".join(lines) + ("" if open_line else "\n")
        self.script += added
        return Added(added, dropped)

    # replies -----------------------------------------------------------------------------------

    def sampling_params(self, reply_number: int | None = None):
        """The engine's parameters for the next reply. A seeded session gives each reply its own
        seed (seed + replies so far), so /regen is a new try and the whole session repeats."""
        from sgpt_cli.settings import SamplingParams

        s = self.settings
        n = self.replies if reply_number is None else reply_number
        return SamplingParams(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
            repetition_penalty=s.repetition_penalty, max_tokens=s.max_tokens,
            seed=None if s.seed is None else (s.seed + n) % 2**64,
            stop=self.stops(), logprobs=0 if s.heat else None)  # heat: the chosen character's alone

    def stops(self) -> tuple[str, ...]:
        """What ends a reply: the end of a speech (one_speech), then the user's own stop strings."""
        own = tuple(self.settings.stop or ())
        return ((SPEECH_END,) if self.settings.one_speech else ()) + tuple(x for x in own if x != SPEECH_END)

    def given_back(self, stats) -> str:
        """What a reply that ended at a stop string gets back in the script: the blank line of a
        speech's end (the engine never writes a stop string), nothing for the user's own stops.
        Which stop ended it: the engine's `stats.stop_string` when it says; else it can only be the
        end of a speech when that is the one stop."""
        if stats is None or stats.stop_reason != "stop":
            return ""
        matched = getattr(stats, "stop_string", None)
        if matched is None and self.stops() == (SPEECH_END,):
            matched = SPEECH_END
        return SPEECH_END if matched == SPEECH_END else ""

    def stream_reply(self, engine) -> Iterator[str]:
        """Generate the next reply: each piece is appended to the script as it is yielded. Closing
        this generator early (Ctrl-C) keeps what was written. A reply that ended at the end of a
        speech gets the blank line back (the engine never writes a stop string)."""
        params = self.sampling_params()
        self.choices = []
        self.reply_start = len(self.script)
        self.replies += 1
        self.last_stats = None
        self.reply_probs = []
        events = engine.stream(self.context(), params)
        try:
            for event in events:
                self.last_stats = event.stats or self.last_stats
                if event.text:
                    self.script += event.text
                    if event.logprobs is not None:
                        self.reply_probs += char_probs(event)
                    yield event.text
        finally:
            events.close()
            self.last_stop = self.last_stats.stop_reason if self.last_stats is not None else None
            self.script += self.given_back(self.last_stats)

    def alternatives(self, engine, n: int) -> Iterator[AltEvent]:
        """/regen N: drop the last reply (at once, before the first event, so `current_line()` is
        the line the alternatives continue) and generate N alternatives of it in one batched run
        (sgpt_cli.infer.engine.Engine.generate_batch), each exactly the reply /regen would give with its
        seed. Yields an AltEvent for every piece as it is made; `choices[K - 1]` holds alternative
        K's text so far and `choice_ends[K - 1]` its stop reason once it is done. The script keeps
        none until /pick K. Closing the generator (Ctrl-C) keeps every text as far as it got."""
        self.drop_last_reply()
        params = [self.sampling_params(self.replies + k) for k in range(n)]
        self.replies += n
        self.choices = [""] * n
        self.choice_probs = [[] for _ in range(n)]
        self.choice_ends = [None] * n
        self.choice_seeds = [p.seed for p in params]
        events = engine.generate_batch([(self.context(), p) for p in params])
        return self._alternative_events(events)

    def _alternative_events(self, events) -> Iterator[AltEvent]:
        try:
            for ev in events:
                self.choices[ev.request] += ev.text
                if ev.logprobs is not None:
                    self.choice_probs[ev.request] += char_probs(ev)
                if ev.stats is not None:
                    self.choice_ends[ev.request] = ev.stats.stop_reason
                    back = self.given_back(ev.stats)  # as stream_reply gives it back
                    self.choices[ev.request] += back
                    if ev.logprobs is not None:
                        self.choice_probs[ev.request] += [None] * len(back)
                yield AltEvent(ev.request + 1, ev.text, ev.stats is not None)
        finally:
            events.close()
            self.choice_ends = [end or "interrupted" for end in self.choice_ends]

    def pick(self, k: int) -> str:
        """/pick K: alternative K of the last /regen N becomes the reply in the script (one that
        Ctrl-C stopped, as far as it got, as a stopped reply keeps its part)."""
        if not self.choices:
            raise UsageError("there are no alternatives to pick from; /regen N makes N of them")
        k = count_argument("/pick", str(k), 1, len(self.choices))
        self.script = self.script[:self.reply_start] + self.choices[k - 1]
        return self.choices[k - 1]

    def drop_last_reply(self) -> None:
        """/regen's first half: the script as it was before the last reply."""
        if self.reply_start is None:
            raise UsageError("there is no reply to redo yet; type something first")
        self.script = self.script[:self.reply_start]

    def load(self, path: str | Path) -> "Loaded":
        """/load FILE and `sgpt chat FILE`: the script becomes the file's text, exactly (so /save
        then /load gives the same script back), less the characters the model does not know
        (reported). Strict UTF-8; a folder, a missing file or one over MAX_SCRIPT_BYTES is refused
        in one line and the session keeps its script."""
        raw_name = os.path.expanduser(str(path))
        target = Path(raw_name)
        try:
            if target.is_dir():
                raise SgptError(f"cannot load {shown(raw_name)}: it is a folder; give a file saved with /save")
            with open(target, "rb") as f:
                data = f.read(MAX_SCRIPT_BYTES + 1)
        except FileNotFoundError:
            raise SgptError(f"cannot load {shown(raw_name)}: no such file") from None
        except OSError as exc:
            raise SgptError(f"cannot load {shown(raw_name)}: {exc.strerror or exc}") from None
        if len(data) > MAX_SCRIPT_BYTES:
            raise SgptError(f"cannot load {shown(raw_name)}: it is over {MAX_SCRIPT_BYTES >> 20} MB; a script "
                            "is a scene, not a corpus")
        try:
            text = without_bom(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SgptError(f"cannot load {shown(raw_name)}: not UTF-8 text (bad byte at offset {exc.start})") from None
        text, dropped = self.clean(text)
        self.reset()
        self.script = text
        return Loaded(target, len(text), dropped)

    def reset(self) -> None:
        self.script = ""
        self.reply_start = None
        self.replies = 0
        self.choices, self.choice_ends, self.choice_seeds, self.choice_probs = [], [], [], []
        self.last_stop = None

    def set(self, name: str, raw: str) -> tuple[str, str]:
        """/set: returns the setting's name and new value as shown. `/set seed random` draws a
        new seed (shown), so the session stays repeatable."""
        name = setting_name(name)
        self.settings = parse_setting(self.settings, name, raw)
        if name == "seed":
            if self.settings.seed is None:
                self.settings = replace(self.settings, seed=draw_seed())
            self.replies = 0  # `/set seed 7` then a prompt gives what `--seed 7` gives
        if name == "stop" and self.settings.stop is None:
            self.settings = replace(self.settings, stop=())
        return name, format_value(name, getattr(self.settings, name))

    def save(self, path: str | Path) -> Path:
        """/save: the script as plain UTF-8, written atomically (sgpt_cli.files.atomic_path). A name
        ending in '/' means a folder, so it is refused rather than written as a file of that name;
        missing folders are not created (a typo must not build a tree from the root); an empty
        script is not written over anything."""
        raw = os.path.expanduser(str(path))
        if raw.endswith(("/", os.sep)):
            raise UsageError(f"/save {shown(raw)} names a folder; give a file name, e.g. /save {shown(raw)}scene.txt")
        if not self.script:
            raise UsageError("nothing to save yet: the script is empty; type something first")
        try:
            # "file" names what is written (the script): "cannot write file NAME: ..." (the command
            # itself must not read as part of the name)
            target = check_writable_target(Path(raw), "file", create_parents=False)
            atomic_write_text(target, self.script, "file", create_parents=False)
        except OSError as exc:  # a full disk, a folder that vanished meanwhile
            raise SgptError(f"cannot write {shown(raw)}: {exc.strerror or exc}") from None
        return Path(raw)

    def show_rows(self, summary: dict | None = None) -> list[tuple[str, str]]:
        """/show: (label, value) rows: the settings, then the model (from onnx_model.model_summary)."""
        rows = [(name, format_value(name, getattr(self.settings, name))) for name in SETTING_NAMES]
        if summary:
            size = summary.get("size_bytes")
            loss = summary.get("val_loss")
            rows += [
                ("model", str(summary["path"])),
                ("size", f"{size / 1e6:.1f} MB" if size is not None else "unknown"),
                ("device", str(summary["device"])),
                ("val loss", f"{loss:.4f}" if loss is not None else "not recorded"),
                ("shape", f"{summary['n_layer']} layers, {heads_text(summary['n_head'], summary['n_kv_head'])}, "
                          f"{summary['n_embd']} wide, "
                          f"window {summary['block_size']} characters, vocabulary {summary['vocab_size']}"),
            ]
        rows.append(("script", f"{len(self.script):,} characters"
                     + (f" (the model sees the last {self.block_size})" if len(self.script) > self.block_size else "")))
        return rows
