"""Stop strings: holding back generated text while it may still become one.

What it holds: `StopMatcher`. What it does not do: generate, or know about terminals.
"""

from __future__ import annotations


class StopMatcher:
    """Holds back generated text while it may still become a stop string. `push` returns the text
    that is certainly not part of a stop string, and whether a stop string was completed."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stops)
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        # keep the longest tail of the pending text that begins some stop string
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
