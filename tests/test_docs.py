"""The documents hold: every command the README and docs/ show runs as printed or names only flags
its command has, docs/onnx-interface.md's example runs, and every link and default path in the
repository resolves inside a clone (nothing points at ../shared or this machine).

The fast commands (complete, chat piped, eval, help) of each page run in the order they are
printed, as a user would paste them into a shell in a fresh clone, and do what the text around them
says; the model is the tiny one (through $SGPT_MODEL) except where a command names a file, and
`sgpt eval`'s default text is the tests' own play, placed where the corpus would be. The serve
page's curl lines and openai example run against a live `sgpt serve`. Training and export commands
take minutes (the other tests train and export tiny models): their flags are checked against their
command's --help, and benchmark commands' flags against their script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_env
from sgpt_cli.infer.onnx_model import OnnxModel

INTERFACE = REPO / "docs" / "onnx-interface.md"
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".json"}
FAST = re.compile(r"(^|\|\s*)sgpt (complete|chat|eval|explain)\b|^sgpt --help")
COMMANDS = ("train", "export", "chat", "complete", "eval", "serve", "explain")
BENCH = re.compile(r"\b(bench_\w+)\.py([^`|\n]*)")  # a benchmark script and what follows it on its line


def code_blocks(path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


def shell_lines(path) -> list[str]:
    """The commands of a document's bash blocks, a line continued by `\\` joined to the next."""
    lines = []
    for block in code_blocks(path, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def fast_commands(path) -> list[str]:
    """Every line of a document's bash blocks that runs a fast sgpt command (not install, train or
    export, which take minutes, nor the interactive `sgpt chat`)."""
    return [line for line in shell_lines(path) if FAST.search(line) and not line.startswith(("pip ", "torchrun "))
            and line.split("#")[0].strip() != "sgpt chat"]


def make_clone(root: Path, text_file: Path) -> Path:
    """`root` laid out as a fresh clone's root, with `sgpt` on its .bin running this checkout."""
    for name in ("models", "DEVELOPERS.md", "README.md"):
        os.symlink(REPO / name, root / name)
    (root / "data").mkdir()
    shutil.copy(text_file, root / "data" / "tinyshakespeare.txt")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "sgpt").write_text(f'#!/bin/sh\nexec {sys.executable} -m sgpt_cli "$@"\n')
    (bin_dir / "sgpt").chmod(0o755)
    return root


def run_in_clone(commands: list[str], clone: Path, model: Path) -> dict[str, str]:
    """Run the commands in order in `clone` as a shell would; each must succeed without an error
    line. Returns each command (its comment cut) with its stdout."""
    if shutil.which("jq") is None and any("jq " in c for c in commands):
        pytest.skip("jq is not installed")
    env = run_env(SGPT_MODEL=str(model), PATH=f"{clone / '.bin'}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=clone, env=env,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "Traceback" not in proc.stderr and "error" not in proc.stderr, (command, proc.stderr)
        assert proc.stdout or "--stop" in command, command  # a stop may come before the first character
        outputs[command.split("#")[0].strip()] = proc.stdout
    return outputs


def serve_examples(path) -> tuple[list[str], list[str]]:
    """A document's curl lines and Python blocks, as printed."""
    curls = [line for line in shell_lines(path) if line.startswith("curl ")]
    return curls, code_blocks(path, "python")


def run_against_a_live_server(curls: list[str], scripts: list[str], model: Path, tmp_path: Path) -> None:
    """The curl lines and Python scripts, pasted, against `sgpt serve` on `model` (copied under the
    shipped model's name, so the examples' model id is right); only the port differs."""
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_serve import start

    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.skip("curl or jq is not installed")
    served = tmp_path / "shakespeare.onnx"
    shutil.copy(model, served)
    server = start(served)
    try:
        here = server.url.removeprefix("http://")
        for command in curls:
            assert "127.0.0.1:8000" in command
            proc = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8000", here)], capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0 and proc.stdout.strip(), (command, proc.stderr)
            if '"stream": true' in command:
                assert proc.stdout.rstrip().endswith("data: [DONE]")
        for script in scripts:
            proc = subprocess.run([sys.executable, "-c", script.replace("127.0.0.1:8000", here)], capture_output=True,
                                  text=True, timeout=120, env=run_env(), stdin=subprocess.DEVNULL)
            assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    finally:
        server.stop()


def help_text(*command: str) -> str:
    return subprocess.run([sys.executable, "-m", "sgpt_cli", *command, "--help"], capture_output=True, text=True,
                          env=run_env(), timeout=120).stdout


def flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text))


def run_example(code: str, cwd) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), cwd=cwd,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_interface_example_runs_on_the_shipped_model_as_printed():
    [example] = code_blocks(INTERFACE, "python")
    assert len(example.strip().splitlines()) <= 30  # short enough to read at a glance
    text = run_example(example, cwd=REPO)[:-1]  # print's line break
    meta = OnnxModel(REPO / "models" / "shakespeare.onnx", device="cpu").meta
    assert len(text) == 400 and set(text) <= set(json.loads(meta["sgpt.vocab"]))  # past the 256-wide window


def test_the_interface_example_runs_on_the_tiny_model(tiny_onnx, tmp_path):
    """Another model, another shape (2 layers, 32 wide, window 32): the example reads all it needs
    from the metadata. 100 characters roll its window three times."""
    [example] = code_blocks(INTERFACE, "python")
    code = example.replace('"models/shakespeare.onnx"', repr(str(tiny_onnx))).replace("range(400)", "range(100)")
    assert code != example
    text = run_example(code, cwd=tmp_path)[:-1]
    assert len(text) == 100


def checked_chat(out: dict[str, str], clone: Path) -> None:
    scene = (clone / "scene.txt").read_text(encoding="utf-8")  # written by the piped chat
    assert scene.startswith("ROMEO:\n") and len(scene) > len("ROMEO:\n")
    continued = next(o for c, o in out.items() if "sgpt chat scene.txt" in c)
    # the scene's tail, then the play goes on; a pipe shows the scene's open last line once (Enter goes on on it)
    last = scene.rsplit("\n", 1)[-1]
    assert continued.startswith("ROMEO:\n") and (not last or continued.count(last) == 1)


def checked_complete(out: dict[str, str], clone: Path) -> None:
    jq = next(o for c, o in out.items() if "jq -r .text" in c)
    assert not jq.startswith('"') and "\\n" not in jq  # plain text, not an escaped JSON string
    stopped = next(o for c, o in out.items() if "--stop" in c and "sgpt complete" in c)
    assert "\n\n" not in stopped
    rows = [json.loads(line) for line in next(o for c, o in out.items() if "--batch" in c).splitlines()]
    assert [r["id"] for r in rows] == ["r", 2]  # in input order; a plain line's id is its line number


def checked_eval(out: dict[str, str], clone: Path, model: Path) -> None:
    evaluated = out["sgpt eval"]
    assert "loss" in evaluated and str(model) in evaluated  # the model in use: $SGPT_MODEL


PAGE_CHECKS = {"chat.md": checked_chat, "complete.md": checked_complete}


@pytest.mark.parametrize("page", [p.name for p in PAGES if fast_commands(p)])
def test_each_page_s_commands_run_in_order_in_a_fresh_clone(page, tmp_path, text_file, tiny_onnx):
    clone = make_clone(tmp_path, text_file)
    out = run_in_clone(fast_commands(REPO / "docs" / page), clone, tiny_onnx)
    if page == "eval.md":
        checked_eval(out, clone, tiny_onnx)
    elif page in PAGE_CHECKS:
        PAGE_CHECKS[page](out, clone)


def test_the_pages_with_fast_commands_are_the_ones_that_show_them():
    """The pages run above are chat, complete and eval (a page that loses its commands fails here,
    not silently)."""
    assert {p.name for p in PAGES if fast_commands(p)} >= {"chat.md", "complete.md", "eval.md"}


def test_the_serve_page_s_examples_run_against_a_live_server(tiny_onnx, tmp_path):
    curls, scripts = serve_examples(REPO / "docs" / "serve.md")
    assert len(curls) >= 2 and len(scripts) == 1 and "from openai import OpenAI" in scripts[0]
    run_against_a_live_server(curls, scripts, tiny_onnx, tmp_path)


def test_no_document_names_a_flag_the_cli_lacks():
    """Every `--flag` the README and docs/ mention exists in some command's --help; a benchmark's
    flags (after its script's name) exist in that script; pip's and torchrun's are theirs."""
    helps = help_text() + "".join(help_text(c) for c in COMMANDS)
    missing = []
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        for script, rest in BENCH.findall(text):
            source = (REPO / "benchmarks" / f"{script}.py").read_text(encoding="utf-8")
            missing += [(doc.name, script, f) for f in flags(rest) if f'"{f}"' not in source]
        text = re.sub(r"\bpip [a-z]+[^`\n]*", "", BENCH.sub("", text))
        missing += [(doc.name, f) for f in flags(text) if f not in helps and f not in {"--nproc_per_node"}]
    assert sorted(missing) == []


def test_training_and_export_commands_name_only_their_own_flags():
    """The `sgpt train` and `sgpt export` lines the documents show (not run: they take minutes) use
    only flags their own command has."""
    helps = {c: help_text(c) for c in ("train", "export")}
    seen, missing = set(), []
    for doc in DOCUMENTS:
        for line in shell_lines(doc):
            for part in re.split(r"&&|;", line.split(" #")[0]):
                found = re.search(r"\b(?:sgpt|-m sgpt_cli) (train|export)\b(.*)", part)
                if found:
                    seen.add(found.group(1))
                    missing += [(doc.name, part.strip(), f) for f in flags(found.group(2))
                                if f not in helps[found.group(1)]]
    assert seen == {"train", "export"} and missing == []


def tracked_text_files():
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO).stdout.split()
    if not files:  # not a git checkout (an sdist): every file under the repository
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [REPO / f for f in files if (REPO / f).suffix in TEXT_SUFFIXES and (REPO / f).is_file()]


def test_no_file_points_outside_the_repository():
    """The package, the tests, the documents a user reads and the packaging name no path beside the
    checkout (benchmarks may fall back to ../shared after data/, and DEVELOPERS.md and .ci/run say
    why it must not be reachable)."""
    outside = re.compile(r"\.\./shared|parent / \"shared\"|/work/(?:shared|main|wt)\b")
    checked = [p for p in tracked_text_files() if p.name != "test_docs.py"
               and (p.relative_to(REPO).parts[0] in ("sgpt_cli", "tests", "docs") or p.name in ("README.md", "pyproject.toml"))]
    assert len(checked) > 20
    offenders = [str(p.relative_to(REPO)) for p in checked if outside.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


@pytest.mark.parametrize("doc", ["README.md", "DEVELOPERS.md", "data/README.md", "export/README.md",
                                 "benchmarks/LOG.md", *(f"docs/{p.name}" for p in PAGES)])
def test_every_relative_link_resolves_inside_the_repository(doc):
    path = REPO / doc
    if not path.exists():
        pytest.skip(f"{doc} is not in this checkout")
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        name, _, anchor = target.partition("#")
        resolved = (path.parent / name).resolve() if name else path
        assert resolved.is_relative_to(REPO) and resolved.exists(), (doc, target)
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), (doc, target)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
