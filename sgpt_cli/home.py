"""Where sgpt keeps its own files, and whether it runs from a source checkout.

`data_home()`: $SGPT_HOME, else the platform's data folder ($XDG_DATA_HOME/sgpt, else
~/.local/share/sgpt): the chat history, and the default training text outside a checkout.
`in_checkout(folder)`: the folder is the root of an sgpt source checkout (its README's relative
paths, `data/`, `models/`, `export/`, are meant from there).

What it does not do: create folders (their users do, when they write), import anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home(environ=os.environ) -> Path:
    """sgpt's own folder: $SGPT_HOME, else the XDG data folder ($XDG_DATA_HOME or ~/.local/share)."""
    if environ.get("SGPT_HOME"):
        return Path(environ["SGPT_HOME"]).expanduser()
    xdg = environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "sgpt"


def in_checkout(folder: Path | None = None) -> bool:
    """`folder` (the current one by default) is the root of an sgpt source checkout."""
    folder = Path.cwd() if folder is None else Path(folder)
    return (folder / "sgpt_cli" / "__init__.py").is_file() and (folder / "pyproject.toml").is_file()
