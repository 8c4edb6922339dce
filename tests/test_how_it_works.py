"""docs/how-it-works.md holds: every command in it runs as printed (bash, from an empty folder, the
shipped model) and prints what the page shows, digits aside (ONNX Runtime's int8 kernels differ
between CPUs in the last bits, which can move a printed percentage; seeded samples are compared
whole, as tests/test_readme.py compares the README's). After a new model ships, `python scripts/how_it_works.py`
rewrites the page's outputs and its picture."""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("how_it_works", REPO / "scripts" / "how_it_works.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = load_script()
COMMANDS = [c for block, _ in SCRIPT.blocks(SCRIPT.PAGE.read_text(encoding="utf-8")) for c in SCRIPT.commands(block)]


def test_the_page_shows_its_picture_and_runs_sgpt_explain():
    assert (REPO / "docs" / "how-it-works.png").read_bytes()[:4] == b"\x89PNG"
    assert "](how-it-works.png)" in SCRIPT.PAGE.read_text(encoding="utf-8")
    assert sum("sgpt explain" in c for c, _ in COMMANDS) >= 2


@pytest.mark.parametrize("command, printed", COMMANDS, ids=[f"command-{i}" for i in range(len(COMMANDS))])
def test_every_command_of_the_page_prints_what_it_shows(command, printed):
    now = SCRIPT.run(command)
    if "sgpt explain" in command:
        assert re.sub(r"\d", "#", now) == re.sub(r"\d", "#", printed), "run `python scripts/how_it_works.py`"
    else:  # a seeded sample, exactly (as tests/test_readme.py checks the README's)
        assert now == printed, "run `python scripts/how_it_works.py`"


def test_every_relative_link_of_the_page_resolves():
    page = SCRIPT.PAGE.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", page):
        path, _, anchor = target.partition("#")
        resolved = (SCRIPT.PAGE.parent / path).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.*)$", resolved.read_text(encoding="utf-8"), re.M)
            assert anchor in [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings], target
