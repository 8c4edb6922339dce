"""The GPT: a decoder-only transformer in the nanoGPT family, with a key/value cache.

Pre-norm blocks (LayerNorm without bias), causal self-attention through
`F.scaled_dot_product_attention` (flash attention on CUDA), a GELU MLP, tied input/output
embeddings, and rotary positions (RoFormer) instead of a learned position table. Options of the
modded-nanogpt line (ModelConfig): QK-norm, a ReLU-squared MLP, a head of its own, capped logits.
Rotary positions are relative, so the runtime can keep a rolling window of cached keys past
`block_size` without recomputing it: `position_ids` are absolute and may grow beyond the trained window.

`forward(idx, past, position_ids, attention_mask)` returns logits for every position and the present
cache, which is exactly the ONNX interface (docs/onnx-interface.md), so export needs no wrapper logic.
Training calls it without a cache and takes the fast `is_causal` path.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgpt_cli.config import ModelConfig

# one (key, value) pair per layer, each (B, n_kv_head, T_past, hs)
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


RMS_EPS = 1e-6  # QK-norm's epsilon, the same in the ONNX graph
ROPE_STEP = 256  # positions = hi * ROPE_STEP + lo: two small cos/sin tables cover ROPE_POSITIONS
ROPE_POSITIONS = ROPE_STEP * ROPE_STEP  # 65536: the engine re-bases positions long before (engine.POSITION_LIMIT)


def rotary_angle_tables(head_dim: int, base: float) -> torch.Tensor:
    """(4, ROPE_STEP, hs/2): cos and sin of hi * ROPE_STEP * f and of lo * f, computed in float64."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    steps = torch.arange(ROPE_STEP, dtype=torch.float64)[:, None]
    hi, lo = steps * ROPE_STEP * inv_freq, steps * inv_freq  # (ROPE_STEP, hs/2) each
    return torch.stack((hi.cos(), hi.sin(), lo.cos(), lo.sin())).float()


def rotary_tables(position_ids: torch.Tensor, tables: torch.Tensor):
    """cos/sin for absolute positions: (B, T) -> two (B, 1, T, hs/2) tensors.

    Looked up and combined by the angle-sum rule (Gather, Mul, Add) rather than computed with
    Cos/Sin: ONNX Runtime's vectorised Cos/Sin give a value different last bits depending on its
    place in the tensor, so a row's logits would depend on the rows beside it in a batch. Gathers,
    products and sums are exact per element, which keeps batched rows bitwise equal to single runs
    (sgpt_cli.infer.engine). Positions must be below ROPE_POSITIONS."""
    hi, lo = position_ids // ROPE_STEP, position_ids % ROPE_STEP  # (B, T) each
    ch, sh, cl, sl = tables[0][hi], tables[1][hi], tables[2][lo], tables[3][lo]  # (B, T, hs/2) each
    cos = ch * cl - sh * sl  # cos(a + b)
    sin = sh * cl + ch * sl  # sin(a + b)
    return cos[:, None], sin[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels by the position's angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv = cfg.n_head, cfg.kv_heads
        self.head_dim = cfg.head_dim
        # features [q heads | k heads | v heads]; n_kv key/value heads, each shared by n_head / n_kv queries
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, past=None, attention_mask=None):
        B, T, C = x.shape
        nh, nkv = self.n_head, self.n_kv
        # one view gives all nh + 2 nkv heads at once, and queries and keys are rotated together (half
        # the nodes per layer in the exported graph, whose decode step is dominated by per-node cost)
        qkv = self.qkv(x).view(B, T, nh + 2 * nkv, self.head_dim).transpose(1, 2)  # (B, nh+2nkv, T, hs)
        qk, v = qkv.split((nh + nkv, nkv), dim=1)
        if self.qk_norm:
            qk = F.rms_norm(qk, (self.head_dim,), eps=RMS_EPS)  # every query and key head to unit RMS
        q, k = apply_rotary(qk, cos, sin).split((nh, nkv), dim=1)  # (B, nh, T, hs), (B, nkv, T, hs)
        if past is None:
            # training / plain forward: no cache, the fused causal kernel
            y = self._causal(q, k, v, dropout=self.dropout if self.training else 0.0, gqa=nkv != nh)
        else:
            k = torch.cat((past[0], k), dim=2)  # (B, nkv, P+T, hs)
            v = torch.cat((past[1], v), dim=2)
            # query j sits after all P cached keys: it sees keys 0 .. P+j
            P = k.shape[2] - T
            rows = torch.arange(T, device=x.device)[:, None] + P
            cols = torch.arange(k.shape[2], device=x.device)[None, :]
            hidden = cols > rows  # (T, P+T)
            if attention_mask is not None:
                # (B, P+T), 0 = padding: hidden from every query but its own position (a padding
                # query that saw nothing would give NaN, and NaN * 0 is NaN in the real rows' sums)
                pad = (attention_mask == 0)[:, None, None, :] & (cols != rows)  # (B, 1, T, P+T)
                hidden = hidden | pad
            # query head h reads key/value head h // (nh / nkv), as ONNX's Attention groups them
            ks, vs = (t.repeat_interleave(nh // nkv, dim=1) for t in (k, v))  # (B, nh, P+T, hs)
            att = (q * self.head_dim ** -0.5) @ ks.transpose(-2, -1)  # (B, nh, T, P+T)
            att = att.masked_fill(hidden, float("-inf"))
            y = att.softmax(dim=-1) @ vs  # (B, nh, T, hs)
        present = (k, v) if past is not None else None
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.resid_drop(self.proj(y)), present

    @staticmethod
    def _causal(q, k, v, dropout: float, gqa: bool):
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # in float32 under the CPU's bf16 autocast: its bf16 flash-attention backward is ~4x slower
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                      dropout_p=dropout, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=gqa)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x):
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.drop(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, past=None, attention_mask=None):
        a, present = self.attn(self.ln1(x), cos, sin, past, attention_mask)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, present


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tied_head:
            self.lm_head.weight = self.wte.weight  # tied: fewer parameters
        # derived from the config, not learned: not saved, so checkpoints stay as they were
        self.register_buffer("rope", rotary_angle_tables(cfg.head_dim, cfg.rope_base), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by depth so the residual stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if not cfg.tied_head:
            nn.init.zeros_(self.lm_head.weight)  # every character equally likely at the start (modded-nanogpt)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, past: KVCache | None = None, position_ids=None, attention_mask=None):
        """idx (B, T) -> logits (B, T, vocab), present cache (None when `past` is None).

        Without `position_ids`, token j sits at position P + j (P = cached length). attention_mask
        (B, P+T), 1 = real, 0 = padding (left padding of rows of different lengths), applies to the
        cached path only; None means every position is real.
        """
        B, T = idx.shape
        if position_ids is None:
            P = 0 if past is None else past[0][0].shape[2]
            position_ids = (torch.arange(T, device=idx.device) + P).unsqueeze(0).expand(B, T)
        cos, sin = rotary_tables(position_ids, self.rope)
        x = self.drop(self.wte(idx))  # (B, T, C)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, cos, sin, None if past is None else past[i], attention_mask)
            presents.append(present)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        if self.cfg.logit_cap:
            logits = self.cfg.logit_cap * torch.tanh(logits / self.cfg.logit_cap)
        return logits, (presents if past is not None else None)

    def loss(self, idx, targets):
        logits, _ = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def empty_cache(self, batch: int, device=None, dtype=torch.float32) -> KVCache:
        shape = (batch, self.cfg.kv_heads, 0, self.cfg.head_dim)
        return [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(self.cfg.n_layer)
        ]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Sample for progress reports during training (the product samples through ONNX Runtime)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :] / max(temperature, 1e-6)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
        return idx
