"""The README is executable: its fast commands (complete, eval, help) run, in the order they are
printed, as a user would paste them into a shell in a fresh clone; its serve example runs against a
live server; its sample is what the shipped model writes. The machinery, and the same checks for
the pages in docs/, are in tests/test_docs.py."""

from __future__ import annotations

import re

import pytest

from conftest import REPO
from test_docs import (DOCUMENTS, fast_commands, make_clone, run_against_a_live_server, run_in_clone,
                       serve_examples)

README = REPO / "README.md"


def test_the_documents_show_each_fast_command():
    """The README and docs/ together show each kind of fast command the doc tests run."""
    joined = "\n".join(command for doc in DOCUMENTS for command in fast_commands(doc))
    for needle in ("sgpt --help", "| sgpt chat", "sgpt complete", "| jq -r .text", "sgpt eval",
                   "--stop '\\n\\n'", "sgpt chat scene.txt", "--min-p", "--batch -", "--num-samples"):
        assert needle in joined, needle
    for doc in DOCUMENTS:
        assert "| jq .text" not in doc.read_text(encoding="utf-8"), doc  # -r: the text, not a JSON string


def test_the_readme_s_quick_start_is_two_commands():
    """One installs and opens the REPL on the shipped model; one installs what the tests need and
    runs them (the line .ci/run runs)."""
    text = README.read_text(encoding="utf-8")
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    [block] = re.findall(r"^```bash\n(.*?)^```", quick, re.S | re.M)
    assert [line.split("#")[0].strip() for line in block.splitlines()] == [
        "pip install -e . && sgpt chat", "pip install -e '.[test]' && pytest -q"]


def test_the_readme_commands_run_in_order(tmp_path, text_file, tiny_onnx):
    commands = fast_commands(README)
    assert any(c.startswith("sgpt --help") for c in commands) and "sgpt eval" in [c.split("#")[0].strip()
                                                                                    for c in commands]
    out = run_in_clone(commands, make_clone(tmp_path, text_file), tiny_onnx)
    assert "loss" in out["sgpt eval"] and str(tiny_onnx) in out["sgpt eval"]  # the model in use: $SGPT_MODEL
    assert all(command in out["sgpt --help"] for command in ("chat", "complete", "serve", "train", "export", "eval"))


def test_the_readme_sample_is_what_the_shipped_model_writes():
    """The README's sample is the output of the command printed above it, run with the shipped
    model. After re-exporting models/shakespeare.onnx, run `python scripts/readme_sample.py` and
    commit the new block with the model. The shipped file is int8, whose products differ between
    CPUs with and without VNNI: on a CPU of the other class the command still runs and writes the
    sample's length from the same prompt, and the exact text is compared only where it can hold."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_sample", REPO / "scripts" / "readme_sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    command, block, _ = sample.find_sample(README.read_text(encoding="utf-8"))
    assert command == "sgpt complete -n 300 --seed 7 -t 0.8 --echo 'ROMEO:'"
    fresh = sample.generate(command)
    if sample.int8_kernel() != sample.SAMPLE_KERNEL:
        assert fresh.startswith("ROMEO:\n") and len(fresh) > 250
        pytest.skip(f"the exact sample holds on {sample.SAMPLE_KERNEL} CPUs; this one is {sample.int8_kernel()}")
    assert fresh == block, "run `python scripts/readme_sample.py` to refresh the README"


def test_the_readme_serve_example_runs_against_a_live_server(tiny_onnx, tmp_path):
    """The tour's curl line, pasted, against `sgpt serve` on the tiny model; only the port differs."""
    curls, scripts = serve_examples(README)
    assert len(curls) >= 1 and scripts == []
    run_against_a_live_server(curls, scripts, tiny_onnx, tmp_path)


@pytest.mark.parametrize("link", ["docs/chat.md", "docs/complete.md", "docs/serve.md", "docs/training.md",
                                  "docs/export.md", "docs/eval.md", "docs/reliability.md", "docs/benchmarks.md",
                                  "docs/onnx-interface.md", "docs/how-it-works.md", "benchmarks/LOG.md"])
def test_the_readme_links_each_guide(link):
    assert f"]({link})" in README.read_text(encoding="utf-8")


def test_the_readme_is_a_guide_of_at_most_250_lines():
    """Detail goes to docs/, measurements to benchmarks/LOG.md."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
