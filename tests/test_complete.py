"""`sgpt complete` in real shell pipes: where the prompt comes from, exact output, reproducibility,
stop strings, closed pipes, Ctrl-C, odd input, and the fast (Typer-free) parser agreeing with Typer."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SGPT, run_env
from sgpt_cli.term import complete as complete_mod
from sgpt_cli.term.app import app
from sgpt_cli.term.complete import complete_cmd as typer_complete
from sgpt_cli.term.complete import OPTIONS, StreamedPrompt, fast_parse
from test_eval import write_bad_models

TIMEOUT = 120


@pytest.fixture(scope="module")
def model(tiny_onnx) -> str:
    return str(tiny_onnx)


def sgpt(*args: str, stdin: bytes | None = b"", **env) -> subprocess.CompletedProcess:
    """One `sgpt ...` process; stdin is a pipe holding `stdin` (None: /dev/null)."""
    kwargs = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([*SGPT, *args], capture_output=True, env=run_env(**env), timeout=TIMEOUT, **kwargs)


def text_of(*args: str, stdin: bytes | None = b"") -> str:
    proc = sgpt(*args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    return proc.stdout.decode("utf-8")


# --- where the prompt comes from ---------------------------------------------------------------

def test_stdin_prompt_is_the_same_as_the_argument_prompt(model):
    flags = ["complete", "--model", model, "-n", "40", "--seed", "3"]
    from_stdin = text_of(*flags, stdin=b"ROMEO:")
    from_argument = text_of(*flags, "ROMEO:", stdin=None)
    other_prompt = text_of(*flags, "JULIET:", stdin=None)
    assert from_stdin == from_argument
    assert len(from_stdin) == 40
    assert from_stdin != other_prompt  # the prompt really is read: another prompt, another text


def test_stdin_comes_before_the_argument(model):
    flags = ["complete", "--model", model, "-n", "0", "--echo"]
    assert text_of(*flags, "But soft", stdin=b"ROMEO:") == "ROMEO: But soft"
    assert text_of(*flags, "But soft", stdin=b"ROMEO:\n") == "ROMEO:\nBut soft"  # no space after a line break


@pytest.mark.parametrize("stdin, argument, joined", [
    ("ROMEO:", None, "ROMEO:"), ("", "JULIET:", "JULIET:"), ("a", "b", "a b"), ("a\n", "b", "a\nb"),
    ("a ", "b", "a b"), ("", None, ""), ("a", "", "a"),
])
def test_stdin_and_argument_are_joined_as_llm_joins_them(stdin, argument, joined):
    import io

    stream = io.BytesIO(stdin.encode())
    stream.isatty = lambda: False
    assert "".join(StreamedPrompt(stream, argument).pieces()) == joined


def test_empty_prompt_starts_from_a_line_break(model):
    flags = ["complete", "--model", model, "-n", "30", "--seed", "5"]
    assert text_of(*flags, stdin=None) == text_of(*flags, "\n", stdin=None)


def test_echo_writes_the_prompt_first(model):
    out = text_of("complete", "--model", model, "-n", "25", "--seed", "1", "--echo", stdin=b"ROMEO:\nO, ")
    assert out.startswith("ROMEO:\nO, ") and len(out) == len("ROMEO:\nO, ") + 25
    plain = text_of("complete", "--model", model, "-n", "25", "--seed", "1", stdin=b"ROMEO:\nO, ")
    assert out == "ROMEO:\nO, " + plain


# --- what comes out ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 57])
def test_max_tokens_is_the_exact_length(model, n):
    assert len(text_of("complete", "--model", model, "-n", str(n), "--seed", "2", stdin=b"ROMEO:")) == n


def test_json_is_one_object_with_text_tokens_timings_and_model(model):
    out = text_of("complete", "--model", model, "-n", "20", "--seed", "4", "--json", stdin=b"ROMEO:")
    assert out.endswith("\n") and out.count("\n") == 1
    result = json.loads(out)
    assert result["model"] == model
    assert result["prompt"] == "ROMEO:"
    assert len(result["text"]) == result["tokens"] == 20
    assert result["stop_reason"] == "max_tokens"
    assert set(result["timings"]) >= {"load_s", "ttft_s", "generate_s", "chars_per_s"}
    assert result["text"] == text_of("complete", "--model", model, "-n", "20", "--seed", "4", stdin=b"ROMEO:")


def test_json_counts_characters_as_chars_and_still_as_tokens(model):
    """Every JSON output counts characters as "chars" (as --batch rows and eval do); complete --json
    still writes the 0.1 names ("tokens", "prompt_tokens") beside them, for one release."""
    result = json.loads(text_of("complete", "--model", model, "-n", "7", "--seed", "4", "--json", stdin=b"ROMEO:"))
    assert result["chars"] == result["tokens"] == len(result["text"]) == 7
    assert result["prompt_chars"] == result["prompt_tokens"] == len("ROMEO:")
    samples = json.loads(text_of("complete", "--model", model, "-n", "5", "--seed", "4", "--json",
                                 "--num-samples", "2", stdin=b"ROMEO:"))["samples"]
    assert [s["chars"] for s in samples] == [s["tokens"] for s in samples] == [len(s["text"]) for s in samples]


def test_json_logprobs_give_each_character_its_probability_and_the_k_likeliest(model):
    """OpenAI's chat shape, one entry per character of "text", in order; what the model
    believed, not what the draw was shaped into, and asking changes no character."""
    flags = ("complete", "--model", model, "-n", "25", "--seed", "4", "-t", "1.5", "--json")
    result = json.loads(text_of(*flags, "--logprobs", "3", stdin=b"ROMEO:"))
    content = result["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == result["text"] and len(content) == 25
    assert result["text"] == json.loads(text_of(*flags, stdin=b"ROMEO:"))["text"]
    assert "logprobs" not in json.loads(text_of(*flags, stdin=b"ROMEO:"))
    for c in content:
        top = c["top_logprobs"]
        assert c["bytes"] == list(c["token"].encode("utf-8")) and c["logprob"] <= 0
        assert len(top) == 3 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode("utf-8")) for t in top)
        assert c["logprob"] <= top[0]["logprob"] and sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-9
        assert all(t["logprob"] == c["logprob"] for t in top if t["token"] == c["token"])
    alone = json.loads(text_of(*flags, "--logprobs", "0", stdin=b"ROMEO:"))["logprobs"]["content"]
    assert [(a["token"], a["logprob"], a["top_logprobs"]) for a in alone] == [(c["token"], c["logprob"], []) for c in content]


def test_seed_reproducibility_across_processes(model):
    flags = ["complete", "--model", model, "-n", "80", "-t", "1.0", "ROMEO:"]
    first = text_of(*flags, "--seed", "11", stdin=None)
    assert text_of(*flags, "--seed", "11", stdin=None) == first
    assert text_of(*flags, "--seed", "12", stdin=None) != first


def test_an_unseeded_run_draws_a_seed_and_reports_it_so_it_can_be_repeated(model):
    """`--json` says the seed drawn (never null), `-v` says it on stderr, and the same
    seed given back repeats the text."""
    flags = ["complete", "--model", model, "-n", "60", "-t", "1.0", "ROMEO:"]
    result = json.loads(text_of(*flags, "--json", stdin=None))
    assert isinstance(result["seed"], int)
    assert text_of(*flags, "--seed", str(result["seed"]), stdin=None) == result["text"]
    proc = sgpt(*flags, "-v", stdin=None)
    seed = int(proc.stderr.decode().rsplit("seed ", 1)[1].split()[0])
    assert text_of(*flags, "--seed", str(seed), stdin=None) == proc.stdout.decode()


def _engine_builds_samplers_from_params() -> bool:
    import inspect

    from sgpt_cli.infer import engine

    return "from_params" in inspect.getsource(engine)


@pytest.mark.xfail(not _engine_builds_samplers_from_params(), strict=True,
                   reason="the engine passes min_p once it builds each sampler with Sampler.from_params")
def test_min_p_reaches_the_engine(model):
    """--min-p 1 keeps only the likeliest character: the greedy text, whatever the temperature."""
    flags = ["complete", "--model", model, "-n", "40", "ROMEO:"]
    assert text_of(*flags, "--min-p", "1", "-t", "1.5", "--seed", "3", stdin=None) == text_of(*flags, "-t", "0", stdin=None)


def test_min_p_is_a_flag_with_its_range(model):
    proc = sgpt("complete", "--model", model, "--min-p", "1.5", "ROMEO:", stdin=None)
    assert proc.returncode == 2 and "--min-p must be a number from 0 to 1 (got 1.5)" in proc.stderr.decode()
    assert len(text_of("complete", "--model", model, "-n", "30", "--min-p", "0.2", "ROMEO:", stdin=None)) == 30


def test_stop_string_ends_the_text_before_it(model):
    flags = ["complete", "--model", model, "-n", "200", "--seed", "8", "-t", "1.0", "ROMEO:"]
    full = text_of(*flags, stdin=None)
    stop = full[30:33]  # a string the unstopped text is sure to contain
    stopped = json.loads(text_of(*flags, "--stop", stop, "--stop", "never-seen-\u2603", "--json", stdin=None))
    assert stopped["text"] == full[: full.index(stop)]
    assert stopped["stop_reason"] == "stop"


def test_stop_reads_backslash_escapes_as_the_help_says(model):
    """`--stop '\\n\\n'` as a shell passes it (a backslash and an n, twice) stops at a blank line."""
    flags = ["complete", "--model", model, "-n", "300", "--seed", "8", "-t", "1.0", "ROMEO:", "--json"]
    escaped = json.loads(text_of(*flags, "--stop", r"\n\n", stdin=None))
    real = json.loads(text_of(*flags, "--stop", "\n\n", stdin=None))
    assert escaped["text"] == real["text"] and escaped["stop_reason"] == "stop"
    assert "\n\n" not in escaped["text"]


def test_no_escape_codes_when_piped_even_without_no_color(model):
    env = {k: v for k, v in run_env(TERM="xterm-256color").items() if k != "NO_COLOR"}
    proc = subprocess.run([*SGPT, "complete", "--model", model, "-n", "30", "--echo", "--verbose", "ROMEO:"],
                          capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout and b"\x1b" not in proc.stderr
    assert proc.stdout.startswith(b"ROMEO:") and len(proc.stdout.decode()) == len("ROMEO:") + 30


def test_verbose_names_the_model_file_on_stderr(model):
    proc = sgpt("complete", "--model", model, "-n", "5", "--verbose", stdin=b"ROMEO:")
    assert proc.returncode == 0
    assert f"sgpt: model {model}" in proc.stderr.decode()
    assert len(proc.stdout.decode()) == 5


# --- odd input --------------------------------------------------------------------------------------

def test_unknown_characters_are_dropped_with_one_warning(model):
    clean = text_of("complete", "--model", model, "-n", "20", "--seed", "6", stdin="ROMEO:".encode())
    proc = sgpt("complete", "--model", model, "-n", "20", "--seed", "6", stdin="RO\u2603ME\u00e9O:\u2603".encode())
    assert proc.returncode == 0
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: warning:") and "\u2603\u00e9" in lines[0]
    assert proc.stdout.decode() == clean  # the same text as the prompt without them


def test_invalid_utf8_on_stdin_is_replaced_not_a_crash(model):
    proc = sgpt("complete", "--model", model, "-n", "15", "--seed", "1", stdin=b"ROMEO:\xff\xfe\x80")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.decode()) == 15
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "\ufffd" in lines[0] and "Traceback" not in proc.stderr.decode()


def test_windows_line_endings_need_no_warning(model):
    unix = text_of("complete", "--model", model, "-n", "20", "--seed", "9", stdin=b"ROMEO:\nAy.\n")
    assert text_of("complete", "--model", model, "-n", "20", "--seed", "9", stdin=b"ROMEO:\r\nAy.\r\n") == unix


# --- pipes, signals, exit codes ---------------------------------------------------------------------

def test_closed_pipe_ends_quietly(model):
    """`sgpt complete | head -c 5`, in a real shell: five bytes, and not a word on stderr."""
    command = shlex.join([*SGPT, "complete", "--model", model, "-n", "100000", "ROMEO:"])
    proc = subprocess.run(["sh", "-c", f"{command} </dev/null | head -c 5"], capture_output=True,
                          env=run_env(), timeout=TIMEOUT)
    assert proc.returncode == 0
    assert len(proc.stdout) == 5
    assert proc.stderr == b""


def test_closed_pipe_exit_status_is_zero(model):
    proc = subprocess.Popen([*SGPT, "complete", "--model", model, "-n", "100000", "ROMEO:"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env())
    assert len(proc.stdout.read(5)) == 5
    proc.stdout.close()  # the reader goes away, as `head` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=TIMEOUT) == 0
    assert stderr == b""


def test_ctrl_c_exits_130_without_a_traceback(model):
    proc = subprocess.Popen([*SGPT, "complete", "--model", model, "-n", "100000", "ROMEO:"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env())
    assert proc.stdout.read(1)  # generation has begun
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr
    assert stderr.decode().strip() == "sgpt: interrupted"


@pytest.mark.parametrize("args, needle, status", [
    (["--model", "missing.onnx"], "does not exist", 1),
    (["--model", "{foreign}"], "is not an sgpt model", 1),
    (["--model", "{damaged}"], "is not a well-formed ONNX file", 1),
    (["--model", "{future}"], "format '99'", 1),
    (["--model", "{old}"], "is sgpt model format 1 (a growing cache, from sgpt before 0.2); this sgpt reads format 2: "
                           "make a new file with `sgpt export CHECKPOINT.pt --out ", 1),
    (["--model", ""], "--model must be the path of an .onnx file (got '')", 2),
    (["--model", "{model}", "--device", "tpu"], "--device must be auto, cpu or cuda", 2),
    (["--model", "{model}", "-n", "-1"], "--max-tokens must be a whole number of 0 or more (got -1)", 2),
    (["--model", "{model}", "-t", "-0.5"], "--temperature must be 0 (greedy) or a number from 0.001 to 100", 2),
    (["--model", "{model}", "-t", "1e-310"], "--temperature must be 0 (greedy) or a number from 0.001 to 100 (got 1e-310)", 2),
    (["--model", "{model}", "-t", "inf"], "(got inf)", 2),
    (["--model", "{model}", "-t", "nan"], "(got nan)", 2),
    (["--model", "{model}", "--repetition-penalty", "1e-310"], "--repetition-penalty must be a number from 0.01 to 100", 2),
    (["--model", "{model}", "--top-p", "1.5"], "--top-p must be a number above 0 and at most 1 (got 1.5)", 2),
    (["--model", "{model}", "--top-k", "0"], "--top-k must be a whole number of 1 or more", 2),
    (["--model", "{model}", "--seed", "-1"], "--seed must be a whole number from 0 to", 2),
    (["--model", "{model}", "--stop", ""], "--stop must be", 2),
    (["--model", "{model}", "--logprobs", "21", "--json"], "--logprobs must be a whole number from 0 to 20 (got 21)", 2),
    (["--model", "{model}", "--logprobs", "3"], "--logprobs needs --json: the probabilities are written in the "
                                                "JSON object (add --json", 2),
    (["--model", "{model}", "--logprobs", "3", "--num-samples", "2"], "--logprobs needs --json", 2),
])
def test_user_errors_are_one_line(model, tmp_path, args, needle, status):
    """Bad files and failures exit 1, bad flag values 2 (the README's table), each in one line."""
    bad = {k: str(v) for k, v in write_bad_models(tmp_path, Path(model)).items()}
    proc = sgpt("complete", *[a.format(model=model, **bad) for a in args], stdin=b"ROMEO:")
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == status, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: ") and needle in lines[0], lines
    assert proc.stdout == b""


def test_bad_flag_is_a_usage_error(model):
    proc = sgpt("complete", "--model", model, "--bogus", stdin=b"ROMEO:")
    assert proc.returncode == 2
    assert b"No such option" in proc.stderr and b"Traceback" not in proc.stderr
    assert proc.stdout == b""


# --- the worker, called directly ------------------------------------------------------------------

def test_worker_streams_what_it_returns(model):
    out, errs = io.StringIO(), io.StringIO()
    result = complete_mod.complete("ROMEO:", out=out, errs=errs, model=model, max_tokens=12, seed=1, device="cpu")
    assert out.getvalue() == result["text"] and result["tokens"] == 12
    assert errs.getvalue() == ""


# --- one table of options, two parsers ------------------------------------------------------------

def test_options_are_the_declared_sampling_settings():
    from sgpt_cli.infer.engine import SamplingParams
    from sgpt_cli.settings import PARAMS, SAMPLING

    assert OPTIONS[:len(PARAMS)] == PARAMS and PARAMS[:len(SAMPLING)] == SAMPLING  # the very objects
    engine_defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    assert engine_defaults == {s.name: s.default for s in PARAMS}


def test_typer_signature_is_the_options_table():
    params = list(inspect.signature(typer_complete).parameters.values())
    assert [p.name for p in params] == ["prompt"] + [opt.name for opt in OPTIONS]
    for p, opt in zip(params[1:], OPTIONS):
        assert tuple(p.default.param_decls) == opt.flags


def test_help_states_every_default():
    result = CliRunner().invoke(app, ["complete", "--help"], terminal_width=250)
    assert result.exit_code == 0
    for opt in OPTIONS:
        assert opt.flags[0] in result.stdout
    assert result.stdout.count("[default:") == len(OPTIONS)
    assert "<bool>" not in result.stdout  # on/off flags take no value, and help says so


ARGVS = [
    [], ["ROMEO:"], ["-n", "5", "ROMEO:"], ["ROMEO:", "-n5", "--temperature=0.5"],
    ["--top-k", "3", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "-4"],
    ["--stop", "\n\n", "--stop", "END", "--json", "--echo", "-v", "-m", "x.onnx", "--device", "cpu"],
    ["--", "-not-a-flag"], ["--max-tokens", "0", "-t", "0"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "(none)" for a in ARGVS])
def test_fast_parser_agrees_with_typer(argv, monkeypatch):
    seen = {}

    def fake_run(values):
        seen.update(values)
        return 0

    monkeypatch.setattr(complete_mod, "run", fake_run)
    result = CliRunner().invoke(app, ["complete", *argv])
    assert result.exit_code == 0, result.output
    fast = fast_parse(argv)
    assert fast is not None
    seen["stop"] = list(seen["stop"]) if seen["stop"] else None
    assert fast == seen


@pytest.mark.parametrize("argv", [["--help"], ["-n", "x"], ["--bogus"], ["a", "b"], ["--stop", "-x"], ["--max"]])
def test_fast_parser_leaves_help_and_mistakes_to_typer(argv):
    assert fast_parse(argv) is None


def test_terminal_gets_a_final_line_break(model):
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in run_env().items() if k != "NO_COLOR"}
    child = pexpect.spawn(sys.executable, ["-m", "sgpt_cli", "complete", "--model", model, "-n", "10", "--seed", "1",
                                           "--echo", "ROMEO:"], env=env, timeout=TIMEOUT)
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before
    assert child.exitstatus == 0, raw
    assert raw.endswith(b"\r\n")
    assert b"\x1b[1mROMEO:\x1b[0m" in raw  # the echoed prompt in bold on a terminal
