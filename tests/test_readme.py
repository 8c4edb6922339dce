"""The README is executable: its fast commands (complete, chat piped, eval, help) run, in the order
they are printed, as a user would paste them into a shell in a fresh clone, and do what the text
around them says. The model is the tiny one (through $SGPT_MODEL) except where a command names a
file; `sgpt eval`'s default text is the tests' own play, placed where the corpus would be."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_env

README = REPO / "README.md"
FAST = re.compile(r"(^|\|\s*)sgpt (complete|chat|eval)\b|^sgpt --help")


def readme_commands() -> list[str]:
    """Every line of the README's bash blocks that runs a fast sgpt command (not install, train or
    export, which the other tests cover, nor the interactive `sgpt chat`)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if FAST.search(line) and not line.startswith(("pip ", "torchrun "))
            and line.split("#")[0].strip() != "sgpt chat"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory, text_file):
    """A folder laid out as a fresh clone's root, with `sgpt` on the PATH running this checkout."""
    root = tmp_path_factory.mktemp("clone")
    for name in ("models", "DEVELOPERS.md", "README.md"):
        os.symlink(REPO / name, root / name)
    (root / "data").mkdir()
    shutil.copy(text_file, root / "data" / "tinyshakespeare.txt")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "sgpt").write_text(f'#!/bin/sh\nexec {sys.executable} -m sgpt_cli "$@"\n')
    (bin_dir / "sgpt").chmod(0o755)
    return root


def test_the_readme_shows_each_fast_command():
    commands = readme_commands()
    joined = "\n".join(commands)
    for needle in ("sgpt --help", "| sgpt chat", "sgpt complete", "| jq -r .text", "sgpt eval",
                   "--stop '\\n\\n'", "sgpt chat scene.txt", "--min-p"):
        assert needle in joined, needle
    assert "| jq .text" not in README.read_text(encoding="utf-8")  # -r: the text, not a JSON string


def test_the_readme_commands_run_in_order(clone, tiny_onnx):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    env = run_env(SGPT_MODEL=str(tiny_onnx), PATH=f"{clone / '.bin'}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for command in readme_commands():
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=clone, env=env,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "Traceback" not in proc.stderr and "error" not in proc.stderr, (command, proc.stderr)
        assert proc.stdout or "--stop" in command, command  # a stop may come before the first character
        outputs[command.split("#")[0].strip()] = proc.stdout
    scene = (clone / "scene.txt").read_text(encoding="utf-8")  # written by the piped chat
    assert scene.startswith("ROMEO:\n") and len(scene) > len("ROMEO:\n")
    jq = next(out for c, out in outputs.items() if "jq -r .text" in c)
    assert not jq.startswith('"') and "\\n" not in jq  # plain text, not an escaped JSON string
    stopped = next(out for c, out in outputs.items() if "--stop" in c and "sgpt complete" in c)
    assert "\n\n" not in stopped
    continued = next(out for c, out in outputs.items() if "sgpt chat scene.txt" in c)
    assert continued.startswith("ROMEO:\n") and ">>> \n" in continued  # the scene's tail, then Enter
    evaluated = next(out for c, out in outputs.items() if c == "sgpt eval")
    assert "loss" in evaluated and str(tiny_onnx) in evaluated  # the model in use: $SGPT_MODEL


def test_the_readme_names_no_flag_the_cli_lacks():
    """Every `--flag` the README's usage sections mention exists in some command's --help."""
    text = README.read_text(encoding="utf-8")
    usage = text[text.index("## Usage"):text.index("## Results")]
    helps = "".join(subprocess.run([sys.executable, "-m", "sgpt_cli", *c, "--help"], capture_output=True, text=True,
                                   env=run_env(), timeout=120).stdout
                    for c in ([], ["train"], ["export"], ["chat"], ["complete"], ["eval"], ["serve"]))
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", usage))
    missing = sorted(f for f in flags if f not in helps and f not in {"--nproc_per_node"})
    assert missing == []


def test_the_readme_sample_is_what_the_shipped_model_writes():
    """The README's sample is the output of the command printed above it, run with the
    shipped model. After re-exporting models/shakespeare.onnx, run `python scripts/readme_sample.py`
    and commit the new block with the model. (The shipped file is int8: ONNX Runtime's int8
    products differ slightly between CPUs' instruction sets, which may change a seeded sample.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_sample", REPO / "scripts" / "readme_sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    command, block, _ = sample.find_sample(README.read_text(encoding="utf-8"))
    assert command == "sgpt complete -n 300 --seed 7 -t 0.8 --echo 'ROMEO:'"
    assert sample.generate(command) == block, "run `python scripts/readme_sample.py` to refresh the README"


def serve_examples() -> tuple[list[str], list[str]]:
    """The `sgpt serve` section's curl lines and Python blocks, as printed."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### `sgpt serve`"):text.index("## Exit statuses")]
    bash = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    curls = [line.strip() for block in bash for line in block.splitlines() if line.strip().startswith("curl ")]
    return curls, re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


def test_the_readme_serve_examples_run_against_a_live_server(tiny_onnx, tmp_path):
    """The curl lines and the openai client example, pasted, against `sgpt serve` on the tiny model
    (named as the shipped one, so the examples' model id is right); only the port differs."""
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_serve import start

    curls, scripts = serve_examples()
    assert len(curls) >= 2 and len(scripts) == 1 and "from openai import OpenAI" in scripts[0]
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.skip("curl or jq is not installed")
    model = tmp_path / "shakespeare.onnx"
    shutil.copy(tiny_onnx, model)
    server = start(model)
    try:
        here = server.url.removeprefix("http://")
        for command in curls:
            assert "127.0.0.1:8000" in command
            proc = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8000", here)], capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0 and proc.stdout.strip(), (command, proc.stderr)
            if '"stream": true' in command:
                assert proc.stdout.rstrip().endswith("data: [DONE]")
        script = scripts[0].replace("127.0.0.1:8000", here)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env=run_env(), stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    finally:
        server.stop()
