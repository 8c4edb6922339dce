"""`sgpt eval`: flags only; the worker is imported inside the command. (placeholder: being written)"""

from __future__ import annotations

import typer


def eval_cmd() -> None:
    """(being written)"""
    raise typer.Exit(1)
