"""The command line as a whole: help for every command, and usage mistakes as one line."""

from __future__ import annotations

import subprocess

import pytest

from conftest import SGPT, run_env

COMMANDS = ["train", "export", "chat", "complete", "eval", "serve"]


def sgpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SGPT, *args], capture_output=True, text=True, env=run_env(),
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["train", "--n-layer", "abc"], "--n-layer"),
    (["train", "--bogus"], "--bogus"),
    (["export", "--opset", "x"], "--opset"),  # Typer's own parse error, made one line by cli.run_app
    (["chat", "--temperature"], "--temperature"),
    (["complete", "--top-k", "x"], "--top-k"),
    (["eval", "a", "b"], "unexpected extra argument"),
    (["serve", "--rows", "0"], "--rows"),
    (["bogus"], "No such command"),
])
def test_usage_errors_are_one_line_with_exit_2(args, needle):
    proc = sgpt(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_every_command_documents_its_options_with_defaults():
    overview = sgpt("--help")
    assert overview.returncode == 0
    for command in COMMANDS:
        assert command in overview.stdout
        proc = sgpt(command, "--help")
        assert proc.returncode == 0 and "--help" in proc.stdout
        if command != "eval":  # eval's options are all paths whose defaults are described in words
            assert "[default:" in proc.stdout


def test_bare_sgpt_prints_the_overview_and_succeeds():
    proc = sgpt()
    assert proc.returncode == 0 and "Usage: sgpt" in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("columns", ["80", "60", "200"])
def test_help_gives_each_command_summary_whole(columns):
    """`sgpt --help` gives each command's summary whole, never cut mid-word ('tiny-shakespeare by...'),
    at any terminal width."""
    from sgpt_cli.term.app import SUMMARIES

    SUMMARY_WIDTH = 80 - 6 - len("complete")  # click: 80 columns less its indent and the longest name

    proc = subprocess.run([*SGPT, "--help"], capture_output=True, text=True, env=run_env(COLUMNS=columns),
                          stdin=subprocess.DEVNULL, timeout=120)
    commands = proc.stdout[proc.stdout.index("Commands:"):]
    assert "..." not in commands
    flat = " ".join(commands.split())
    for name, summary in SUMMARIES.items():
        assert f"{name} {summary}" in flat
        assert len(summary) <= SUMMARY_WIDTH  # one line at 80 columns
