"""What the model looked at and how its guess formed: attention weights and the logit lens of one
position, computed by ONNX Runtime from the model file's own graph and weights.

What it holds: `explain_graph`, the explain graph derived from a format-2 file when it is loaded (each
`Attention` node also gives its optional fourth output, the weights after softmax
(`qk_matmul_output_mode` 3), and the file's own final norm and head, cloned node for node, are applied
to the residual stream before the first layer and after each layer); `ExplainModel`, a session on that
graph beside an `OnnxModel`; `explain(model, text, at)`, an `Explanation` of one position (the next
character's distribution, the lens per layer, every head's attention over the window), and its
`to_json` object (`sgpt explain --json`, `POST /v1/explain`).

Why a graph derived at load, not outputs in the file: every file ever exported explains, and the
serving graph (decode and `--batch`) stays byte for byte what it was, so its speed cannot change.
Why by hand (a protobuf edit, as sgpt_cli.infer.onnx_build writes one): the runtime install has no
onnx package, and the numbers must be the file's own, not a second forward pass written in numpy.

A prompt longer than the window: the model sees block_size characters, so a position is explained
over the window that ends at it (the characters it could see), positions counted from the prompt's
start; `Explanation.first` says where that window starts.

What it does not do: render (sgpt_cli.term.explain_view), or read text from anywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sgpt_cli.errors import SgptError, UsageError, first_line, shown
from sgpt_cli.infer import onnx_file
from sgpt_cli.infer.interface import INPUT_IDS, LOGITS, POSITION_IDS, SLOTS, past_names
from sgpt_cli.infer.onnx_build import FLOAT, _bytes, _int, _value_info

ATTENTION_OUT = "sgpt_explain.attention.{}"  # [batch, n_head, sequence, slots]: layer i's weights after softmax
LENS_OUT = "sgpt_explain.lens.{}"  # [batch, sequence, vocab]: the head on the residual after j layers (0: the embedding)
LENS_TOP = 3  # characters the lens names per layer
SOFTMAX_MODE = 3  # Attention's qk_matmul_output_mode: the scores after softmax
_NORMS = ("LayerNormalization", "RMSNormalization")  # the residual stream's norms (pre-norm blocks, final norm)

# field numbers from onnx.proto
_M_GRAPH, _M_META = 7, 14
_G_NODE, _G_OUTPUT = 1, 12
_N_INPUT, _N_OUTPUT, _N_NAME, _N_OP, _N_ATTR = 1, 2, 3, 4, 5
_A_NAME, _A_I, _A_TYPE, _A_INT = 1, 3, 20, 2


class NotExplainable(SgptError):
    """A file whose graph is not the one sgpt's export writes, so its insides cannot be named."""


@dataclasses.dataclass
class _Node:
    inputs: list[str]
    outputs: list[str]
    op: str
    rest: list[bytes]  # every other field, encoded as it was

    def encode(self, name: str | None = None, attrs: bytes = b"") -> bytes:
        body = b"".join(_bytes(_N_INPUT, i) for i in self.inputs) + b"".join(_bytes(_N_OUTPUT, o) for o in self.outputs)
        body += (_bytes(_N_NAME, name) if name else b"") + _bytes(_N_OP, self.op) + b"".join(self.rest) + attrs
        return _bytes(_G_NODE, body)


def _span_text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="strict")


def _encoded(buf, field: int, wire: int, value) -> bytes:
    if wire == 0:
        return _int(field, value)
    if wire == 2:
        return _bytes(field, bytes(buf[value[0]:value[1]]))
    raise onnx_file.MalformedModel(f"a fixed-width field {field} where ONNX has none")


def _parse_node(buf, span, budget) -> _Node:
    node = _Node([], [], "", [])
    for field, wire, value in onnx_file._fields(buf, *span, budget):
        if wire == 2 and field == _N_INPUT:
            node.inputs.append(_span_text(buf, value))
        elif wire == 2 and field == _N_OUTPUT:
            node.outputs.append(_span_text(buf, value))
        elif wire == 2 and field == _N_OP:
            node.op = _span_text(buf, value)
        elif field != _N_NAME:  # names are given again: cloned nodes need their own
            node.rest.append(_encoded(buf, field, wire, value))
    return node


def _has_attribute(buf, node: _Node, name: str) -> bool:
    for raw in node.rest:
        fields = list(onnx_file._fields(raw, 0, len(raw)))
        if fields and fields[0][0] == _N_ATTR:
            start, end = fields[0][2]
            for f, w, v in onnx_file._fields(raw, start, end):
                if f == _A_NAME and w == 2 and bytes(raw[v[0]:v[1]]) == name.encode():
                    return True
    return False


def _int_attribute(name: str, value: int) -> bytes:
    """AttributeProto: name(1), i(3), type(20) = INT(2)."""
    return _bytes(_N_ATTR, _bytes(_A_NAME, name) + _int(_A_I, value) + _int(_A_TYPE, _A_INT))


def _float_output(name: str, dims: list[str]) -> bytes:
    """A graph output: float, its axes named."""
    return _bytes(_G_OUTPUT, _value_info(name, FLOAT, dims))


def file_metadata(data: bytes) -> dict[str, str]:
    """The ModelProto's metadata_props (what ONNX Runtime's custom_metadata_map gives), read from the bytes."""
    buf, meta = memoryview(data), {}
    for field, wire, value in onnx_file._fields(buf, 0, len(buf), onnx_file._Budget()):
        if field == _M_META and wire == 2:
            entry = {f: _span_text(buf, v) for f, w, v in onnx_file._fields(buf, *value) if w == 2}
            meta[entry.get(1, "")] = entry.get(2, "")
    return meta


def explain_graph(data: bytes, n_layer: int | None = None) -> bytes:
    """The model file's bytes -> the explain graph's (module doc). Raises NotExplainable when the graph
    is not the decoder sgpt writes: n_layer `Attention` nodes (None: as many as it has; the caller
    checks the metadata against the graph), 2 n_layer + 1 norms on the residual stream (two per
    block and the final one), a final norm that leads to the logits."""
    buf = memoryview(data)
    budget = onnx_file._Budget()
    model_rest, graph_span = [], None
    for field, wire, value in onnx_file._fields(buf, 0, len(buf), budget):
        if field == _M_GRAPH and wire == 2:
            graph_span = value
        else:
            model_rest.append(_encoded(buf, field, wire, value))
    if graph_span is None:
        raise NotExplainable("it has no graph")
    nodes, graph_rest = [], []
    for field, wire, value in onnx_file._fields(buf, *graph_span, budget):
        if field == _G_NODE and wire == 2:
            nodes.append(_parse_node(buf, value, budget))
        else:
            graph_rest.append(_encoded(buf, field, wire, value))

    attention = [n for n in nodes if n.op == "Attention" and len(n.outputs) <= 3]
    norms = [n for n in nodes if n.op in _NORMS and len(n.inputs) >= 2 and n.inputs[1] != "qk_norm_scale"]
    n_layer = len(attention) if n_layer is None else n_layer
    if not attention or len(attention) != n_layer or len(norms) != 2 * n_layer + 1:
        raise NotExplainable(f"{len(attention)} Attention nodes and {len(norms)} residual norms where a "
                             f"{n_layer}-layer sgpt decoder has {n_layer} and {2 * n_layer + 1}")
    if any(_has_attribute(buf, n, "qk_matmul_output_mode") for n in attention):
        raise NotExplainable("its Attention nodes already choose what their scores output holds")
    residuals = [norms[2 * j].inputs[0] for j in range(n_layer + 1)]  # before layer 0, after each layer
    final = residuals[-1]

    # the lens: every node between the final residual and the logits (norm, head, the cap if any)
    reached, producer = {final}, {}
    chain = []
    for n in nodes:
        for o in n.outputs:
            producer[o] = n
        if any(i in reached for i in n.inputs):
            chain.append(n)
            reached.update(n.outputs)
    needed, stack = set(), [LOGITS]
    while stack:
        name = stack.pop()
        n = producer.get(name)
        if n is not None and id(n) not in needed and any(x in reached for x in n.outputs):
            needed.add(id(n))
            stack.extend(n.inputs)
    chain = [n for n in chain if id(n) in needed]
    if not chain or LOGITS not in chain[-1].outputs:
        raise NotExplainable("its final norm does not lead to the logits")

    out = bytearray()
    for n in nodes:
        if any(n is a for a in attention):
            i = next(k for k, a in enumerate(attention) if a is n)
            wired = _Node(n.inputs, n.outputs + [""] * (3 - len(n.outputs)) + [ATTENTION_OUT.format(i)], n.op, n.rest)
            out += wired.encode(attrs=_int_attribute("qk_matmul_output_mode", SOFTMAX_MODE))
        else:
            out += n.encode()
    for j, resid in enumerate(residuals):
        renamed = {final: resid}
        for k, n in enumerate(chain):
            outs = [LENS_OUT.format(j) if o == LOGITS else f"sgpt_explain.lens{j}.{k}.{o}" for o in n.outputs]
            renamed.update(zip(n.outputs, outs))
            out += _Node([renamed.get(x, x) for x in n.inputs], outs, n.op, n.rest).encode()
    out += b"".join(graph_rest)
    out += b"".join(_float_output(ATTENTION_OUT.format(i), ["batch", "heads", "sequence", SLOTS]) for i in range(n_layer))
    out += b"".join(_float_output(LENS_OUT.format(j), ["batch", "sequence", "vocab"]) for j in range(n_layer + 1))
    return b"".join(model_rest) + _bytes(_M_GRAPH, bytes(out))


def _derived(path: Path, n_layer: int | None) -> tuple[bytes, dict[str, str]]:
    """(the explain graph of the file at `path`, its metadata); SgptError in one line. n_layer None:
    the metadata's, checked first (a file that is not sgpt's is said so, as every command says it)."""
    from sgpt_cli.infer.onnx_model import parse_metadata

    try:
        if onnx_file.external_locations(path):
            raise NotExplainable("its weights live in files beside it")
        data = path.read_bytes()
        meta = file_metadata(data)
        if n_layer is None:
            n_layer = parse_metadata(meta, path)[1]
        return explain_graph(data, n_layer), meta
    except NotExplainable as exc:
        raise SgptError(f"cannot explain {shown(path)}: {exc}; export the model with `sgpt export`") from None
    except (onnx_file.MalformedModel, UnicodeDecodeError) as exc:
        raise SgptError(f"cannot explain {shown(path)}: it is not a well-formed ONNX file ({first_line(exc)}); "
                        "export the model with `sgpt export`") from None
    except OSError as exc:
        raise SgptError(f"cannot read model file {shown(path)}: {exc.strerror or first_line(exc)}") from None


def _session(graph: bytes, meta: dict):
    from sgpt_cli.infer.onnx_model import PREFILL_THREADS, open_session

    int8 = meta.get("sgpt.quantization") == "int8"  # prefills' float32 matmuls, as OnnxModel's
    return open_session(graph, "cpu", PREFILL_THREADS, float_matmuls=int8)


class ExplainModel:
    """An OnnxModel and a session on its explain graph (opened once, on the CPU: one prompt at a time,
    weights after softmax, no cache to keep)."""

    def __init__(self, model, session=None):
        self.model = model
        if session is None:
            session = _session(*_derived(Path(model.path), model.n_layer))
        self.session = session

    @classmethod
    def open(cls, path: Path | str) -> "ExplainModel":
        """The file at `path` for explaining alone (`sgpt explain`): one session, on the explain graph,
        which also gives the OnnxModel its metadata and checks (the serving graph is never opened)."""
        from sgpt_cli.infer.onnx_model import OnnxModel, check_file

        path = Path(path)
        check_file(path)
        graph, meta = _derived(path, None)
        session = _session(graph, meta)
        model = OnnxModel(path, session=session)
        return cls(model, session)

    def run(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """ids (T,), T <= block_size, at positions 0..T-1 -> logits (T, V), attention per layer
        (n_head, T, T) (query x key), lens logits per residual (T, V) (n_layer + 1 of them)."""
        from sgpt_cli.infer.interrupt import RunGuard

        m = self.model
        T = len(ids)
        slots = m.block_size if m.slots_fixed else T
        feed = {INPUT_IDS: np.asarray(ids, dtype=np.int64)[None], POSITION_IDS: np.arange(T, dtype=np.int64)[None]}
        feed.update((name, np.zeros((1, slots, m.kv_width), np.float32)) for name in past_names(m.n_layer))
        names = [LOGITS] + [ATTENTION_OUT.format(i) for i in range(m.n_layer)]
        names += [LENS_OUT.format(j) for j in range(m.n_layer + 1)]
        try:
            with RunGuard() as run_options:
                outs = self.session.run(names, feed, run_options)
        except Exception as exc:  # ONNX Runtime's own exception types
            raise SgptError(f"ONNX Runtime failed while explaining with {shown(m.path)} ({first_line(exc)}); "
                            "re-export the model with `sgpt export`") from None
        attention = [a[0, :, :, :T] for a in outs[1:1 + m.n_layer]]
        if any(a.shape != (m.n_head, T, T) for a in attention):
            raise SgptError(f"{shown(m.path)} gives attention weights of an unexpected shape; re-export it "
                            "with `sgpt export`")
        return outs[0][0], attention, [x[0] for x in outs[1 + m.n_layer:]]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclasses.dataclass
class Explanation:
    """One position explained. Indices count the prompt's characters the model knows (unknown ones
    are dropped, as `sgpt complete` drops them); the window is text[first : at + 1]."""

    vocab: list[str]  # the model's characters, in id order
    text: str  # the window's characters, as they are (render them through CharTokenizer.shown)
    first: int  # the window's first character's index in the prompt
    at: int  # the explained character's index in the prompt (the window's last)
    length: int  # characters of the prompt the model knows
    dropped: int  # characters of the prompt it does not know (left out)
    probs: np.ndarray  # (V,) the next character's distribution
    lens: np.ndarray  # (n_layer + 1, V) the lens's distribution before layer 0 (the embedding) and after each layer
    attention: np.ndarray  # (n_layer, n_head, W) the explained position's weights over its window
    kv_heads: list[int]  # the key/value head each query head reads
    maps: np.ndarray | None = None  # (n_layer, n_head, W, W) every query of the window (when asked)

    @property
    def positions(self) -> list[int]:
        return list(range(self.first, self.at + 1))

    def top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.vocab[i], float(probs[i])) for i in order]

    def to_json(self, layers: list[int] | None = None, heads: list[int] | None = None) -> dict:
        """Every number, as plain JSON (the `--json` object and /v1/explain's body). Layers and heads
        are counted from 1 as the views name them (lens layer 0: the embedding, before any layer);
        positions from 0, as --at counts. `layers`, `heads`: 0-based indices to keep (default all)."""
        layers = list(range(self.attention.shape[0])) if layers is None else layers
        heads = list(range(self.attention.shape[1])) if heads is None else heads
        order = np.argsort(-self.probs, kind="stable")
        return {
            "object": "sgpt.explanation",
            "at": self.at, "prompt_characters": self.length, "dropped_characters": self.dropped,
            "window": {"first": self.first, "characters": list(self.text), "positions": self.positions},
            "next": [{"char": self.vocab[i], "prob": float(self.probs[i])} for i in order],
            "lens": [{"layer": j, "after": "embedding" if j == 0 else f"layer {j}",
                      "top": [{"char": c, "prob": p} for c, p in self.top(self.lens[j], LENS_TOP)],
                      "probs": [float(p) for p in self.lens[j]]} for j in range(len(self.lens))],
            "attention": [{"layer": i + 1, "heads": [{"head": h + 1, "kv_head": self.kv_heads[h] + 1,
                                                  "weights": [float(w) for w in self.attention[i, h]]}
                                                 for h in heads]} for i in layers],
        }


def window_of(length: int, at: int, block_size: int) -> tuple[int, int]:
    """(first, at) of the window that ends at `at` (negative: from the end); SgptError outside the prompt."""
    if not -length <= at < length:
        raise UsageError(f"--at {at} is outside the prompt, which has {length} character{'s' * (length != 1)} "
                        f"the model knows (use 0 to {length - 1}, or -1 to -{length})")
    at = at % length
    return max(0, at + 1 - block_size), at


def explain(model, text: str, at: int = -1, maps: bool = False, explainer: ExplainModel | None = None) -> Explanation:
    """The position `at` of `text` explained (module doc). `model`: an OnnxModel; `explainer` its
    ExplainModel when the caller keeps one (the REPL, the server), else one is opened; `maps`: keep
    every query's weights (the picture)."""
    tok = model.tokenizer
    ids = tok.encode(text, drop_unknown=True)
    if len(ids) == 0:
        raise SgptError("the prompt has no character the model knows; give some text (for example "
                        "`sgpt explain 'ROMEO:'`)" if text else "the prompt is empty; give some text to explain")
    first, end = window_of(len(ids), at, model.block_size)
    explainer = explainer or ExplainModel(model)
    logits, attention, lens = explainer.run(ids[first:end + 1])
    window = "".join(tok.chars[i] for i in ids[first:end + 1])
    group = model.n_head // model.n_kv_head
    return Explanation(
        vocab=list(tok.chars), text=window, first=first, at=end, length=len(ids), dropped=len(text) - len(ids),
        probs=softmax(logits[-1]), lens=np.stack([softmax(x[-1]) for x in lens]),
        attention=np.stack([a[:, -1, :] for a in attention]), kv_heads=[h // group for h in range(model.n_head)],
        maps=np.stack(attention) if maps else None)
