"""The folders are layers (DEVELOPERS.md): every module under sgpt_cli/infer/ (the engine and what it
reads) imports nothing from the commands' folders above it (term, web, train); the HTTP edge (web)
and the training side (train) import nothing of the terminal (term) nor of each other; the shared
modules beside the folders (settings, config, errors, files, data, home) import none of them. Found
by walking every import statement of every module, those inside functions too, so a lazy import
cannot cross a boundary unseen. (`python -m sgpt_cli`, __main__.py, is the entry point: it starts
the terminal.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sgpt_cli

PACKAGE = Path(sgpt_cli.__file__).parent

# folder -> the folders of sgpt_cli it must never import
FORBIDDEN = {
    "infer": ("term", "web", "train"),
    "web": ("term", "train"),
    "train": ("term", "web"),
    "": ("infer", "term", "web", "train"),  # the shared modules
}


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (relative imports resolved);
    `root` is the folder of the package sgpt_cli."""
    package = ".".join(("sgpt_cli",) + path.relative_to(root).parent.parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def crossings(folder: str) -> list[str]:
    above = tuple(f"sgpt_cli.{name}" for name in FORBIDDEN[folder])
    found = []
    paths = (PACKAGE / folder).rglob("*.py") if folder else PACKAGE.glob("*.py")
    for path in sorted(p for p in paths if p.name != "__main__.py"):
        for module in sorted(imported_modules(path)):
            if module in above or module.startswith(tuple(a + "." for a in above)):
                found.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN), ids=lambda folder: folder or "shared")
def test_no_module_imports_a_layer_above_its_folder(folder):
    assert list((PACKAGE / folder).glob("*.py")), f"no modules found under sgpt_cli/{folder}"
    assert crossings(folder) == []


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The check itself: imports written inside a function, and relative ones, are found."""
    fake = tmp_path / "infer" / "probe.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from sgpt_cli.term.common import err\n    import sgpt_cli.web.server\n"
                    "    from ..train import trainer\n")
    assert {"sgpt_cli.term.common", "sgpt_cli.web.server", "sgpt_cli.train.trainer"} <= imported_modules(fake, tmp_path)
