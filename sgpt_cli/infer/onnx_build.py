"""The one small ONNX graph the engine builds at run time, written without the onnx package.

What it holds: `put_row_graph`, the bytes of a graph that writes one prefilled row into every cached
key/value tensor (`DeviceCache` runs it on the GPU), and the few protobuf encoding rules it needs
(varints and length-delimited fields; field numbers from onnx.proto). Why by hand: the runtime
install is onnxruntime + numpy only (the onnx package comes with the `train` extra), and ONNX
Runtime has no graph builder of its own. tests/test_engine.py checks the bytes with onnx.checker.

What it does not do: anything else of ONNX; import numpy, onnx or onnxruntime.
"""

from __future__ import annotations

FLOAT, INT64 = 1, 7  # TensorProto.DataType
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


def _value_info(name: str, elem: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto: name(1), type(2) = TypeProto{tensor_type(1) = {elem_type(1), shape(2)}}."""
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor = _int(1, elem) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def _node(op: str, inputs: list[str], outputs: list[str]) -> bytes:
    """NodeProto: input(1), output(2), op_type(4)."""
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op)


def put_row_graph(n: int) -> bytes:
    """ONNX model bytes: y_i = x_i with row `row` replaced by r_i (ScatterND), for i < n. Bound with
    y_i on x_i's own memory, ONNX Runtime writes the row in place: this is how a prefilled request
    enters the device cache (sgpt_cli.infer.engine.DeviceCache). Inputs: row (int64, (1, 1)), r0..r{n-1}
    (float, (1, s, c)), x0..x{n-1} (float, (b, s, c)); outputs y0..y{n-1} (float, (b, s, c))."""
    graph = b"".join(_bytes(1, _node("ScatterND", [f"x{i}", "row", f"r{i}"], [f"y{i}"])) for i in range(n))
    graph += _bytes(2, "sgpt_put_row")
    graph += _bytes(11, _value_info("row", INT64, [1, 1]))
    graph += b"".join(_bytes(11, _value_info(f"r{i}", FLOAT, [1, "s", "c"])) for i in range(n))
    graph += b"".join(_bytes(11, _value_info(f"x{i}", FLOAT, ["b", "s", "c"])) for i in range(n))
    graph += b"".join(_bytes(12, _value_info(f"y{i}", FLOAT, ["b", "s", "c"])) for i in range(n))
    # ModelProto: ir_version(1), graph(7), opset_import(8) = OperatorSetIdProto{domain(1), version(2)}
    return _int(1, IR_VERSION) + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, OPSET))
