"""The format-2 decoder graph, written node by node from a GPT's weights (docs/onnx-interface.md).

What it holds: `build(weights, cfg, int8)`, an onnx.ModelProto in the standard ONNX domain only
(opset 24): one graph for a prefill (many characters from an empty row) and for one-character steps,
over a cache per layer, `[batch, slots, n_kv_head * head_dim]`, that the caller updates in place. Position `p` of
a row lives in slot `p mod slots`; `TensorScatter` (mode "circular") writes the fed keys and values
there, and the attention mask comes from `position_ids` alone: for a query at `p`, slot `s` holds
position `p - ((p - s) mod slots)`, valid when that is >= 0. With `slots` = block_size a row sees its
last block_size positions (the window rolls by itself); with fewer slots than that, while every
position fed is below `slots`, attention reads only those slots (what sgpt's engine does until a
row's window is full: less of the cache read per step). Rows of any lengths and positions share a
batch without padding.

Attention runs with scale 1: the queries' weights are scaled by head_dim^-0.5 instead, which lets
ONNX Runtime take its one-row matrix-vector kernel for q.k (an alpha other than 1 makes it pack the
keys first: measured 13% of a 16-row step's attention).

Why by hand and not torch.onnx: the exporter writes ~250 nodes for this model (a decode step costs
2-3 us per node at batch 1) and cannot spell an in-place cache update; here a layer is ~20 nodes.
int8: weights as int8 with one float32 scale per output column, `DequantizeLinear` + `MatMul`
(ONNX Runtime fuses the pair into its MatMulNBits kernel when it loads the file), the embedding kept
in float32 (65 x n_embd: small).

What it does not do: verify (sgpt_cli.train.onnx_export does, against PyTorch) or run the model: weights come in
as numpy arrays keyed by the GPT's state-dict names.
"""

from __future__ import annotations

import numpy as np

from sgpt_cli.infer.interface import INPUT_IDS, LOGITS, POSITION_IDS, SLOTS, past_names, present_names
from sgpt_cli.train.model import RMS_EPS, ROPE_STEP, rotary_angle_tables  # positions = hi * ROPE_STEP + lo

OPSET = 24  # TensorScatter (opset 24); Gelu (20), LayerNormalization (17)
IR_VERSION = 10  # what onnx 1.17+ writes for opset 23/24 models; ONNX Runtime >= 1.25 loads it


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float32 -> (int8 (K, N), scale (N,)): symmetric, one scale per output column, in [-127, 127]."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


class _Graph:
    """Nodes, initializers and fresh names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.require(array, requirements="C"), name))  # (0-d stays 0-d)
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, out: list[str] | None = None, **attrs):
        from onnx import helper

        self.n += 1
        outs = out or [f"{op_type.lower()}_{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.n}", **attrs))
        return outs[0] if n_out == 1 else outs


def _linear(g: _Graph, x: str, name: str, weight: np.ndarray, int8: bool, out: str | None = None) -> str:
    """x @ weight.T for a torch Linear weight (out, in): float32, or int8 through DequantizeLinear."""
    w = np.ascontiguousarray(weight.T.astype(np.float32))  # (in, out)
    if not int8:
        return g.op("MatMul", [x, g.const(name, w)], out=out and [out])
    q, scale = quantize_columns(w)
    deq = g.op("DequantizeLinear", [g.const(name + ".int8", q), g.const(name + ".scale", scale)], axis=1)
    return g.op("MatMul", [x, deq], out=out and [out])


def build(weights: dict[str, np.ndarray], cfg, int8: bool = False):
    """The decoder as an onnx.ModelProto (no metadata: sgpt_cli.train.onnx_export adds it). cfg: ModelConfig.
    A layer is 15 nodes: LayerNormalization, MatMul (q|k|v), Split, RotaryEmbedding (queries and keys
    together), Split, 2 x TensorScatter, Attention, MatMul, Add, LayerNormalization, MatMul, Gelu,
    MatMul, Add (+ a DequantizeLinear per weight in int8, which ONNX Runtime folds into its matmul)."""
    from onnx import TensorProto, helper

    g = _Graph()
    C, nh, nkv, hd, V = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.vocab_size
    K = cfg.kv_width  # features of one layer's keys (or values) per position
    i64 = lambda name, values: g.const(name, np.array(values, dtype=np.int64))  # noqa: E731
    x = g.op("Gather", [g.const("wte", weights["wte.weight"].astype(np.float32)), INPUT_IDS])  # (B, T, C)

    # rotary cos/sin per fed position, looked up and combined by the angle-sum rule (exact per element:
    # vectorised Cos/Sin would give a position different last bits depending on its neighbours)
    tables = rotary_angle_tables(hd, cfg.rope_base).numpy()  # the GPT's own tables, bit for bit
    step = i64("rope_step", ROPE_STEP)
    hi, lo = g.op("Div", [POSITION_IDS, step]), g.op("Mod", [POSITION_IDS, step])  # (B, T) each
    ch, sh = (g.op("Gather", [g.const(n, tables[k]), hi]) for k, n in ((0, "rope_cos_hi"), (1, "rope_sin_hi")))
    cl, sl = (g.op("Gather", [g.const(n, tables[k]), lo]) for k, n in ((2, "rope_cos_lo"), (3, "rope_sin_lo")))
    cos = g.op("Sub", [g.op("Mul", [ch, cl]), g.op("Mul", [sh, sl])])  # (B, T, hs/2): cos(a + b)
    sin = g.op("Add", [g.op("Mul", [sh, cl]), g.op("Mul", [ch, sl])])  # sin(a + b)

    # the ring: row b's fed characters go to slots (position_ids[b, 0] + j) mod S (S = the cache's
    # slots, as bound); the mask (B, 1, T, S) lets a query at p see slot s when the position s holds,
    # p - ((p - s) mod S), is >= 0
    first = g.op("Gather", [POSITION_IDS, i64("zero", 0)], axis=1)  # (B,)
    p3 = g.op("Unsqueeze", [POSITION_IDS, i64("axis2", [2])])  # (B, T, 1)
    pasts, presents = past_names(cfg.n_layer), present_names(cfg.n_layer)
    S = g.op("Squeeze", [g.op("Shape", [pasts[0]], start=1, end=2)])  # ()
    slots = g.op("Range", [i64("zero_scalar", 0), S, i64("one_scalar", 1)])  # (S,)
    back = g.op("Mod", [g.op("Sub", [p3, slots]), S])  # (B, T, S)
    mask = g.op("Unsqueeze", [g.op("LessOrEqual", [back, p3]), i64("axis1", [1])])  # (B, 1, T, S) bool
    split_qkv, split_qk = i64("split_qkv", [C + K, K]), i64("split_qk", [C, K])
    if cfg.qk_norm:
        heads_shape, flat_shape = i64("qk_heads", [0, 0, nh + nkv, hd]), i64("qk_flat", [0, 0, C + K])
        # the attention scale hd^-0.5, shared by queries and keys as hd^-0.25 each (the weights' fold
        # below would be undone by the norm)
        unit = g.const("qk_norm_scale", np.full(hd, hd ** -0.25, dtype=np.float32))

    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = g.op("LayerNormalization", [x, g.const(p + "ln1", weights[p + "ln1.weight"])], epsilon=1e-5, axis=-1)
        qkv = weights[p + "attn.qkv.weight"].astype(np.float32)  # (C + 2K, C): rows [q heads | k | v]
        if not cfg.qk_norm:
            qkv = np.concatenate([qkv[:C] * np.float32(hd ** -0.5), qkv[C:]])  # the attention scale, in the queries
        qkv = _linear(g, h, p + "qkv", qkv, int8)  # (B, T, C + 2K)
        qk, v = g.op("Split", [qkv, split_qkv], n_out=2, axis=-1)  # (B, T, C + K), (B, T, K)
        if cfg.qk_norm:  # each query and key head to unit RMS, as F.rms_norm over the head's channels
            heads = g.op("Reshape", [qk, heads_shape])  # (B, T, nh + nkv, hs)
            normed = g.op("RMSNormalization", [heads, unit], axis=-1, epsilon=RMS_EPS)
            qk = g.op("Reshape", [normed, flat_shape])  # (B, T, C + K)
        qk = g.op("RotaryEmbedding", [qk, cos, sin], num_heads=nh + nkv)  # halves rotated, as apply_rotary
        q, k = g.op("Split", [qk, split_qk], n_out=2, axis=-1)  # (B, T, C), (B, T, K)
        keys = g.op("TensorScatter", [pasts[2 * i], k, first], out=[presents[2 * i]], axis=1, mode="circular")
        vals = g.op("TensorScatter", [pasts[2 * i + 1], v, first], out=[presents[2 * i + 1]], axis=1, mode="circular")
        # query head h reads key/value head h // (nh / nkv) (grouped-query attention; the GPT's grouping)
        y = g.op("Attention", [q, keys, vals, mask], q_num_heads=nh, kv_num_heads=nkv, scale=1.0)  # (B, T, C)
        x = g.op("Add", [x, _linear(g, y, p + "proj", weights[p + "attn.proj.weight"], int8)])
        h = g.op("LayerNormalization", [x, g.const(p + "ln2", weights[p + "ln2.weight"])], epsilon=1e-5, axis=-1)
        f = _linear(g, h, p + "fc", weights[p + "mlp.fc.weight"], int8)
        if cfg.mlp == "relu2":
            f = g.op("Relu", [f])
            f = g.op("Mul", [f, f])
        else:
            f = g.op("Gelu", [f])
        x = g.op("Add", [x, _linear(g, f, p + "mlp_proj", weights[p + "mlp.proj.weight"], int8)])
    h = g.op("LayerNormalization", [x, g.const("ln_f", weights["ln_f.weight"])], epsilon=1e-5, axis=-1)
    logits = _linear(g, h, "lm_head", weights["lm_head.weight"], int8, out=None if cfg.logit_cap else LOGITS)  # (B, T, V)
    if cfg.logit_cap:  # cap * tanh(logits / cap), as the GPT
        cap = g.const("logit_cap", np.array(cfg.logit_cap, dtype=np.float32))
        g.op("Mul", [cap, g.op("Tanh", [g.op("Div", [logits, cap])])], out=[LOGITS])

    cache = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", SLOTS, K])  # noqa: E731
    inputs = [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, ["batch", "sequence"])]
    inputs += [cache(n) for n in pasts]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "sequence", V])]
    outputs += [cache(n) for n in presents]
    graph = helper.make_graph(g.nodes, "sgpt_decoder", inputs, outputs, initializer=g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="sgpt")
