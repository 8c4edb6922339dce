"""One exit-status scheme for every command (docs/reliability.md, "Exit statuses"; sgpt_cli.term.common):
0 done, 1 a failure (missing or damaged file), 2 a usage error, 130 interrupted. Also: --help shows
no `<bool>` after on/off flags, and shell completion installs with Typer's --install-completion."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from conftest import SGPT, run_env

COMMANDS = ["train", "export", "chat", "complete", "eval", "serve"]


def sgpt(*args: str, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([*SGPT, *args], capture_output=True, text=True, env=run_env(**env), cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300)


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("sgpt: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


USAGE = {  # exit 2: a flag or value the command cannot take
    "train": ["--preset", "nope"],
    "export": ["--opset", "17"],
    "chat": ["--temperature", "1e-310"],
    "complete": ["--top-p", "0"],
    "eval": ["--batch-size", "0"],
    "serve": ["--port", "70000"],
}
FAILURE = {  # exit 1: a file that is not there
    "train": ["--data", "missing.txt", "--out", "m.pt"],
    "export": ["missing.pt"],
    "chat": ["--model", "missing.onnx"],
    "complete": ["--model", "missing.onnx"],
    "eval": ["--model", "missing.onnx"],
    "serve": ["--model", "missing.onnx"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_usage_error_exits_2_in_every_command(command, tmp_path):
    proc = sgpt(command, *USAGE[command], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert USAGE[command][0] in one_error_line(proc)
    unknown = sgpt(command, "--no-such-flag", cwd=tmp_path)
    assert unknown.returncode == 2 and "--no-such-flag" in one_error_line(unknown)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_file_exits_1_in_every_command(command, tmp_path):
    proc = sgpt(command, *FAILURE[command], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "does not exist" in one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing downloaded, nothing written


def test_an_empty_model_name_is_a_usage_error_everywhere(tmp_path):
    for command in ("chat", "complete", "eval", "serve"):
        proc = sgpt(command, "--model", "", cwd=tmp_path)
        assert proc.returncode == 2 and "--model must be the path of an .onnx file (got '')" in one_error_line(proc)


def test_ctrl_c_exits_130_in_chat(tiny_onnx):
    """Piped chat waiting for its next line: Ctrl-C ends it with 130 (complete, export and train have
    their own Ctrl-C tests: test_complete, test_export, test_train)."""
    proc = subprocess.Popen([*SGPT, "chat", "--model", str(tiny_onnx), "--no-history"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env())
    assert proc.stderr.readline().startswith(b"sgpt chat")  # the banner: the loop is reading stdin
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    proc.stdin.close()
    assert proc.returncode == 130, err
    assert err.decode().strip() == "sgpt: interrupted"


def test_ctrl_c_exits_130_in_eval(tiny_onnx, text_file, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    big = tmp_path / "big.txt"
    big.write_text(text_file.read_text(encoding="utf-8") * 40, encoding="utf-8")
    child = pexpect.spawn(sys.executable, ["-m", "sgpt_cli", "eval", "--model", str(tiny_onnx), "--data", str(big),
                                           "--batch-size", "1"], env=run_env(), timeout=120)
    child.expect("scoring")  # the progress bar: scoring has begun
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    assert b"Traceback" not in child.before


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help_shows_on_off_flags_without_a_type(command):
    proc = sgpt(*command, "--help")
    assert proc.returncode == 0 and "--help" in proc.stdout
    assert "<bool>" not in proc.stdout and "\\[" not in proc.stdout


def test_shell_completion_installs_and_completes(tmp_path):
    shown = sgpt("--show-completion", "bash")
    assert shown.returncode == 0 and "_SGPT_COMPLETE" in shown.stdout
    installed = sgpt("--install-completion", "bash", HOME=str(tmp_path))
    assert installed.returncode == 0, installed.stderr
    assert "sgpt" in (tmp_path / ".bashrc").read_text() and list((tmp_path / ".bash_completions").iterdir())
    words = sgpt(_SGPT_COMPLETE="complete_bash", COMP_WORDS="sgpt com", COMP_CWORD="1")
    assert words.stdout.split() == ["complete"]
    flags = sgpt(_SGPT_COMPLETE="complete_bash", COMP_WORDS="sgpt complete --te", COMP_CWORD="2")
    assert flags.stdout.split() == ["--temperature"]
