"""`sgpt explain`'s numbers against PyTorch: the attention weights and the logit lens of the explain
graph (sgpt_cli.infer.explain) against the GPT they were exported from.

What it holds: `reference(model, ids)`, PyTorch's softmax(Q K^T / sqrt(d)) with the causal mask for
every layer and head (grouped heads read their key/value head) and the lens (final norm, head, cap)
on the residual before the first layer and after each; `verify_explain(model, path)`, which
sgpt_cli.train.onnx_export runs on every file it writes. What it does not do: run the GPT's own forward
(it follows the same modules step by step, to keep what forward throws away).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgpt_cli.errors import SgptError
from sgpt_cli.train.model import GPT, RMS_EPS, apply_rotary, rotary_tables

TOLERANCE = 1e-5  # float32 attention weights (each in [0, 1]) and row sums


@torch.no_grad()
def reference(model: GPT, ids: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ids (T,) at positions 0..T-1 -> attention per layer (n_head, T, T) and lens logits per
    residual (T, V), n_layer + 1 of them (before layer 0, after each layer)."""
    cfg = model.cfg
    T, nh, nkv, hd = len(ids), cfg.n_head, cfg.kv_heads, cfg.head_dim
    cos, sin = rotary_tables(torch.arange(T)[None], model.rope)
    x = model.wte(ids[None])

    def lens(x):
        logits = model.lm_head(model.ln_f(x))
        if cfg.logit_cap:
            logits = cfg.logit_cap * torch.tanh(logits / cfg.logit_cap)
        return logits[0].numpy()

    hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
    attention, lenses = [], [lens(x)]
    for block in model.blocks:
        a = block.attn
        qkv = a.qkv(block.ln1(x)).view(1, T, nh + 2 * nkv, hd).transpose(1, 2)
        qk, _ = qkv.split((nh + nkv, nkv), dim=1)
        if a.qk_norm:
            qk = F.rms_norm(qk, (hd,), eps=RMS_EPS)
        q, k = apply_rotary(qk, cos, sin).split((nh, nkv), dim=1)
        k = k.repeat_interleave(nh // nkv, dim=1)  # query head h reads key/value head h // (nh / nkv)
        scores = (q @ k.transpose(-2, -1)) / hd ** 0.5
        attention.append(scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)[0].numpy())
        x, _ = block(x, cos, sin)
        lenses.append(lens(x))
    return attention, lenses


def verify_explain(model: GPT, path: Path, lens_tolerance: float) -> dict:
    """The explain graph of the file at `path` against PyTorch on one random window of block_size:
    every head's weights within TOLERANCE, each row summing to 1, nothing on later positions, the
    lens of every layer within `lens_tolerance` (the logits' own), the last lens equal to the logits.
    Raises SgptError otherwise; returns the largest differences."""
    from sgpt_cli.infer.explain import ExplainModel
    from sgpt_cli.infer.onnx_model import OnnxModel

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (model.cfg.block_size,), generator=gen)
    logits, attention, lenses = ExplainModel(OnnxModel(path, device="cpu")).run(ids.numpy())
    want_attention, want_lenses = reference(model, ids)

    def check(diff: float, limit: float, what: str) -> float:
        if not diff <= limit:  # also NaN
            raise SgptError(f"verification failed: the explain graph's {what} differs by {diff:.2e} (limit "
                            f"{limit:.0e}); nothing was written. Try another onnxruntime version")
        return diff

    att = max(check(float(np.abs(got - want).max()), TOLERANCE, f"layer {i} attention")
              for i, (got, want) in enumerate(zip(attention, want_attention)))
    rows = max(check(float(np.abs(a.sum(-1) - 1).max()), TOLERANCE, f"layer {i} attention row sums")
               for i, a in enumerate(attention))
    later = max(check(float(np.abs(np.triu(a, 1)).max()), 0.0, f"layer {i} weight on later positions")
                for i, a in enumerate(attention))
    lens = max(check(float(np.abs(got - want).max()), lens_tolerance, f"lens after {j} layers")
               for j, (got, want) in enumerate(zip(lenses, want_lenses)))
    last = check(float(np.abs(lenses[-1] - logits).max()), 0.0, "last lens against the logits")
    return {"explain_attention_diff": att, "explain_row_sum_diff": rows, "explain_later_weight": later,
            "explain_lens_diff": lens, "explain_last_lens_diff": last}
