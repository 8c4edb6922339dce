"""The cache-trimming graph the engine builds without the onnx package (sgpt_cli.onnx_build): the
onnx package (a test dependency only) reads it back as the graph onnx.helper would make, its checker
accepts it, and ONNX Runtime runs it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sgpt_cli.onnx_build import slice_graph


def helper_graph(n: int, elem: int) -> onnx.GraphProto:
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axes"),
             numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "end")]
    nodes = [helper.make_node("Slice", [f"x{i}", "drop", "end", "axes"], [f"y{i}"]) for i in range(n)]
    return helper.make_graph(
        nodes, "sgpt_cache_trim",
        [helper.make_tensor_value_info("drop", TensorProto.INT64, [1])]
        + [helper.make_tensor_value_info(f"x{i}", elem, ["b", "h", "p", "d"]) for i in range(n)],
        [helper.make_tensor_value_info(f"y{i}", elem, ["b", "h", "q", "d"]) for i in range(n)], inits)


@pytest.mark.parametrize("float16", [False, True])
def test_the_hand_written_graph_is_the_one_onnx_helper_makes_and_runs(float16):
    data = slice_graph(4, float16=float16)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 18)]
    assert model.graph == helper_graph(4, TensorProto.FLOAT16 if float16 else TensorProto.FLOAT)

    dtype = np.float16 if float16 else np.float32
    xs = [np.random.default_rng(i).random((1, 2, 7, 4)).astype(dtype) for i in range(4)]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ys = session.run(None, {"drop": np.array([3], np.int64), **{f"x{i}": x for i, x in enumerate(xs)}})
    assert all(np.array_equal(y, x[:, :, 3:]) for y, x in zip(ys, xs))
