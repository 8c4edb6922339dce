"""The `sgpt chat` REPL: reads what the user types, runs slash commands, streams the model's replies.

What it holds: the loop (`Repl`: an input, a command or a reply, until /quit or the end of input)
and `run_chat`, what the command calls: the model opened, the reader picked, the banner. Reading
input is sgpt_cli.term.chat_input's, drawing a reply sgpt_cli.term.chat_reply's, parsing a slash
command sgpt_cli.term.chat_commands'.

What it does not do: keep the script (sgpt_cli.infer.chat_session), sample (engine).
rich and prompt_toolkit are imported here, and this module is imported only when `sgpt chat` runs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from sgpt_cli.infer.chat_session import SETTING_NAMES, ChatSession, ChatSettings, InputJoiner, count_argument
from sgpt_cli.term.chat_commands import HELP_CONVENTION, MAX_ALTERNATIVES, help_rows, is_command, parse_command
from sgpt_cli.term.chat_input import CONTINUATION, CTRL_C_HINT, PROMPT, LineReader, PromptReader
from sgpt_cli.term.chat_reply import (
    CUT, DIM, FLUSH_S, HINT, NO_COLOR_HEAT, ReplyPrinter, StopOnCtrlC, heat_legend_parts, keyboard_quiet,
    make_console, on_a_terminal, print_parts,
)
from sgpt_cli.errors import SgptError, shown, visible

TAIL_SHOWN = 400  # characters of a loaded script shown: where it goes on
STOP_WORDS = {"stop": "end of speech", "max_tokens": "max_tokens reached", "interrupted": "stopped by Ctrl-C"}


# --- the loop --------------------------------------------------------------------------------------

class Repl:
    """Reads inputs, runs commands, streams replies. `out` gets the conversation; `err` gets
    notices and hints (the same console on a terminal; stderr when stdin is a pipe)."""

    def __init__(self, session: ChatSession, engine, reader, out: Console, err: Console | None = None,
                 summary: dict | None = None):
        self.session = session
        self.engine = engine
        self.reader = reader
        self.out = out
        self.err = err or out
        self.summary = summary or {}
        self.joiner = InputJoiner()
        self.failures = 0  # commands and inputs refused (piped input exits 1 if any)
        self.open_shown = False  # a pipe: the script's open last line ends the transcript (from /load)

    # output helpers ----------------------------------------------------------------------------

    def notice(self, message: str) -> None:
        # a terminal: wrapped at words; a pipe or a log: one line, whatever the width
        self.err.print(Text(visible(message), style=DIM), soft_wrap=not on_a_terminal(self.err))

    def hint(self, message: str) -> None:
        self.failures += 1
        self.err.print(Text(visible(message), style=HINT), soft_wrap=not on_a_terminal(self.err))

    def rows(self, rows: list[tuple[str, str]]) -> None:
        """Two aligned columns; a long value wraps under its own column."""
        from rich.table import Table

        if not on_a_terminal(self.out):  # a pipe or a file: a row a line, nothing padded to a width
            wide = max((cell_len(visible(label)) for label, _ in rows), default=0)
            for label, value in rows:
                line = Text.assemble((visible(label), "bold"), " " * (wide - cell_len(visible(label)) + 2), visible(value))
                line.rstrip()
                self.out.print(line, soft_wrap=True)
            return
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for label, value in rows:
            table.add_row(Text(visible(label)), Text(visible(value)))  # no markup, no raw controls
        self.out.print(table)

    # the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Until /quit or end of input: 0, or 1 when piped input had a refused line."""
        while True:
            notice = self.reader.take_notice()
            if notice:
                self.notice(notice)
            try:
                text = self.reader.read(self.joiner.open)
            except KeyboardInterrupt:
                if not self.reader.interactive:
                    raise
                self.joiner.cancel()
                self.notice(CTRL_C_HINT)
                continue
            except EOFError:
                if self.reader.interactive:
                    self.out.print()
                break
            if not self.reader.interactive:
                self.echo(text)
            for item in self.joiner.feed(text):
                if self.handle(item) == "quit":
                    return self.exit_status()
        return self.exit_status()

    def exit_status(self) -> int:
        if self.open_shown:  # the transcript ends on the scene's open line: the shell's prompt goes below
            self.open_shown = False
            self.out.print()
        return 1 if self.failures and not self.reader.interactive else 0

    def echo(self, text: str) -> None:
        """Piped input is not on the screen: write it into the transcript as a prompt line."""
        if self.open_shown:
            if not text and not self.joiner.open:
                return  # Enter: the reply goes on on the open line, as the transcript shows it once
            self.open_shown = False
            self.out.print()
        marker = CONTINUATION if self.joiner.open else PROMPT
        self.out.print(Text.assemble((marker, "bold green"), (visible(text, keep="\n\t"), "bold")), soft_wrap=True)

    def handle(self, text: str) -> str | None:
        """One complete input: a command or text for the script. "quit" ends the loop."""
        if is_command(text):
            try:
                return self.command(text)
            except SgptError as exc:
                self.hint(str(exc))
                return None
        added = self.session.add_user_text(text)
        if added.dropped:
            shown = ", ".join(repr(c) for c in added.dropped[:12]) + (", ..." if len(added.dropped) > 12 else "")
            self.notice(f"dropped characters the model does not know: {shown}")
        if text.strip() and not added.text:
            self.hint("nothing left to send: the model knows none of those characters")
            return None
        self.reply()
        return None

    def command(self, text: str) -> str | None:
        cmd = parse_command(text)
        if cmd.name == "/quit":
            return "quit"
        if cmd.name == "/help":
            self.help()
        elif cmd.name == "/set":
            if not cmd.arg:
                self.rows(self.session.show_rows()[:len(SETTING_NAMES)])
                self.notice("change one with /set NAME VALUE, e.g. /set temperature 0.6")
            else:
                name, _, value = cmd.arg.partition(" ")
                name, value = self.session.set(name, value)
                self.notice(f"{name} = {value}")
                if name == "heat" and self.session.settings.heat:
                    self.heat_legend()
        elif cmd.name == "/show":
            self.rows(self.session.show_rows(self.summary))
            self.out.print()
        elif cmd.name == "/reset":
            self.session.reset()
            self.notice("a new script: the model has forgotten everything")
        elif cmd.name == "/regen" and cmd.arg:
            self.alternatives(count_argument("/regen", cmd.arg, 2, MAX_ALTERNATIVES))
        elif cmd.name == "/regen":
            self.session.drop_last_reply()
            self.notice("(the last reply again)")
            self.reply()
        elif cmd.name == "/pick":
            self.session.pick(count_argument("/pick", cmd.arg, 1, MAX_ALTERNATIVES))
            self.notice(f"(alternative {cmd.arg.strip()} is the reply in the script now)")
        elif cmd.name == "/save":
            path = self.session.save(cmd.arg)
            self.notice(f"saved {len(self.session.script):,} characters to {shown(path)}")
        elif cmd.name == "/load":
            self.loaded(self.session.load(cmd.arg))
        elif cmd.name in ("/explain", "/next"):
            from sgpt_cli.term import explain_repl

            explain_repl.command(self, cmd)
        return None

    def loaded(self, loaded) -> None:
        """What /load (or `sgpt chat FILE`) read: its tail, dim, so the user sees where it goes on."""
        if loaded.dropped:
            kinds = ", ".join(repr(c) for c in loaded.dropped[:12]) + (", ..." if len(loaded.dropped) > 12 else "")
            self.notice(f"dropped characters the model does not know: {kinds}")
        tail = self.session.script[-TAIL_SHOWN:]
        if len(self.session.script) > len(tail) and "\n" in tail:
            tail = tail[tail.index("\n") + 1:]
        said = f"(loaded {loaded.chars:,} characters from {shown(loaded.path)}; type, or press Enter and the play " \
               "goes on from here)"
        if not self.reader.interactive:  # a pipe: said first, so that the tail's open line can stay open
            self.notice(said)
        if tail:
            printer = ReplyPrinter(self.out)
            printer.write(tail, DIM)
            if self.reader.interactive or tail.endswith("\n"):
                printer.end()
            else:  # a pipe cannot redraw a line: it stays open for the reply to go on (echo, reply)
                self.open_shown = True
        if self.reader.interactive:
            self.notice(said)

    def help(self) -> None:
        self.rows(help_rows())
        self.out.print()
        for line in HELP_CONVENTION:  # a terminal wraps them at words; a pipe gets each on one line
            self.out.print(Text(line, style=DIM), soft_wrap=not on_a_terminal(self.out))
        self.heat_legend()
        self.out.print()

    def heat_legend(self) -> None:
        """What heat's colours mean; where there is no colour, that replies stay plain."""
        print_parts(self.out, heat_legend_parts(), Text("  "))
        if self.out.color_system is None:
            self.notice(f"({NO_COLOR_HEAT})")

    def printer(self) -> ReplyPrinter:
        return ReplyPrinter(self.out, heat=self.session.settings.heat)

    def alternatives(self, n: int) -> None:
        """/regen N: the alternatives, numbered, each streamed as it is made (the first at once;
        the others, made alongside it, as soon as the one before is done). One Ctrl-C stops them
        all at once and keeps every text as far as it got."""
        stream = self.session.alternatives(self.engine, n)  # the last reply is dropped now
        line = self.session.current_line()  # so this is the line the alternatives continue
        self.notice(f"({n} alternatives of the last reply, made together; /pick K keeps one)")
        drawn_upto = [0] * n
        state = {"k": 0, "printer": None}

        def catch_up(final: bool = False) -> None:
            """Draw what is new, alternative by alternative, in order."""
            while state["k"] < n:
                k = state["k"]
                if state["printer"] is None:
                    self.out.print(Text.assemble((f"[{k + 1}]", HINT),
                                                 (f" seed {self.session.choice_seeds[k]}", DIM)))
                    state["printer"] = self.printer()
                    state["printer"].begin(line)
                text = self.session.choices[k]
                probs = self.session.choice_probs[k] if self.session.choice_probs else None
                state["printer"].write(text[drawn_upto[k]:], probs=probs and probs[drawn_upto[k]:len(text)])
                drawn_upto[k] = len(text)
                end = self.session.choice_ends[k]
                if end is None and not final:
                    return
                if end in (None, "interrupted", "max_tokens"):
                    state["printer"].write(CUT if end == "max_tokens" else " (stopped)", DIM)
                state["printer"].end()
                state["printer"] = None
                state["k"] += 1

        drawn = [time.perf_counter()]

        def each(event) -> None:
            now = time.perf_counter()
            if event.done or now - drawn[0] >= FLUSH_S:
                catch_up()
                drawn[0] = now

        until_ctrl_c(stream, each)
        catch_up(final=True)
        done = sum(end not in (None, "interrupted") for end in self.session.choice_ends)
        if done < n:
            self.notice(f"(stopped: {done} of {n} alternatives finished; /pick K keeps any of them, a "
                        "stopped one as far as it got)")
        self.out.print()

    def reply(self) -> None:
        """Stream the model's continuation of the script; Ctrl-C stops it and keeps what came."""
        printer = self.printer()
        if self.open_shown:  # already the transcript's last line (a pipe, after /load)
            printer.line, self.open_shown = self.session.current_line(), False
        else:
            printer.begin(self.session.current_line())
        stream = self.session.stream_reply(self.engine)
        pending: list[str] = []  # pieces not drawn yet: drawn together every FLUSH_S
        drawn = [time.perf_counter(), 0]  # when the screen was last drawn; characters drawn

        def draw() -> None:
            text = "".join(pending)
            pending.clear()
            start = drawn[1]
            drawn[1] += len(text)
            # heat: the probabilities of these characters (the session keeps them as the reply grows)
            printer.write(text, probs=self.session.reply_probs[start:drawn[1]] if printer.heat else None)

        def each(piece: str) -> None:
            pending.append(piece)
            now = time.perf_counter()
            if now - drawn[0] >= FLUSH_S:
                draw()
                drawn[0] = now

        until_ctrl_c(stream, each)
        draw()
        stats = self.session.last_stats  # None: stopped before the engine's last event
        cut = stats is not None and stats.stop_reason == "max_tokens" and stats.chars > 0
        if cut:
            printer.write(CUT, DIM)  # on the screen only: the script holds what the model wrote
        printer.end()
        if stats is None or stats.stop_reason == "interrupted":
            self.notice("(stopped: the part written so far stays in the script; /regen tries again)")
        elif cut:
            self.notice(f"(cut at max_tokens = {self.session.settings.max_tokens:,}; Enter on an empty line "
                        "lets it go on, /set max_tokens N gives longer replies)")
        if stats is not None and self.session.settings.verbose:
            self.notice(f"{stats.chars:,} characters in {stats.seconds:.2f} s · first after "
                        f"{stats.ttft_s * 1000:.0f} ms · {stats.chars_per_s:,.0f} characters/s · "
                        f"{STOP_WORDS.get(stats.stop_reason, stats.stop_reason)} · seed "
                        f"{self.params_seed()}")
        self.out.print()

    def params_seed(self):
        """The seed the last reply used (the session's seed plus the replies before it)."""
        seed = self.session.settings.seed
        return None if seed is None else (seed + self.session.replies - 1) % 2**64


def until_ctrl_c(stream, each) -> None:
    """`each(item)` for every item of `stream` until it ends or Ctrl-C is pressed (typed keys kept for
    the next prompt); the stream is closed either way, so the engine leaves nothing in flight."""
    with StopOnCtrlC() as ctrl_c, keyboard_quiet(sys.stdin):
        try:
            for item in stream:
                each(item)
                if ctrl_c.pressed:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one that landed inside the engine
            pass
        finally:
            with contextlib.suppress(KeyboardInterrupt):
                stream.close()


# --- the command's worker --------------------------------------------------------------------------

def banner(console: Console, summary: dict, source: str, interactive: bool, load_s: float | None,
           seed: int | None = None) -> None:
    loss = summary.get("val_loss")
    parts = [Text("sgpt chat", style="bold"), Text.assemble((shown(summary["path"]), "bold"), (f" ({source})", DIM)),
             Text(summary["device"]), Text(f"val loss {loss:.4f}" if loss is not None else "val loss unknown")]
    if seed is not None:
        parts.append(Text(f"seed {seed}"))
    if load_s is not None:
        parts.append(Text(f"loaded in {load_s:.2f} s", style=DIM))
    print_parts(console, parts, Text("  ·  ", style=DIM))  # a terminal breaks it between facts, never in one
    if interactive:
        console.print(Text("Type a speaker (ROMEO:) and the model speaks as them; a line of verse joins the "
                           "script and the play goes on, often with another speaker; Enter on an empty line "
                           "and the play goes on.", style=DIM))
        console.print(Text("/help for help · Esc-Enter for a new line · Ctrl-C stops a reply · "
                           "Ctrl-D or /quit to leave", style=DIM))
        console.print()


def run_chat(settings: ChatSettings, model: str | None = None, device: str = "auto",
             history: bool = True, stdin: TextIO | None = None, stdout: TextIO | None = None,
             stderr: TextIO | None = None, script: str | None = None) -> int:
    """The whole `sgpt chat`: load the model, pick the reader, run the loop; the exit status."""
    from sgpt_cli.infer.model_lookup import open_model
    from sgpt_cli.infer.onnx_model import model_summary

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    settings.validate()
    if hasattr(stdout, "reconfigure"):  # a model's odd character never crashes a narrow locale
        stdout.reconfigure(errors="replace")
    opened = open_model(model, device)
    engine, source, load_s = opened.engine, opened.source, opened.load_s
    summary = model_summary(engine.model)
    session = ChatSession(engine.model.tokenizer.chars, engine.model.block_size, settings)
    loaded = session.load(script) if script is not None else None  # a bad file: one line, before the REPL

    interactive = stdin.isatty() and stdout.isatty()
    out = make_console(stdout)
    if interactive:
        reader = PromptReader(history)
        err = out
    else:
        if hasattr(stdin, "reconfigure"):  # odd bytes become U+FFFD, dropped with a notice
            stdin.reconfigure(errors="replace")
        reader = LineReader(stdin)
        err = make_console(stderr)
    banner(err, summary, source, interactive, load_s if settings.verbose else None, session.settings.seed)
    repl = Repl(session, engine, reader, out, err, summary)
    if loaded is not None:
        repl.loaded(loaded)
    return repl.run()
