"""Choosing the next character from a row of logits: temperature, top-k, top-p, min-p, repetition penalty.

What it holds: `sample_next_token`, a pure function for one choice (it validates its arguments), and
`Sampler`, the same rule with the arguments checked once and the penalised characters kept as a
count per id, which the decode loop calls once per character. numpy only.

What it does not do: run a model, hold a cache or decode text (sgpt_cli.infer.engine does).

The order of the steps is Hugging Face's: repetition penalty, then temperature, then the top-k mask,
then the top-p (nucleus) mask, then the min-p mask (Hugging Face's MinPLogitsWarper: a character
whose probability, after the steps before, is below min_p times the likeliest one's is dropped; the
likeliest always stays), then one draw. A draw is one `rng.random()` compared with the
cumulative probabilities, so a seeded generator gives exactly the same characters every time.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sgpt_cli.settings import SAMPLING, check_values


def validate_sampling(temperature: float, top_k: int | None, top_p: float | None,
                      repetition_penalty: float, min_p: float | None = None) -> None:
    """One-line UsageErrors for values outside the ranges declared in sgpt_cli.settings.SAMPLING."""
    check_values(SAMPLING, {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                            "repetition_penalty": repetition_penalty, "min_p": min_p})


def _finite(x: np.ndarray) -> np.ndarray:
    """Scores a draw can use, whatever a damaged model emits: NaN is never chosen, +inf is a
    certainty (the +inf ids share it), and a row with no usable score becomes uniform."""
    if np.isfinite(x).all():
        return x
    if np.isposinf(x).any():
        return np.where(np.isposinf(x), 0.0, -np.inf)
    x = np.where(np.isnan(x), -np.inf, x)
    return x if np.isfinite(x).any() else np.zeros_like(x)


def _choose(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int | None,
            top_p: float | None, repetition_penalty: float, penalised: np.ndarray | None,
            min_p: float | None = None) -> int:
    """The shared rule; arguments already validated. logits (V,), penalised: ids (any order)."""
    x = np.array(logits, dtype=np.float64).reshape(-1)  # a private float64 copy: (V,)
    if repetition_penalty != 1.0 and penalised is not None and penalised.size:
        v = x[penalised]
        # CTRL (Keskar et al. 2019) as Hugging Face applies it: a seen character's logit moves
        # towards "less likely" whatever its sign
        x[penalised] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
    x = _finite(x)
    if temperature == 0:
        return int(np.argmax(x))  # greedy: the first of equal maxima, no randomness used
    # shift before scaling: every score is then <= 0 and finite, and dividing by a temperature the
    # declaration allows (>= 0.001) cannot overflow float64 (|x| <= 2 * 3.4e38 for float32 logits)
    x = (x - x.max()) / temperature
    V = x.shape[0]
    if top_k is not None and top_k < V:
        keep = np.argpartition(-x, top_k - 1)[:top_k]  # exactly k ids, even with ties
        masked = np.full(V, -np.inf)
        masked[keep] = x[keep]
        x = masked
    p = np.exp(x - x.max())  # unnormalised (the best is 1); the draw scales by the total
    if top_p is not None and top_p < 1.0:
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # probability mass of the likelier characters
        # keep the smallest set of likeliest characters whose mass reaches top_p (at least one)
        drop = order[before >= top_p]
        p[drop] = 0.0
    if min_p:  # None or 0: off
        p[p < min_p * p.max()] = 0.0  # relative to the likeliest, which always stays
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]
    # first id whose cumulative mass exceeds u: its own probability is > 0
    return int(min(np.searchsorted(cdf, u, side="right"), V - 1))


def sample_next_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None,
                      repetition_penalty: float = 1.0, history: Sequence[int] = (),
                      min_p: float | None = None) -> int:
    """The id to emit after `logits` (V,). Temperature 0 is argmax (greedy; rng unused). Pure: the
    logits are not changed; only `rng` advances (one draw per call unless greedy)."""
    validate_sampling(temperature, top_k, top_p, repetition_penalty, min_p)
    penalised = np.unique(np.asarray(history, dtype=np.int64)) if len(history) else None
    return _choose(logits, rng, temperature, top_k, top_p, repetition_penalty, penalised, min_p)


class Sampler:
    """`sample_next_token` for a stream: arguments trusted (a SamplingParams is checked when made), the penalised history kept as a
    count per id (add on entering the context window, remove on leaving it), O(V) per call."""

    def __init__(self, vocab_size: int, rng: np.random.Generator, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 min_p: float | None = None):
        """Arguments as a SamplingParams holds them: already checked (from_params), not checked again."""
        self.rng = rng
        self.temperature, self.top_k, self.top_p, self.min_p = float(temperature), top_k, top_p, min_p
        self.repetition_penalty = float(repetition_penalty)
        self.counts = np.zeros(vocab_size, dtype=np.int64)  # (V,) occurrences in the history
        # temperature alone (no penalty, top-k, top-p or min-p): the decode loop's common case
        self.plain = self.repetition_penalty == 1.0 and top_k is None and top_p is None and not min_p

    @classmethod
    def from_params(cls, vocab_size: int, params) -> "Sampler":
        """The sampler of one request (a SamplingParams): its RNG seeded from params.seed, so a
        request draws the same characters wherever it runs (alone or in any batch)."""
        return cls(vocab_size, np.random.default_rng(params.seed), params.temperature, params.top_k,
                   params.top_p, params.repetition_penalty, params.min_p)

    def add(self, ids) -> None:
        """Count ids (one int, or many) into the history; nothing to keep when there is no penalty."""
        if self.repetition_penalty == 1.0:
            return
        if isinstance(ids, (int, np.integer)):
            self.counts[ids] += 1  # the per-character path: no ufunc.at machinery
        else:
            np.add.at(self.counts, np.asarray(ids, dtype=np.int64), 1)

    def remove(self, ids) -> None:
        if self.repetition_penalty == 1.0:
            return
        if isinstance(ids, (int, np.integer)):
            self.counts[ids] -= 1
        else:
            np.subtract.at(self.counts, np.asarray(ids, dtype=np.int64), 1)

    def __call__(self, logits: np.ndarray) -> int:
        if self.plain:
            return self._plain(logits)
        penalised = np.flatnonzero(self.counts) if self.repetition_penalty != 1.0 else None
        return _choose(logits, self.rng, self.temperature, self.top_k, self.top_p,
                       self.repetition_penalty, penalised, self.min_p)

    def _plain(self, logits: np.ndarray) -> int:
        """_choose's arithmetic for temperature alone, bit for bit, in fewer passes (~15 us, not ~27,
        per character). Scores with NaN or +inf take _choose's own path."""
        x = logits.astype(np.float64).reshape(-1)  # a private copy: (V,)
        best = float(x.max())  # NaN when any is NaN, inf when any is +inf
        if not math.isfinite(best):
            return _choose(logits, self.rng, self.temperature, None, None, 1.0, None, None)
        if self.temperature == 0:
            return int(np.argmax(x))
        x -= best  # the same shift and scale as _choose: the best becomes exactly 0, so its second
        x /= self.temperature  # shift (by the new maximum, 0) changes nothing and is left out
        np.exp(x, out=x)
        cdf = x.cumsum()
        u = self.rng.random() * cdf[-1]
        return min(int(cdf.searchsorted(u, side="right")), x.shape[0] - 1)
