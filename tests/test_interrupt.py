"""A model that never ends a step cannot hold sgpt: Ctrl-C ends any ONNX Runtime run
(sgpt_cli.infer.interrupt), and no model with control flow is opened (sgpt_cli.infer.onnx_file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SGPT, run_env

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def slow_model(path: Path, steps: int = 400, n: int = 1024) -> Path:
    """y = x @ W @ W ... (`steps` MatMuls of n x n): seconds to minutes of work per run, and no
    control flow, so only RunOptions.terminate can cut a run short."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [n, n], (np.eye(n, dtype=np.float32) * 0.5).tobytes(), raw=True)
    nodes, last = [], "x"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [last, "W"], [f"h{i}"]))
        last = f"h{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


CHILD = r"""
import sys, time
import numpy as np
import onnxruntime as ort
from sgpt_cli.infer.interrupt import RunGuard
so = ort.SessionOptions(); so.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.ones((1024, 1024), dtype=np.float32)
try:
    with RunGuard() as options:
        print("running", flush=True)
        t0 = time.perf_counter()
        for _ in range(1000):  # minutes of work: only the signal ends it
            sess.run(["y"], {"x": x}, options)
    print("finished", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.perf_counter() - t0:.2f} s", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_ends_a_run_that_would_take_minutes_within_seconds(tmp_path):
    model = slow_model(tmp_path / "slow.onnx")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(model)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=run_env(), text=True)
    try:
        assert child.stdout.readline().strip() == "running"
        time.sleep(1.0)  # well inside session.run
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, (out, err)
    assert out.startswith("interrupted") and "Traceback" not in err, (out, err)
    assert took < 10, took  # one MatMul of 1024^2 (the granularity of terminate) is milliseconds


def test_a_terminated_run_surfaces_as_keyboardinterrupt_not_an_onnx_runtime_error(tmp_path):
    import onnxruntime as ort

    from sgpt_cli.infer.interrupt import RunGuard

    sess = ort.InferenceSession(str(slow_model(tmp_path / "s.onnx", steps=2, n=8)), providers=["CPUExecutionProvider"])
    x = np.ones((8, 8), dtype=np.float32)
    guard = RunGuard()
    with pytest.raises(KeyboardInterrupt):
        with guard as options:
            guard.terminate()  # what the watchdog does when SIGINT arrives
            sess.run(["y"], {"x": x}, options)
    with RunGuard() as options:  # the next guard is a fresh RunOptions: runs go on after a Ctrl-C
        assert sess.run(["y"], {"x": x}, options)[0].shape == (8, 8)
    assert signal.set_wakeup_fd(-1) == -1  # every guard gave the wakeup descriptor back


def test_a_signal_the_guard_does_not_route_leaves_the_run_alone(tmp_path):
    import onnxruntime as ort

    from sgpt_cli.infer.interrupt import RunGuard

    sess = ort.InferenceSession(str(slow_model(tmp_path / "s.onnx", steps=2, n=8)), providers=["CPUExecutionProvider"])
    previous = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        with RunGuard() as options:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)  # the watchdog has read the byte
            assert not options.terminate
            assert sess.run(["y"], {"x": np.ones((8, 8), np.float32)}, options)[0].shape == (8, 8)
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --- control flow: refused when the file is opened ---------------------------------------------

def loop_model(path: Path, trips: int = 2 ** 62) -> Path:
    """A Loop whose trip count is 2^62: the file the issue's battery made."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "v0"], ["v"], name="forever", body=body)], "g",
        [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [helper.make_tensor("M", TensorProto.INT64, [], [trips]), helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def if_model(path: Path) -> Path:
    branch = helper.make_graph([helper.make_node("Constant", [], ["o"], value=helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]))],
                               "b", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def scan_in_a_function(path: Path) -> Path:
    """Control flow hidden in a model-local function: the walk looks there too."""
    body = helper.make_graph([helper.make_node("Identity", ["s"], ["s2"])], "body",
                             [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("s2", TensorProto.FLOAT, [1])])
    fn = helper.make_function("local", "F", ["a"], ["b"],
                              [helper.make_node("Scan", ["a"], ["b"], body=body, num_scan_inputs=0)],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], ir_version=9)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("make, what", [(loop_model, "Loop node 'forever'"), (if_model, "If node"),
                                        (scan_in_a_function, "Scan node")])
def test_a_model_with_control_flow_is_refused_when_opened(tmp_path, make, what):
    from sgpt_cli.errors import SgptError
    from sgpt_cli.infer.onnx_model import check_file

    path = make(tmp_path / "cf.onnx")
    with pytest.raises(SgptError, match="carries a subgraph") as exc:
        check_file(path)
    assert what in str(exc.value) and "\n" not in str(exc.value)


def test_complete_refuses_the_endless_loop_model_in_one_line_at_once(tmp_path):
    path = loop_model(tmp_path / "loop.onnx")
    t0 = time.monotonic()
    done = subprocess.run(SGPT + ["complete", "--model", str(path), "-n", "5", "hi"], capture_output=True, text=True,
                          env=run_env(), timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "carries a subgraph" in lines[0] and "sgpt's export never writes" in lines[0], done.stderr
    assert time.monotonic() - t0 < 60


ENGINE_CHILD = r"""
import sys, time
import numpy as np
import onnxruntime as ort
from sgpt_cli.infer.engine import Engine, HostCache
from sgpt_cli.infer.onnx_model import OnnxModel
from sgpt_cli.settings import SamplingParams
slow = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
x = np.ones((1024, 1024), dtype=np.float32)
real = HostCache._run
def run(self, binding, session=None):  # every decode step also runs the slow graph, with its RunOptions
    if self.bindings:
        print("step", flush=True)
        for _ in range(1000):
            slow.run(["y"], {"x": x}, self.run_options)
    real(self, binding, session)
HostCache._run = run
engine = Engine(OnnxModel(sys.argv[1], device="cpu"))
t0 = time.perf_counter()
events = list(engine.stream("ROMEO:", SamplingParams(max_tokens=50, seed=1)))
print(events[-1].stats.stop_reason, f"{time.perf_counter() - t0:.1f}", engine.busy, flush=True)
"""


def test_ctrl_c_inside_an_engine_step_ends_the_request_as_interrupted(tiny_onnx, tmp_path):
    """The engine runs each step under a RunGuard: a run that would take minutes ends at Ctrl-C, the
    request's last event says "interrupted" and nothing stays in flight."""
    model = slow_model(tmp_path / "slow.onnx")
    child = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, str(tiny_onnx), str(model)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=run_env())
    try:
        assert child.stdout.readline().strip() == "step"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    reason, seconds, busy = out.split()
    assert reason == "interrupted" and busy == "False", err
    assert float(seconds) < 20


def test_a_guards_run_options_spare_onnx_runtime_its_failing_graph_id_lookup():
    """onnxruntime's run_with_iobinding asks every RunOptions for "gpu_graph_id"; unset, that lookup
    raises inside pybind11 (~50 us a step). A guard's own RunOptions sets it to the value assumed
    when unset, and a RunOptions the caller passes is left as it is."""
    import onnxruntime as ort

    from sgpt_cli.infer.interrupt import GRAPH_ID_DEFAULT, GRAPH_ID_ENTRY, RunGuard

    assert RunGuard().run_options.get_run_config_entry(GRAPH_ID_ENTRY) == GRAPH_ID_DEFAULT == "0"
    mine = ort.RunOptions()
    assert RunGuard(run_options=mine).run_options is mine
    with pytest.raises(RuntimeError):
        mine.get_run_config_entry(GRAPH_ID_ENTRY)
