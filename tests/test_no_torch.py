"""The inference path never imports torch (DEVELOPERS.md), checked in fresh processes: `sgpt complete`
and `sgpt eval` run to the end, then the process lists what it imported. `sgpt complete` must also
start without Typer, rich or onnx (its fast path), and the chat modules must import without torch."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

from conftest import run_env

# Runs sgpt's real entry point with the given arguments, then reports on stderr which of the heavy
# modules were ever imported, whatever the command's exit status.
WRAPPER = """
import sys
sys.argv = ["sgpt"] + sys.argv[1:]
code = 0
try:
    from sgpt_cli.term.app import main
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("torch", "typer", "rich", "onnx", "prompt_toolkit")
sys.stderr.write("\\nIMPORTED: " + ",".join(m for m in heavy if m in sys.modules) + "\\n")
sys.exit(code)
"""

def imported_by(*args: str, stdin: bytes = b"", cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], input=stdin, capture_output=True,
                          env=run_env(), cwd=cwd, timeout=300)
    last = proc.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("IMPORTED:"), proc.stderr.decode()
    return proc, set(filter(None, last[len("IMPORTED:"):].strip().split(",")))


def test_complete_imports_neither_torch_nor_typer(tiny_onnx):
    proc, heavy = imported_by("complete", "--model", str(tiny_onnx), "-n", "20", "--seed", "1", stdin=b"ROMEO:")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.decode()) == 20
    assert heavy == set()  # no torch ever; no typer, rich or onnx on the fast path


def test_complete_help_goes_through_typer_without_torch():
    proc, heavy = imported_by("complete", "--help")
    assert proc.returncode == 0 and b"--max-tokens" in proc.stdout
    assert "typer" in heavy and "torch" not in heavy


def test_eval_never_imports_torch(tiny_onnx, text_file):
    proc, heavy = imported_by("eval", "--model", str(tiny_onnx), "--data", str(text_file), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b'"loss"' in proc.stdout
    assert "torch" not in heavy and "onnx" not in heavy


def test_every_module_of_the_inference_folder_imports_with_torch_blocked():
    """The boundary is a folder: every module under sgpt_cli/infer/ (found by walking it, not listed
    by hand), the shared modules beside it, the torch-free commands' own modules (complete, its
    batches, eval, serve's OpenAI shapes), and every command's flags (`sgpt --help` builds them)
    import in a process where importing torch, onnx or matplotlib fails."""
    code = ("import importlib, pkgutil, sys\n"
            "for blocked in ('torch', 'onnx', 'matplotlib'): sys.modules[blocked] = None  # import fails\n"
            "import sgpt_cli.infer as infer\n"
            "names = [m.name for m in pkgutil.walk_packages(infer.__path__, 'sgpt_cli.infer.')]\n"
            "names += ['sgpt_cli.config', 'sgpt_cli.settings', 'sgpt_cli.errors', 'sgpt_cli.files', 'sgpt_cli.data',\n"
            "          'sgpt_cli.home', 'sgpt_cli.term.complete', 'sgpt_cli.term.batch', 'sgpt_cli.term.eval',\n"
            "          'sgpt_cli.web.openai_api']\n"
            "for name in names: importlib.import_module(name)\n"
            "import sgpt_cli.term.app as app\n"
            "app.build_app()\n"
            "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'matplotlib') and sys.modules[m]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.split(" ", 1)
    assert int(count) >= 20 and loaded.strip() == "[]"


@pytest.mark.parametrize("args", [["complete", "--model", "missing.onnx"], ["eval", "--model", "missing.onnx"]])
def test_errors_import_no_torch_either(args, tmp_path):
    proc, heavy = imported_by(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert "torch" not in heavy


def test_a_chat_session_runs_to_the_end_without_torch(tiny_onnx, tmp_path):
    proc, heavy = imported_by("chat", "--model", str(tiny_onnx), "--no-history", "--seed", "1", "-n", "20",
                              stdin=b"ROMEO:\n/show\n/quit\n", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"ROMEO:" in proc.stdout
    assert "torch" not in heavy and "onnx" not in heavy


# Installed as sitecustomize in a child process: these modules cannot be imported, as in a runtime-only
# install (`pip install sgpt`, no `train` extra).
BLOCKER = """
import sys

class Blocker:
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker(NAMES))
"""


def without(tmp_path, *names: str) -> dict:
    """An environment whose Python cannot import `names` (sitecustomize on PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.replace("NAMES", repr(list(names))), encoding="utf-8")
    env = run_env()
    env["PYTHONPATH"] = str(site) + ":" + env["PYTHONPATH"]
    return env


@pytest.mark.parametrize("command, blocked", [
    (["train", "--preset", "tiny"], ["torch"]),
    (["train", "--preset", "tiny"], ["matplotlib"]),
    (["export", "model.pt"], ["torch"]),
    (["export", "model.pt"], ["onnx"]),
])
def test_train_and_export_without_the_train_extra_say_how_to_install_it(command, blocked, tmp_path):
    env = without(tmp_path, *blocked)
    proc = subprocess.run([sys.executable, "-m", "sgpt_cli", *command], capture_output=True, text=True, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"sgpt: error: sgpt {command[0]} needs {blocked[0]}, which is not installed")
    assert "pip install 'sgpt[train]'" in proc.stderr and "pip install -e '.[train]'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing written


def test_chat_complete_and_eval_run_without_torch_onnx_or_matplotlib_installed(tiny_onnx, text_file, tmp_path):
    env = without(tmp_path, "torch", "onnx", "onnxscript", "matplotlib")
    run = functools.partial(subprocess.run, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    complete = run([sys.executable, "-m", "sgpt_cli", "complete", "--model", str(tiny_onnx), "-n", "20", "ROMEO:"],
                   stdin=subprocess.DEVNULL)
    assert complete.returncode == 0 and len(complete.stdout) == 20, complete.stderr
    chat = run([sys.executable, "-m", "sgpt_cli", "chat", "--model", str(tiny_onnx), "-n", "20", "--no-history"],
               input="ROMEO:\n/show\n/quit\n")
    assert chat.returncode == 0 and ">>> ROMEO:" in chat.stdout, chat.stderr
    evaluated = run([sys.executable, "-m", "sgpt_cli", "eval", "--model", str(tiny_onnx), "--data", str(text_file),
                     "--json"], stdin=subprocess.DEVNULL)
    assert evaluated.returncode == 0 and '"loss"' in evaluated.stdout, evaluated.stderr
    engine = run([sys.executable, "-c", "from sgpt_cli.infer.onnx_build import put_row_graph; "
                  "print(len(put_row_graph(4)) > 0)"], stdin=subprocess.DEVNULL)
    assert engine.stdout.strip() == "True", engine.stderr  # DeviceCache's graph needs no onnx package
