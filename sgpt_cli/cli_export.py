"""`sgpt export`: flags only; the worker is imported inside the command. (placeholder: being written)"""

from __future__ import annotations

import typer


def export_cmd() -> None:
    """(being written)"""
    raise typer.Exit(1)
