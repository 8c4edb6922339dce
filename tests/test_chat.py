"""`sgpt chat`: the session state directly (sgpt_cli.infer.chat_session), the REPL through prompt-toolkit's
pipe input, and the whole command as a subprocess with piped stdin. The pseudo-terminal tests are in
test_chat_pty.py."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SGPT, run_env
from sgpt_cli.infer.chat_session import (
    SPEECH_END, ChatSession, ChatSettings, InputJoiner, block_is_open, data_home, history_path, is_speaker_line,
)
from sgpt_cli.term.chat_commands import is_command, parse_command
from sgpt_cli.errors import SgptError, UsageError

VOCAB = sorted(set("\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


class FakeEngine:
    """Replies with scripted pieces and stop reasons; records the prompts and params it was given."""

    def __init__(self, replies):
        self.replies = list(replies)  # [(pieces, stop_reason), ...]
        self.prompts: list[str] = []
        self.params: list = []

    def stream(self, prompt, params):
        """As Engine.stream: text events, the last one with the stats."""
        from sgpt_cli.infer.engine import Event, GenerationStats

        self.prompts.append(prompt)
        self.params.append(params)
        pieces, reason = self.replies.pop(0)

        def run():
            done = 0
            for piece in pieces:
                done += len(piece)
                yield Event(0, piece)
            yield Event(0, "", GenerationStats(len(prompt), done, 0.01, 0.02, done / 0.02, reason))

        return run()


class FakeBatchEngine(FakeEngine):
    """FakeEngine with /regen N: `batches` is a list of lists of (pieces, stop_reason), one per row;
    rows advance together, a piece each per step, as the batched engine interleaves them."""

    def __init__(self, replies, batches):
        super().__init__(replies)
        self.batches = list(batches)
        self.closed = False

    def generate_batch(self, requests, batch_size=None):
        from sgpt_cli.infer.engine import Event as RowEvent, GenerationStats

        rows = self.batches.pop(0)
        assert len(rows) == len(requests)
        self.params += [p for _, p in requests]

        def run():
            try:
                for step in range(max(len(p) for p, _ in rows) + 1):
                    for i, (pieces, reason) in enumerate(rows):
                        if step < len(pieces):
                            yield RowEvent(i, pieces[step])
                        elif step == len(pieces):
                            n = sum(map(len, pieces))
                            yield RowEvent(i, "", GenerationStats(1, n, 0.01, 0.02, n / 0.02, reason))
            finally:
                self.closed = True

        return run()


def piped_repl(engine, lines: str, settings=None):
    """The REPL over piped lines (LineReader) with a fake engine: (exit status, transcript, session)."""
    from sgpt_cli.term.chat_input import LineReader
    from sgpt_cli.term.chat_reply import make_console
    from sgpt_cli.term.repl import Repl

    out = io.StringIO()
    session = ChatSession(VOCAB, 64, settings or ChatSettings(seed=5))
    code = Repl(session, engine, LineReader(io.StringIO(lines)), make_console(out, color=False)).run()
    return code, out.getvalue(), session


def reply(session: ChatSession, engine) -> str:
    return "".join(session.stream_reply(engine))


# --- the session -----------------------------------------------------------------------------------

def test_slash_commands_parse_with_aliases_and_one_line_hints():
    assert parse_command("/exit").name == "/quit"
    assert parse_command("/bye").name == "/quit"
    assert parse_command("/SET top_k 5").arg == "top_k 5"
    assert parse_command("/save  scene.txt ").arg == "scene.txt"
    with pytest.raises(UsageError, match=r"unknown command /rset; did you mean /reset\?"):
        parse_command("/rset")
    with pytest.raises(UsageError, match="/help lists"):
        parse_command("/frobnicate")
    with pytest.raises(UsageError, match="needs a file name"):
        parse_command("/save")
    with pytest.raises(UsageError, match="takes no arguments"):
        parse_command("/reset now")
    assert is_command("/show") and not is_command("ROMEO:") and not is_command("/a\nb")


def test_set_checks_values_and_keeps_the_old_one_when_bad():
    session = ChatSession(VOCAB, 32)
    assert session.set("temperature", "0.5") == ("temperature", "0.5")
    assert session.set("top-k", "5") == ("top_k", "5")
    assert session.set("top_k", "none") == ("top_k", "off")
    assert session.settings.top_k is None
    assert session.set("verbose", "on") == ("verbose", "on") and session.settings.verbose
    for name, bad, words in [("temperature", "-1", "temperature must be"), ("top_k", "0", "top_k must be"),
                             ("top_p", "1.5", "top_p must be"), ("max_tokens", "lots", "max_tokens must be"),
                             ("seed", "-3", "seed must be"), ("verbose", "maybe", "verbose must be on or off"),
                             ("temperature", "1e-310", r"temperature must be 0 \(greedy\) or a number from 0.001 to 100"),
                             ("temperature", "inf", r"\(got inf\)"),
                             ("repetition_penalty", "1e-310", "repetition_penalty must be a number from 0.01 to 100"),
                             ("temperature", "", "needs a value"), ("temprature", "1", "did you mean temperature")]:
        before = session.settings
        with pytest.raises(UsageError, match=words) as info:
            session.set(name, bad)
        assert "\n" not in str(info.value) and not str(info.value).startswith("--")
        assert session.settings == before


def test_user_text_is_laid_out_as_the_corpus_lays_out_a_play():
    session = ChatSession(VOCAB, 32)
    assert session.add_user_text("ROMEO:").text == "ROMEO:\n"  # the model then speaks as Romeo
    session.script += "But soft"  # a reply cut off mid-line
    assert session.add_user_text("JULIET:  ").text == "\n\nJULIET:\n"  # own line, blank line before
    session.script += "Ay me." + SPEECH_END
    # 'NAME: text' begins the speaker's line and leaves it open: the model finishes it
    assert session.add_user_text("ROMEO: She speaks!").text == "ROMEO:\nShe speaks!"
    assert session.add_user_text("O, speak again").text == "\nO, speak again\n"
    assert session.add_user_text("").text == ""  # Enter on an empty line: the play goes on
    assert session.script == "ROMEO:\nBut soft\n\nJULIET:\nAy me.\n\nROMEO:\nShe speaks!\nO, speak again\n"


def test_romeo_but_soft_lets_romeo_finish_the_line():
    """`ROMEO: But soft` puts `ROMEO:\nBut soft` in the script, and the model's reply goes
    on in that very line (the engine is given the open line, no line break after it)."""
    session = ChatSession(VOCAB, 64)
    engine = FakeEngine([([", what light"], "max_tokens")])
    assert session.add_user_text("ROMEO: But soft").text == "ROMEO:\nBut soft"
    assert session.current_line() == "But soft"  # the REPL shows it dim, then the reply after it
    reply(session, engine)
    assert engine.prompts[0] == "ROMEO:\nBut soft"
    assert session.script == "ROMEO:\nBut soft, what light"
    assert session.add_user_text("ROMEO: Two\nlines").text.endswith("ROMEO:\nTwo\nlines\n")  # several: closed


def test_speaker_lines_are_capitalised_words_ending_in_a_colon():
    for line in ["ROMEO:", "First Citizen:", "KING RICHARD III:", "ALL SERVING-MEN:", "JULIET: "]:
        assert is_speaker_line(line), line
    for line in ["Say no more:", "romeo:", "ROMEO", "O, Romeo:", "ROMEO: hi", ""]:
        assert not is_speaker_line(line), line


def test_characters_the_model_does_not_know_are_dropped_and_reported():
    session = ChatSession(VOCAB, 32)
    added = session.add_user_text("ROMEO: café\tnoir\r\n")
    assert added.dropped == ["é", "\t"]
    assert session.script == "ROMEO:\ncafnoir"
    assert session.add_user_text("éé").text == ""  # nothing left: the REPL says so, no reply


def test_the_script_grows_and_its_tail_is_what_the_engine_sees():
    session = ChatSession(VOCAB, block_size=16)
    engine = FakeEngine([(["Good morrow, cousin."], "max_tokens"), (["And so ", "farewell."], "stop")])
    session.add_user_text("ROMEO:")
    assert reply(session, engine) == "Good morrow, cousin."
    session.add_user_text("BENVOLIO: Is the day so young?")
    assert reply(session, engine) == "And so farewell."
    assert engine.prompts[0] == "ROMEO:\n"
    assert engine.prompts[1] == session.script[:-len("And so farewell." + SPEECH_END)][-32:]
    assert len(engine.prompts[1]) == 32  # at most two windows of the script's tail
    assert session.script.endswith("Is the day so young?And so farewell." + SPEECH_END)


def test_a_reply_that_ends_a_speech_gets_its_blank_line_and_one_speech_sets_the_stop():
    session = ChatSession(VOCAB, 32)
    engine = FakeEngine([(["Ay."], "stop"), (["Nay"], "max_tokens")])
    session.add_user_text("JULIET:")
    reply(session, engine)
    assert engine.params[0].stop == (SPEECH_END,)
    assert session.script == "JULIET:\nAy." + SPEECH_END
    session.set("one_speech", "off")
    reply(session, engine)
    assert engine.params[1].stop == ()
    assert session.script == "JULIET:\nAy." + SPEECH_END + "Nay"


def test_an_interrupted_reply_keeps_the_part_written_so_far():
    session = ChatSession(VOCAB, 32)
    engine = FakeEngine([(["O", " Romeo", " Romeo", " wherefore"], "max_tokens")])
    session.add_user_text("JULIET:")
    stream = session.stream_reply(engine)
    assert next(stream) == "O" and next(stream) == " Romeo"
    stream.close()  # what Ctrl-C does in the REPL
    assert session.last_stats is None  # no last event: the REPL says the reply was stopped
    assert session.script == "JULIET:\nO Romeo"


def test_regen_replaces_only_the_last_reply():
    session = ChatSession(VOCAB, 32)
    engine = FakeEngine([(["First."], "stop"), (["Second."], "stop"), (["Third."], "max_tokens")])
    with pytest.raises(UsageError, match="no reply to redo"):
        session.drop_last_reply()
    session.add_user_text("ROMEO:")
    reply(session, engine)
    session.add_user_text("JULIET:")
    before = session.script
    reply(session, engine)
    session.drop_last_reply()
    assert session.script == before
    reply(session, engine)
    assert session.script == "ROMEO:\nFirst." + SPEECH_END + "JULIET:\nThird."
    assert engine.prompts[2] == engine.prompts[1]  # the same script, tried again
    session.reset()
    assert session.script == ""
    with pytest.raises(UsageError):
        session.drop_last_reply()


def test_an_unseeded_session_draws_a_seed_and_shows_it():
    """A session given no seed draws one, so it can be repeated with --seed; /show and
    /set list it, and `/set seed random` draws a new one."""
    session = ChatSession(VOCAB, 32)
    seed = session.settings.seed
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert ("seed", str(seed)) in session.show_rows()
    engine = FakeEngine([([], "stop")] * 2)
    reply(session, engine)
    reply(session, engine)
    assert [p.seed for p in engine.params] == [seed, seed + 1]
    name, value = session.set("seed", "random")
    assert name == "seed" and value.isdigit() and session.settings.seed == int(value)


def test_stop_strings_in_chat_end_a_reply_and_give_back_only_a_speech_end():
    session = ChatSession(VOCAB, 32)
    assert session.set("stop", "\\n") == ("stop", "'\\n'")
    engine = FakeEngine([(["Ay"], "stop"), (["Nay"], "stop")])
    session.add_user_text("JULIET:")
    reply(session, engine)
    assert engine.params[0].stop == (SPEECH_END, "\n")
    assert session.script == "JULIET:\nAy"  # which stop ended it is not known: nothing given back
    session.set("one_speech", "off")
    reply(session, engine)
    assert engine.params[1].stop == ("\n",)
    assert session.set("stop", "none") == ("stop", "none") and session.settings.stop == ()
    assert session.stops() == ()
    session.set("one_speech", "on")
    assert session.stops() == (SPEECH_END,)


def test_min_p_is_a_chat_setting_passed_to_the_engine():
    session = ChatSession(VOCAB, 32)
    assert session.set("min_p", "0.1") == ("min_p", "0.1")
    engine = FakeEngine([([], "stop")])
    reply(session, engine)
    assert engine.params[0].min_p == 0.1
    with pytest.raises(UsageError, match="min_p must be a number from 0 to 1"):
        session.set("min_p", "2")


def test_load_round_trips_save_exactly(tmp_path):
    text = "ROMEO:\nBut soft, what light\n\nJULIET:\nAy me.\n\nROMEO:\nShe spe"
    first = ChatSession(VOCAB, 32)
    loaded = first.load(_write(tmp_path / "in.txt", text))
    assert loaded.chars == len(text) and loaded.dropped == []
    assert first.script == text and first.current_line() == "She spe"
    first.save(tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_bytes() == (tmp_path / "in.txt").read_bytes()
    second = ChatSession(VOCAB, 32)
    second.load(tmp_path / "out.txt")
    assert second.script == text
    engine = FakeEngine([(["aks"], "stop")])
    reply(second, engine)
    assert engine.prompts[0] == text[-64:]  # the model goes on from the end of the loaded scene
    bad = ChatSession(VOCAB, 32)
    bad.add_user_text("ROMEO:")
    for path, words in [(tmp_path / "missing.txt", "no such file"), (tmp_path, "is a folder")]:
        with pytest.raises(SgptError, match=words):
            bad.load(path)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(SgptError, match="not UTF-8"):
        bad.load(tmp_path / "latin1.txt")
    assert bad.script == "ROMEO:\n"  # a refused file leaves the script as it was
    assert bad.load(_write(tmp_path / "odd.txt", "ROMEO:\ncafé\n")).dropped == ["é"]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_seeded_session_repeats_and_regen_gets_a_new_seed():
    session = ChatSession(VOCAB, 32, ChatSettings(seed=7))
    engine = FakeEngine([([], "stop")] * 4)
    reply(session, engine)
    reply(session, engine)
    assert [p.seed for p in engine.params] == [7, 8]
    session.reset()
    reply(session, engine)
    session.set("seed", "7")
    reply(session, engine)
    assert [p.seed for p in engine.params[2:]] == [7, 7]


def test_save_writes_the_script_atomically(tmp_path, monkeypatch):
    session = ChatSession(VOCAB, 32)
    session.add_user_text("ROMEO:\nBut soft!")
    target = tmp_path / "scene.txt"
    assert session.save(target) == target
    assert target.read_text(encoding="utf-8") == "ROMEO:\nBut soft!\n"

    session.add_user_text("JULIET:")

    def half_then_fail(self, data):  # a disk that fills up halfway through the write
        with open(self, "wb") as f:
            f.write(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(SgptError, match="No space left on device"):
        session.save(target)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "ROMEO:\nBut soft!\n"  # the old file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.txt"]  # no temporary left
    with pytest.raises(SgptError, match="is a directory"):
        session.save(tmp_path)


def test_triple_quote_blocks_join_lines_into_one_input():
    joiner = InputJoiner()
    assert joiner.feed('"""') == [] and joiner.open
    assert joiner.feed("ROMEO:") == []
    assert joiner.feed("But soft!") == []
    assert joiner.feed('"""') == ["ROMEO:\nBut soft!"] and not joiner.open
    assert joiner.feed('"""\nJULIET:\nAy me.\n"""') == ["JULIET:\nAy me."]  # a paste, all at once
    assert joiner.feed("one\ntwo") == ["one\ntwo"]  # Esc-Enter lines: one input
    assert block_is_open('"""\nROMEO:') and not block_is_open('"""\nROMEO:\n"""')
    assert not block_is_open("ROMEO:")


def test_history_lives_under_sgpt_home_else_the_xdg_data_folder(tmp_path):
    assert history_path({"SGPT_HOME": str(tmp_path)}) == tmp_path / "chat_history"
    assert data_home({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "sgpt"
    assert data_home({"XDG_DATA_HOME": "relative"}) == Path.home() / ".local" / "share" / "sgpt"
    assert data_home({}) == Path.home() / ".local" / "share" / "sgpt"


# --- the REPL through prompt-toolkit's pipe input ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_engine(tiny_onnx):
    from sgpt_cli.infer.engine import Engine
    from sgpt_cli.infer.onnx_model import OnnxModel

    return Engine(OnnxModel(tiny_onnx, device="cpu"))


def run_repl(engine, keys, history: bool = True, settings: ChatSettings | None = None):
    """Type `keys` into the REPL: a string, or a list of strings sent one per prompt (keys already
    waiting when a prompt starts are read before it loads the history, so the up arrow needs its own
    prompt). Returns (exit status, what it printed, the session)."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from sgpt_cli.infer.onnx_model import model_summary
    from sgpt_cli.term.chat_input import PromptReader
    from sgpt_cli.term.chat_reply import make_console
    from sgpt_cli.term.repl import Repl

    chunks = [keys] if isinstance(keys, str) else list(keys)

    class TypingReader(PromptReader):
        def read(self, block_open: bool = False) -> str:
            if chunks:
                pipe.send_text(chunks.pop(0))
            return super().read(block_open)

    out = io.StringIO()
    session = ChatSession(engine.model.tokenizer.chars, engine.model.block_size,
                          settings or ChatSettings(seed=1, max_tokens=40))
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        repl = Repl(session, engine, TypingReader(history), make_console(out, color=False),
                    summary=model_summary(engine.model))
        code = repl.run()
    return code, out.getvalue(), session


def test_repl_runs_commands_and_replies_and_keeps_history(tiny_engine, isolated_home, tmp_path):
    keys = "ROMEO:\r/set temperature 0\r/show\r/bogus\r/save " + str(tmp_path / "s.txt") + "\r/quit\r"
    code, out, session = run_repl(tiny_engine, keys)
    assert code == 0
    assert session.script.startswith("ROMEO:\n") and len(session.script) > len("ROMEO:\n")
    assert "temperature = 0.0" in out
    assert str(tiny_engine.model.path) in out and "val loss" in out and "window 32" in out
    assert "unknown command /bogus" in out
    assert (tmp_path / "s.txt").read_text(encoding="utf-8") == session.script
    history = (isolated_home / "chat_history").read_text(encoding="utf-8")
    assert "+ROMEO:" in history and "+/show" in history


def test_repl_up_arrow_recalls_the_last_input(tiny_engine):
    code, out, session = run_repl(tiny_engine, ["/set seed 5\r", "\x1b[A\r", "/quit\r"])
    assert code == 0 and out.count("seed = 5") == 2


def test_repl_escape_enter_and_triple_quotes_give_one_input_of_several_lines(tiny_engine):
    code, _, session = run_repl(tiny_engine, 'JULIET:\x1b\rAy me.\r/quit\r')
    assert session.script.startswith("JULIET:\nAy me.\n") and session.replies == 1
    code, _, session = run_repl(tiny_engine, '"""\rROMEO:\rBut soft!\r"""\r/quit\r')
    assert session.script.startswith("ROMEO:\nBut soft!\n") and session.replies == 1


def test_repl_ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_leaves(tiny_engine):
    code, out, session = run_repl(tiny_engine, "ROMEO: half typed\x03\x04")
    assert code == 0
    assert "Ctrl-D or /quit leaves" in out
    assert session.script == ""


def test_repl_with_an_unwritable_history_keeps_it_in_memory(tiny_engine, isolated_home, monkeypatch):
    blocker = isolated_home.parent / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("SGPT_HOME", str(blocker))
    code, out, _ = run_repl(tiny_engine, ["/set seed 3\r", "\x1b[A\r", "/quit\r"])
    assert code == 0
    assert out.count("history is kept for this session only") == 1
    assert out.count("seed = 3") == 2  # up-arrow still recalls, from memory


def test_repl_no_history_writes_no_file(tiny_engine, isolated_home):
    code, _, _ = run_repl(tiny_engine, "/show\r/quit\r", history=False)
    assert code == 0 and not (isolated_home / "chat_history").exists()


# --- the whole command, stdin from a pipe ----------------------------------------------------------

def sgpt_chat(args, stdin: str, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(SGPT + ["chat", *args], input=stdin.encode("utf-8"), capture_output=True,
                          env=run_env(**env), cwd=cwd, timeout=300)


def test_piped_chat_works_end_to_end(tiny_onnx, tmp_path):
    proc = sgpt_chat(["--model", str(tiny_onnx), "--seed", "1"],
                     "ROMEO: café\n/show\n/save scene.txt\n/quit\nJULIET:\n", cwd=tmp_path)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert ">>> ROMEO: café" in out and ">>> /show" in out and "repetition_penalty" in out
    assert "JULIET" not in out  # /quit ends the session
    assert "\x1b" not in out + err  # a pipe and NO_COLOR: no escape codes at all
    assert f"sgpt chat  ·  {tiny_onnx}" in err and "cpu" in err  # the banner names the model
    assert "dropped characters the model does not know: 'é'" in err
    scene = (tmp_path / "scene.txt").read_text(encoding="utf-8")
    assert scene.startswith("ROMEO:\ncaf") and len(scene) > len("ROMEO:\ncaf")  # Romeo's line goes on
    assert "Traceback" not in err


def test_piped_chat_without_quit_ends_at_end_of_input(tiny_onnx):
    proc = sgpt_chat(["--model", str(tiny_onnx), "--max-tokens", "5"], "ROMEO:\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith(">>> ROMEO:\n")


def test_piped_chat_reports_refused_lines_and_exits_1(tiny_onnx):
    proc = sgpt_chat(["--model", str(tiny_onnx)], "/bogus\n/set top_p 7\n/show\n")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "unknown command /bogus; /help lists the commands" in err
    assert "top_p must be a number above 0 and at most 1, or off (got 7.0)" in err
    assert "temperature" in proc.stdout.decode()  # the rest still ran
    assert "Traceback" not in err


@pytest.mark.parametrize("args, status, words", [
    (["--model", "missing.onnx"], 1, "model file missing.onnx (--model) does not exist"),
    (["--temperature", "-1"], 2, "--temperature must be 0 (greedy) or a number from 0.001 to 100 (got -1.0)"),
    (["--top-k", "0"], 2, "--top-k must be a whole number of 1 or more"),
    (["-t", "1e-310"], 2, "--temperature must be 0 (greedy) or a number from 0.001 to 100 (got 1e-310)"),
    (["--model", ""], 2, "--model must be the path of an .onnx file (got '')"),
    (["--device", "tpu"], 2, "--device must be auto, cpu or cuda"),
])
def test_chat_user_errors_are_one_line(tiny_onnx, args, status, words):
    if "--model" not in args:
        args = args + ["--model", str(tiny_onnx)]
    proc = sgpt_chat(args, "")
    err = proc.stderr.decode()
    assert proc.returncode == status, err
    assert err.strip().count("\n") == 0 and words in err and err.startswith("sgpt: error: ")


def test_piped_chat_into_a_closed_pipe_exits_quietly(tiny_onnx):
    proc = subprocess.Popen(SGPT + ["chat", "--model", str(tiny_onnx), "--no-one-speech", "-n", "100000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=run_env())
    proc.stdin.write(b"ROMEO:\n")
    proc.stdin.close()
    assert len(proc.stdout.read(200)) == 200
    proc.stdout.close()  # the reader goes away mid-reply, as `| head` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "Error" not in err


def test_chat_help_states_every_default():
    import typer

    from sgpt_cli.term.app import build_app

    command = typer.main.get_command(build_app()).commands["chat"]
    options = [p for p in command.params if p.name != "help"]
    assert {p.name for p in options} >= {"model", "device", "no_history", "temperature", "top_k", "top_p",
                                         "repetition_penalty", "max_tokens", "seed", "verbose"}
    for p in options:
        assert "[default: " in p.help, p.name
    assert next(p for p in options if p.name == "max_tokens").default == ChatSettings().max_tokens


def test_the_cli_loads_neither_rich_nor_prompt_toolkit_until_chat_runs():
    code = ("import sys; import sgpt_cli.term.app, sgpt_cli.term.chat, sgpt_cli.infer.chat_session;"
            "from sgpt_cli.term.app import build_app; build_app();"
            "print(','.join(m for m in ('rich', 'prompt_toolkit', 'torch', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=run_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == ""


# --- /regen N and /pick K (batched alternatives) -----------------------------------------------

def test_regen_n_gives_the_replies_regen_would_give_one_by_one_and_pick_keeps_one(tiny_engine):
    settings = ChatSettings(seed=3, max_tokens=40, one_speech=False, temperature=0.9)
    batched = ChatSession(tiny_engine.model.tokenizer.chars, tiny_engine.model.block_size, settings)
    batched.add_user_text("ROMEO:")
    reply(batched, tiny_engine)
    before = batched.script[:batched.reply_start]
    events = list(batched.alternatives(tiny_engine, 3))
    assert sorted({e.k for e in events if e.done}) == [1, 2, 3]
    alternatives = list(enumerate(batched.choices, 1))
    assert batched.choice_ends == ["max_tokens"] * 3
    assert batched.script == before  # none kept until /pick
    # the same session with three plain /regen: the same three replies, by their seeds
    one_by_one = ChatSession(tiny_engine.model.tokenizer.chars, tiny_engine.model.block_size, settings)
    one_by_one.add_user_text("ROMEO:")
    reply(one_by_one, tiny_engine)
    singles = []
    for _ in range(3):
        one_by_one.drop_last_reply()
        singles.append(reply(one_by_one, tiny_engine))
    assert [text for _, text in alternatives] == singles
    assert len(set(singles)) > 1
    assert batched.pick(2) == singles[1] and batched.script == before + singles[1]
    batched.pick(1)
    assert batched.script == before + singles[0]  # picking again replaces the reply
    with pytest.raises(UsageError, match="from 1 to 3"):
        batched.pick(4)
    assert batched.choice_seeds == [3 + 1, 3 + 2, 3 + 3]
    batched.add_user_text("JULIET:")
    with pytest.raises(UsageError, match="no alternatives"):
        batched.pick(1)


def test_regen_n_and_pick_in_the_repl(tiny_engine):
    code, out, session = run_repl(tiny_engine, "ROMEO:\r/regen 3\r/pick 2\r/regen 1\r/pick x\r/quit\r")
    assert code == 0
    assert "3 alternatives" in out and "[1] seed" in out and "[3] seed" in out
    assert "alternative 2 is the reply" in out
    assert session.script.startswith("ROMEO:\n") and session.script[len("ROMEO:\n"):] == session.choices[1]
    assert "/regen takes a whole number from 2 to 16 (got '1')" in out
    assert "/pick takes a whole number from 1 to 16 (got 'x')" in out


def test_regen_n_shows_each_alternative_after_the_line_it_continues_not_after_the_old_reply():
    """After a reply cut mid-word (`And therefo`), `/regen 2` shows each alternative after the line it
    continues, never glued to the dropped reply's text (`And therefoAnd therefore`)."""
    engine = FakeBatchEngine([(["And ", "therefo"], "max_tokens")],
                             [[(["And there", "fore stand"], "max_tokens"), (["What should", " I do"], "stop")]])
    code, out, session = piped_repl(engine, "ROMEO:\n/regen 2\n/pick 2\n")
    assert code == 0
    assert "And therefoAnd" not in out and "And therefoWhat" not in out
    assert "[1] seed 6\nAnd therefore stand…\n" in out
    assert "[2] seed 7\nWhat should I do\n" in out
    assert session.script == "ROMEO:\nWhat should I do" + SPEECH_END  # the speech's end given back
    # a normal reply in the middle of a line: the alternatives follow the user's open line
    engine = FakeBatchEngine([([", that can be"], "max_tokens")],
                             [[([" sweet"], "max_tokens"), ([" sour"], "max_tokens")]])
    code, out, session = piped_repl(engine, "ROMEO: But soft\n/regen 2\n")
    assert "But soft, that can beBut" not in out
    assert "[1] seed 6\nBut soft sweet…" in out and "[2] seed 7\nBut soft sour…" in out


def test_regen_n_keeps_what_ctrl_c_cut_and_pick_takes_it():
    """(The session half; the pty test presses the keys.) Closing the alternatives early
    keeps every text as far as it got, and /pick takes a stopped one."""
    engine = FakeBatchEngine([(["Ay."], "stop")],
                             [[(["O", " Romeo", " Romeo"], "max_tokens"), (["Nay", " never"], "max_tokens")]])
    session = ChatSession(VOCAB, 64, ChatSettings(seed=1))
    session.add_user_text("JULIET:")
    reply(session, engine)
    stream = session.alternatives(engine, 2)
    seen = [next(stream) for _ in range(4)]  # two steps of both rows
    assert [(e.k, e.piece, e.done) for e in seen] == [(1, "O", False), (2, "Nay", False),
                                                      (1, " Romeo", False), (2, " never", False)]
    stream.close()
    assert engine.closed and session.choice_ends == ["interrupted", "interrupted"]
    assert session.choices == ["O Romeo", "Nay never"]
    assert session.pick(2) == "Nay never" and session.script == "JULIET:\nNay never"


def test_a_reply_cut_by_max_tokens_is_marked_on_screen_only():
    """A reply cut at max_tokens (`That I do tell him ou`) ends with an ellipsis and a one-line
    notice, and the script keeps exactly what the model wrote."""
    engine = FakeEngine([(["That I do ", "tell him ou"], "max_tokens"), (["Ay."], "stop")])
    code, out, session = piped_repl(engine, "ROMEO:\n\n")  # Enter on an empty line: it goes on
    assert session.script == "ROMEO:\nThat I do tell him ouAy." + SPEECH_END
    assert "That I do tell him ou…\n(cut at max_tokens = 300; Enter on an empty line lets it go on" in out
    assert session.script.startswith("ROMEO:\nThat I do tell him ou") and "…" not in session.script
    assert out.count("cut at max_tokens") == 1  # the reply that ended a speech has no mark


def test_chat_stop_flag_and_scene_file_from_the_command_line(tiny_onnx, tmp_path):
    """`sgpt chat scene.txt` continues a saved scene, exactly; `--stop` ends replies as in complete."""
    scene = tmp_path / "scene.txt"
    scene.write_text("ROMEO:\nBut soft, what light\n\nJULIET:\nAy me", encoding="utf-8")
    proc = sgpt_chat([str(scene), "--model", str(tiny_onnx), "--seed", "2", "--stop", "e", "-n", "80"],
                     "\n/save again.txt\n", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "seed 2" in err  # the banner says the seed
    n = len(scene.read_text(encoding="utf-8"))
    assert f"loaded {n} characters from" in err
    again = (tmp_path / "again.txt").read_text(encoding="utf-8")
    assert again.startswith(scene.read_text(encoding="utf-8")) and len(again) <= n + 80
    assert "e" not in again[n:]  # the reply stopped before its first 'e'
    proc = sgpt_chat([str(tmp_path / "nope.txt"), "--model", str(tiny_onnx)], "")
    assert proc.returncode == 1 and proc.stderr.decode().startswith("sgpt: error: cannot load")


def test_slash_load_then_save_round_trips_in_the_repl(tmp_path):
    text = "ROMEO:\nBut soft\n\nJULIET:\nAy"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    engine = FakeEngine([])
    code, out, session = piped_repl(engine, f"/load {tmp_path / 'in.txt'}\n/save {tmp_path / 'out.txt'}\n")
    assert code == 0 and (tmp_path / "out.txt").read_text(encoding="utf-8") == text
    assert "JULIET:\nAy\n" in out and f"loaded {len(text)} characters" in out
    code, out, _ = piped_repl(engine, "/load\n")
    assert code == 1 and "/load needs a file name" in out


# --- /set heat: each character coloured by the probability the model gave it -----------------------

SGR = re.compile(r"\x1b\[([0-9;]*)m")
HEAT_CODES = {"bright_blue": "94", "cyan": "36", "green": "32", "yellow": "33", "red": "31"}


def coloured(stream: str) -> list[tuple[str, str]]:
    """(character, the SGR code in force) for each printable character, in the order written."""
    out, code, i = [], "", 0
    while i < len(stream):
        m = SGR.match(stream, i)
        if m:
            code, i = m.group(1), m.end()
            continue
        if stream[i] == "\x1b":  # another sequence (the wrap's cursor moves): no character
            i = re.match(r"\x1b\[[0-9;]*[A-Za-z]", stream[i:]).end() + i
            continue
        if stream[i].isprintable():
            out.append((stream[i], code))
        i += 1
    return out


def test_heat_bins_cover_every_probability_and_the_legend_names_each():
    from sgpt_cli.term.chat_reply import HEAT, heat_legend, heat_style

    assert [heat_style(p) for p in (1.0, 0.9, 0.89, 0.6, 0.3, 0.1, 0.099, 0.0)] == [
        "bright_blue", "bright_blue", "cyan", "cyan", "green", "yellow", "red", "red"]
    assert heat_style(None) == "cyan"  # a character whose probability is not known: the reply's colour
    legend = heat_legend()
    assert all(words in legend.plain for _, _, words in HEAT)
    assert [span.style for span in legend.spans][-len(HEAT):] == [style for _, style, _ in HEAT]


@pytest.fixture()
def colour(monkeypatch):
    """rich obeys NO_COLOR (which the suite sets) even on a console told to colour."""
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_heat_colours_each_character_by_its_bin_and_is_plain_text_when_colour_is_off(colour):
    from sgpt_cli.term.chat_reply import ReplyPrinter, make_console

    def draw(color: bool, heat: bool, width: int = 80) -> str:
        out = io.StringIO()
        console = make_console(out, color=color)
        console.width = width
        printer = ReplyPrinter(console, wrap=True, heat=heat)
        printer.write("Ay me\nO", probs=[0.95, 0.95, 0.7, 0.4, 0.2, None, 0.01])
        printer.end()
        return out.getvalue()

    shown = [(c, code) for c, code in coloured(draw(True, True)) if c.strip()]
    assert shown == [("A", "94"), ("y", "94"), ("m", "32"), ("e", "33"), ("O", "31")]
    assert draw(False, True) == draw(False, False) == "Ay me\nO\n"  # NO_COLOR, a pipe: the text alone
    assert "\x1b[94m" not in draw(True, False)  # heat off: the reply's one colour


def test_heat_keeps_each_characters_colour_when_a_word_is_wrapped_onto_the_next_row(colour):
    from sgpt_cli.term.chat_reply import ReplyPrinter, make_console

    out = io.StringIO()
    console = make_console(out, color=True)
    console.width = 6
    printer = ReplyPrinter(console, wrap=True, heat=True)
    for piece, probs in (("Ay me", [0.95, 0.95, None, 0.2, 0.2]), ("ow", [0.01, 0.5])):
        printer.write(piece, probs=probs)  # 'meow' crosses the edge: taken back, drawn on the next row
    printer.end()
    stream = out.getvalue()
    assert "\x1b[K" in stream
    redrawn = coloured(stream[stream.rindex("\x1b[K"):])
    assert [(c, code) for c, code in redrawn if c.strip()] == [("m", "33"), ("e", "33"), ("o", "31"), ("w", "32")]


def test_heat_asks_the_engine_for_the_chosen_characters_probabilities_only_when_on(tiny_engine):
    session = ChatSession(tiny_engine.model.tokenizer.chars, tiny_engine.model.block_size,
                          ChatSettings(seed=4, max_tokens=40, one_speech=False))
    assert session.sampling_params().logprobs is None
    session.add_user_text("ROMEO:")
    off = reply(session, tiny_engine)
    assert session.reply_probs == []
    session.set("heat", "on")
    assert session.sampling_params().logprobs == 0  # the chosen character's alone: no alternatives
    session.drop_last_reply()
    session.replies = 0
    on = reply(session, tiny_engine)
    assert on == off and len(session.reply_probs) == len(on) and all(0 < p <= 1 for p in session.reply_probs)
    list(session.alternatives(tiny_engine, 2))
    assert [len(p) for p in session.choice_probs] == [len(c) for c in session.choices]


def test_set_heat_on_shows_the_legend_and_says_when_there_is_no_colour():
    engine = FakeEngine([])
    code, out, session = piped_repl(engine, "/set heat on\n/help\n")
    assert code == 0 and session.settings.heat
    assert "heat = on" in out and out.count("■ 90% or more") == 2  # when turned on, and in /help
    assert "no colour (NO_COLOR, or not a terminal), so replies stay plain text" in out
    assert "/set heat on" in out  # /help's row


def test_heat_in_the_repl_colours_a_real_reply_and_changes_no_character(tiny_engine, colour):
    from sgpt_cli.term.chat_input import LineReader
    from sgpt_cli.term.chat_reply import make_console
    from sgpt_cli.term.repl import Repl

    def transcript(lines: str) -> str:
        out = io.StringIO()
        session = ChatSession(tiny_engine.model.tokenizer.chars, tiny_engine.model.block_size,
                              ChatSettings(seed=6, max_tokens=120, one_speech=False))
        Repl(session, tiny_engine, LineReader(io.StringIO(lines)), make_console(out, color=True)).run()
        return out.getvalue()

    hot, plain = transcript("/set heat on\nROMEO:\n"), transcript("ROMEO:\n")
    reply_of = lambda stream: "".join(c for c, _ in coloured(stream[stream.index("ROMEO:"):]))  # noqa: E731
    assert reply_of(hot) == reply_of(plain)
    codes = {code for _, code in coloured(hot[hot.index("ROMEO:"):])}
    assert len(codes & set(HEAT_CODES.values()) - {"36"}) >= 2  # several bins in 120 characters
    assert not {code for _, code in coloured(plain[plain.index("ROMEO:"):])} & {"94", "31"}
