"""The row-writing graph the engine builds without the onnx package (sgpt_cli.infer.onnx_build): the onnx
package (a test dependency only) reads it back as the graph onnx.helper would make, its checker
accepts it, and ONNX Runtime runs it in place."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from sgpt_cli.infer.onnx_build import put_row_graph


def helper_graph(n: int) -> onnx.GraphProto:
    nodes = [helper.make_node("ScatterND", [f"x{i}", "row", f"r{i}"], [f"y{i}"]) for i in range(n)]
    f = TensorProto.FLOAT
    return helper.make_graph(
        nodes, "sgpt_put_row",
        [helper.make_tensor_value_info("row", TensorProto.INT64, [1, 1])]
        + [helper.make_tensor_value_info(f"r{i}", f, [1, "s", "c"]) for i in range(n)]
        + [helper.make_tensor_value_info(f"x{i}", f, ["b", "s", "c"]) for i in range(n)],
        [helper.make_tensor_value_info(f"y{i}", f, ["b", "s", "c"]) for i in range(n)])


def test_the_hand_written_graph_is_the_one_onnx_helper_makes_and_writes_the_row_in_place():
    data = put_row_graph(4)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    assert model.graph == helper_graph(4)

    rng = np.random.default_rng(0)
    xs = [rng.random((3, 5, 4)).astype(np.float32) for _ in range(4)]
    rs = [rng.random((1, 5, 4)).astype(np.float32) for _ in range(4)]
    want = [x.copy() for x in xs]
    for w, r in zip(want, rs):
        w[1] = r[0]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    b = session.io_binding()
    b.bind_cpu_input("row", np.array([[1]], np.int64))
    values = [ort.OrtValue.ortvalue_from_numpy(x) for x in xs]
    for i, (r, v) in enumerate(zip(rs, values)):
        b.bind_cpu_input(f"r{i}", r)
        b.bind_ortvalue_input(f"x{i}", v)
        b.bind_ortvalue_output(f"y{i}", v)
    session.run_with_iobinding(b)
    assert all(np.array_equal(x, w) for x, w in zip(xs, want))  # the numpy arrays themselves changed
