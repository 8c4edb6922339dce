"""The one small ONNX graph the engine builds at run time, written without the onnx package.

What it holds: `slice_graph`, the bytes of a graph that drops the oldest positions of every cached
key/value tensor (`BoundCache` runs it on the GPU), and the few protobuf encoding rules it needs
(varints and length-delimited fields; field numbers from onnx.proto). Why by hand: the runtime
install is onnxruntime + numpy only (the onnx package comes with the `train` extra), and ONNX
Runtime has no graph builder of its own. tests/test_engine.py checks the bytes with onnx.checker.

What it does not do: anything else of ONNX; import numpy, onnx or onnxruntime.
"""

from __future__ import annotations

import struct

FLOAT, INT64, FLOAT16 = 1, 7, 10  # TensorProto.DataType
IR_VERSION = 8  # the oldest IR with opset 18: any ONNX Runtime that runs our models loads it
OPSET = 18


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are written as their two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor_int64(name: str, values: list[int]) -> bytes:
    """TensorProto: dims(1), data_type(2), raw_data(9, little-endian), name(8)."""
    raw = b"".join(struct.pack("<q", v) for v in values)
    return _int(1, len(values)) + _int(2, INT64) + _bytes(8, name) + _bytes(9, raw)


def _value_info(name: str, elem: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto: name(1), type(2) = TypeProto{tensor_type(1) = {elem_type(1), shape(2)}}."""
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor = _int(1, elem) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def _node(op: str, inputs: list[str], outputs: list[str]) -> bytes:
    """NodeProto: input(1), output(2), op_type(4)."""
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op)


def slice_graph(n: int, float16: bool = False) -> bytes:
    """ONNX model bytes: y_i = x_i[:, :, drop:, :] for i < n (the cache's oldest positions dropped).
    Inputs: drop (int64, (1,)), x0..x{n-1} (float or float16, (b, h, p, d)); outputs y0..y{n-1}."""
    elem = FLOAT16 if float16 else FLOAT
    graph = b"".join(_bytes(1, _node("Slice", [f"x{i}", "drop", "end", "axes"], [f"y{i}"])) for i in range(n))
    graph += _bytes(2, "sgpt_cache_trim")
    graph += _bytes(5, _tensor_int64("axes", [2])) + _bytes(5, _tensor_int64("end", [(1 << 63) - 1]))
    graph += _bytes(11, _value_info("drop", INT64, [1]))
    graph += b"".join(_bytes(11, _value_info(f"x{i}", elem, ["b", "h", "p", "d"])) for i in range(n))
    graph += b"".join(_bytes(12, _value_info(f"y{i}", elem, ["b", "h", "q", "d"])) for i in range(n))
    # ModelProto: ir_version(1), graph(7), opset_import(8) = OperatorSetIdProto{domain(1), version(2)}
    return _int(1, IR_VERSION) + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, OPSET))
