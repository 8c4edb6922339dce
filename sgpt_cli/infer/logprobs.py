"""What the model believed: each generated character's log probability and the likeliest others.

What it holds: `TokenLogprob` (one character given out, its log probability, the K likeliest
characters with theirs), `believed` (those numbers from one row of logits), and OpenAI's two
shapes of them: `chat_logprobs` (the chat API's `{"content": [{"token", "logprob", "bytes",
"top_logprobs"}]}`, also what `sgpt complete --json --logprobs K` writes) and `completion_logprobs`
(the legacy completions API's `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`).

Which distribution: the model's own, the softmax of its raw logits, before the repetition penalty,
temperature, top-k, top-p and min-p shape the draw; what OpenAI and vLLM report by default. So the
numbers do not change with the sampling settings, and a character drawn at temperature 1.5 may be
one the model gave 1% (that is the point of looking). A probability that is exactly 0 (a damaged
model's -inf or NaN logit) is written as LOGPROB_FLOOR, as OpenAI writes -9999.0: strict JSON has
no -Infinity.

What it does not do: sample, run a model, or draw (sgpt_cli.term.repl colours by these numbers).
numpy only; the engine calls `believed` only for a request that asked (SamplingParams.logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgpt_cli.infer.onnx_model import log_softmax
from sgpt_cli.infer.sampling import _finite

LOGPROB_FLOOR = -9999.0  # OpenAI's value for a token of probability 0


@dataclass(frozen=True)
class TokenLogprob:
    """One piece of generated text (one character: the model's token, as `CharTokenizer.shown`
    gives it, so never a raw control character) and what the model believed when it chose it."""
    token: str
    logprob: float  # natural log of its probability
    top: tuple[tuple[str, float], ...] = ()  # the K likeliest (token, logprob), likeliest first

    def cut(self, n: int) -> tuple["TokenLogprob", "TokenLogprob"]:
        """The first n characters and the rest, each with this choice's numbers (a stop string may
        end inside a piece of several characters; the tokenizer's pieces are single characters)."""
        return (TokenLogprob(self.token[:n], self.logprob, self.top),
                TokenLogprob(self.token[n:], self.logprob, self.top))


def believed(logits: np.ndarray, chosen: int, k: int, shown: list[str]) -> TokenLogprob:
    """Id `chosen` as given out, with its log probability under softmax(logits) (float64) and the
    k likeliest ids' (ties: the lower id first)."""
    lp = np.maximum(log_softmax(_finite(np.asarray(logits, dtype=np.float64).reshape(-1))), LOGPROB_FLOOR)
    top = ()
    if k:
        order = np.argsort(-lp, kind="stable")[:k]
        top = tuple((shown[i], float(lp[i])) for i in order.tolist())
    return TokenLogprob(shown[chosen], float(lp[chosen]), top)


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_entries(entries) -> list[dict]:
    """The chat API's `logprobs.content` list for `entries` (TokenLogprob, in order)."""
    return [{"token": e.token, "logprob": e.logprob, "bytes": _bytes(e.token),
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in e.top]}
            for e in entries]


def chat_logprobs(entries) -> dict:
    """`{"content": [...], "refusal": None}`: OpenAI's chat completion `choices[i].logprobs`."""
    return {"content": chat_entries(entries), "refusal": None}


def completion_logprobs(entries, offset: int = 0) -> dict:
    """OpenAI's legacy completions `choices[i].logprobs`; `text_offset` counts characters from the
    start of the choice's text (a stream's chunk passes the characters sent before it), as vLLM
    counts. Each `top_logprobs` dict holds the K likeliest and the chosen token (OpenAI: "up to
    logprobs + 1 elements")."""
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        tokens.append(e.token)
        lps.append(e.logprob)
        top = dict(e.top)
        top.setdefault(e.token, e.logprob)
        tops.append(top)
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
