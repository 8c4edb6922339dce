"""How a long job and whoever stops it cooperate: polled stop requests, and regions a request may
cut short or must wait for.

What it holds: `Stop`. The trainer marks its work with `abortable()` (results that may be thrown
away) and `critical()` (writes that must finish); the CLI's signal handler (train_view.StopRequest)
reads `mode` to decide between raising KeyboardInterrupt at once and letting the work finish.

What it does not do: install signal handlers, or import torch (the CLI uses it before torch loads).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class Stop:
    """How the loop and whoever stops it cooperate. `requested` is polled between steps. Work inside
    `abortable()` may be cut short by a stop request (its results are thrown away: an estimate, a
    sample, or a step's forward and backward, which change no weights), and does not start once one
    is requested; work inside `critical()` (writing the
    checkpoints, the optimizer's update) never is. The CLI's signal handler subclasses this; a
    plain callable given as `should_stop` is wrapped in it."""

    def __init__(self, poll: Callable[[], bool] = lambda: False):
        self.poll = poll
        self.requested = False
        self.mode = "between"  # "abortable", "critical" or "between"

    def __call__(self) -> bool:
        self.requested = self.requested or bool(self.poll())
        return self.requested

    @contextlib.contextmanager
    def _in(self, mode: str) -> Iterator[None]:
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    def abortable(self):
        """A region a stop request cuts short; one already requested cuts it before it starts (a
        signal that came between steps does not wait for a whole step, or estimate, to pass)."""
        if self.requested:
            raise KeyboardInterrupt
        return self._in("abortable")

    def critical(self):
        return self._in("critical")


__all__ = ["Stop"]
