"""What `/set heat on` costs a streaming reply: characters per second with heat on and off.

    python benchmarks/bench_heat.py [--model PATH] [--chars 2000] [--rounds 7] [--width 80] [--json PATH]

Three figures, each the median of --rounds rounds, heat off and on in alternating order each round
(off-on, then on-off, ...), so a machine that slows down or speeds up meanwhile touches both alike:

  * stream: the REPL's whole reply path, `Repl.reply` on the model (default: the shipped one), a
    seeded reply of --chars characters (one_speech off), drawn by `ReplyPrinter` into a colour
    terminal --width columns wide (word wrap on) that throws the bytes away. Heat on asks the engine
    for each chosen character's probability and colours every character by its bin; the text is the
    same either way (the same seed). This is the figure the issue asks for.
  * render: the drawing alone: that reply's text given to `ReplyPrinter.write` in pieces of 20
    characters (about what the REPL draws every FLUSH_S at the shipped model's speed), so the
    cost of choosing and writing a colour per character is not hidden behind the model's time.
  * engine: `Engine.stream` alone with logprobs off, 0 (what heat asks) and 5.

$NO_COLOR is ignored here (rich would draw no colour at all). Run it on an idle machine; it prints
a table, and --json PATH writes the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgpt_cli.infer.chat_session import ChatSession, ChatSettings  # noqa: E402
from sgpt_cli.infer.engine import Engine, SamplingParams  # noqa: E402
from sgpt_cli.infer.onnx_model import OnnxModel  # noqa: E402
from sgpt_cli.term.chat_reply import ReplyPrinter, make_console  # noqa: E402
from sgpt_cli.term.repl import Repl  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shakespeare.onnx"
PIECE = 20  # characters per write in the render figure
SEED = 7


class NullTerminal(io.TextIOBase):
    """A terminal that shows nothing: isatty() is true (so the printer wraps), bytes are dropped,
    and no fileno (the printer then reads the console's width)."""

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return True


def console(width: int):
    c = make_console(NullTerminal(), color=True)
    c.width = width
    return c


def stream_once(engine: Engine, chars: int, heat: bool, width: int) -> float:
    """Characters per second of one whole reply through Repl.reply."""
    session = ChatSession(engine.model.tokenizer.chars, engine.model.block_size,
                          ChatSettings(seed=SEED, max_tokens=chars, one_speech=False, heat=heat))
    session.add_user_text("ROMEO:")
    repl = Repl(session, engine, reader=None, out=console(width))
    t0 = time.perf_counter()
    repl.reply()
    seconds = time.perf_counter() - t0
    return session.last_stats.chars / seconds


def render_once(text: str, probs: list[float], heat: bool, width: int) -> float:
    """Characters per second of ReplyPrinter alone, drawing `text` PIECE characters at a time."""
    printer = ReplyPrinter(console(width), heat=heat)
    t0 = time.perf_counter()
    for i in range(0, len(text), PIECE):
        printer.write(text[i:i + PIECE], probs=probs[i:i + PIECE] if heat else None)
    printer.end()
    return len(text) / (time.perf_counter() - t0)


def engine_once(engine: Engine, chars: int, logprobs: int | None) -> float:
    t0 = time.perf_counter()
    n = sum(len(e.text) for e in engine.stream("ROMEO:", SamplingParams(seed=SEED, max_tokens=chars,
                                                                      logprobs=logprobs)))
    return n / (time.perf_counter() - t0)


def interleaved(rounds: int, runs: dict) -> dict:
    """{name: median} of `runs` ({name: callable}), their order alternating round by round."""
    names = list(runs)
    seen: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            seen[name].append(runs[name]())
    return {n: statistics.median(v) for n, v in seen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHIPPED))
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    os.environ.pop("NO_COLOR", None)
    engine = Engine(OnnxModel(args.model, device="cpu"))

    session = ChatSession(engine.model.tokenizer.chars, engine.model.block_size,
                          ChatSettings(seed=SEED, max_tokens=args.chars, one_speech=False, heat=True))
    session.add_user_text("ROMEO:")
    text = "".join(session.stream_reply(engine))  # the reply both figures draw (also a warm-up)
    probs = session.reply_probs

    results = {
        "stream": interleaved(args.rounds, {
            "off": lambda: stream_once(engine, args.chars, False, args.width),
            "on": lambda: stream_once(engine, args.chars, True, args.width)}),
        "render": interleaved(args.rounds, {
            "off": lambda: render_once(text, probs, False, args.width),
            "on": lambda: render_once(text, probs, True, args.width)}),
        "engine": interleaved(args.rounds, {
            "logprobs off": lambda: engine_once(engine, args.chars, None),
            "logprobs 0": lambda: engine_once(engine, args.chars, 0),
            "logprobs 5": lambda: engine_once(engine, args.chars, 5)}),
    }
    print(f"model {args.model}, {len(text)} characters, {args.rounds} rounds, width {args.width}; "
          "characters/s, medians")
    for what, figures in results.items():
        base = next(iter(figures.values()))
        cells = ", ".join(f"{name} {v:,.0f}" + ("" if v is base else f" ({v / base:.2f}x)")
                          for name, v in figures.items())
        print(f"  {what:<7} {cells}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"chars": len(text), "rounds": args.rounds, "width": args.width,
                                                    "model": args.model, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
