"""The rich Console every sgpt command draws with.

What it holds: `Console`, rich's console except that a closed pipe (`sgpt chat | head`, `sgpt train
| head`) raises BrokenPipeError, which sgpt_cli.term.common turns into the quiet exit every command
gives, instead of rich's own SystemExit(1). What it does not do: decide on colour (callers do, with
cli_common.use_color). Imported only by modules that draw with rich.
"""

from __future__ import annotations

from rich.console import Console as _RichConsole


class Console(_RichConsole):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError
