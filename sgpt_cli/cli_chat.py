"""`sgpt chat`: flags only; the worker is imported inside the command. (placeholder: being written)"""

from __future__ import annotations

import typer


def chat() -> None:
    """(being written)"""
    raise typer.Exit(1)
