"""The documents hold: docs/onnx-interface.md's example runs as printed, and every link and default
path in the repository resolves inside a clone (nothing points at ../shared or this machine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_env
from sgpt_cli.infer.onnx_model import OnnxModel

INTERFACE = REPO / "docs" / "onnx-interface.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".json"}


def code_blocks(path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


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


@pytest.mark.parametrize("doc", ["README.md", "DEVELOPERS.md", "docs/onnx-interface.md", "data/README.md",
                                 "export/README.md"])
def test_every_relative_link_resolves_inside_the_repository(doc):
    path = REPO / doc
    if not path.exists():
        pytest.skip(f"{doc} is not in this checkout")
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor in the same page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), (doc, target)
