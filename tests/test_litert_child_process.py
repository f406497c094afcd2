"""LiteRT runs in a child process: an abort inside LiteRT fails the one test that caused it, naming the
model and its ops, instead of killing the test run; one worker process serves every interpreter until
it dies; LiteRT's errors arrive as the exceptions LiteRT raises; the test process itself never loads
LiteRT."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor  # noqa: E402
from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing import litert  # noqa: E402
from edgeq.testing.referees import run_litert  # noqa: E402


def int8_softmax_model(width: int, input_scale: float) -> bytes:
    graph = Graph()
    graph.add_tensor(Tensor("x", (1, width), np.int8, quant=QuantParams(input_scale, 0)))
    graph.add_tensor(Tensor("y", (1, width), np.int8, quant=QuantParams(1 / 256, -128)))
    graph.add_op(Op("SOFTMAX", ["x"], ["y"], {"beta": 1.0}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    return write_tflite(graph)


def float_relu_model() -> bytes:
    graph = Graph()
    graph.add_tensor(Tensor("x", (1, 4), np.float32))
    graph.add_tensor(Tensor("y", (1, 4), np.float32))
    graph.add_op(Op("RELU", ["x"], ["y"]))
    graph.inputs, graph.outputs = ["x"], ["y"]
    return write_tflite(graph)


def assert_litert_still_runs():
    (y,) = run_litert(float_relu_model(), [np.array([[-1, 0, 2, -3]], np.float32)])
    np.testing.assert_array_equal(y, [[0, 0, 2, 0]])


def test_litert_aborting_on_a_model_is_a_failure_naming_the_model_and_its_ops():
    """LiteRT 2.3's reference int8 SOFTMAX aborts the process (SIGABRT) on a row of 1000 equal logits
    at input scale 0.0047, as on Inception v1's classifier."""
    content = int8_softmax_model(1000, 0.0047)
    with pytest.raises(litert.LiteRTDied, match=r"LiteRT died \(SIGABRT\) in \w+\(\) on a [\d,]+-byte model "
                                                 r"with BUILTIN_REF kernels \(ops: SOFTMAX\)"):
        run_litert(content, [np.zeros((1, 1000), np.int8)], reference_kernels=True)
    assert_litert_still_runs()


def test_an_abort_in_the_worker_is_reported_and_the_next_request_gets_a_new_worker():
    assert_litert_still_runs()
    before = litert.worker_pid()
    with pytest.raises(litert.LiteRTDied, match=r"LiteRT died \(SIGABRT\)"):
        litert.abort_worker()
    assert litert.worker_pid() is None
    assert_litert_still_runs()
    assert litert.worker_pid() not in (None, before)


def test_an_interpreter_of_a_dead_worker_says_so():
    interpreter = litert.Interpreter(model_content=float_relu_model())
    with pytest.raises(litert.LiteRTDied):
        litert.abort_worker()
    with pytest.raises(litert.LiteRTDied, match=r"worker died after loading a [\d,]+-byte model .*\(ops: RELU\)"):
        interpreter.allocate_tensors()


def test_one_worker_serves_consecutive_interpreters():
    assert_litert_still_runs()
    worker = litert.worker_pid()
    for _ in range(3):
        assert_litert_still_runs()
    assert litert.worker_pid() == worker


def test_litert_errors_arrive_as_the_exceptions_litert_raises():
    with pytest.raises(ValueError, match="not a valid Flatbuffer"):
        litert.Interpreter(model_content=b"not a model")
    interpreter = litert.Interpreter(model_content=float_relu_model())
    interpreter.allocate_tensors()
    with pytest.raises(ValueError):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.zeros((1, 5), np.float32))


def test_the_worker_gives_what_litert_gives():
    interpreter = litert.Interpreter(model_content=float_relu_model(), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    (x,) = interpreter.get_input_details()
    assert x["name"] == "x" and x["dtype"] is np.float32 and list(x["shape"]) == [1, 4]
    (y,) = interpreter.run([np.array([[1, -2, 3, -4]], np.float32)])
    np.testing.assert_array_equal(y, [[1, 0, 3, 0]])
    tensors = interpreter.tensors([x["index"], interpreter.get_output_details()[0]["index"]])
    np.testing.assert_array_equal(tensors[x["index"]], [[1, -2, 3, -4]])


def test_the_test_process_itself_loads_neither_litert_nor_onnxruntime():
    code = (
        "import sys\n"
        "for name in ('ai_edge_litert', 'onnxruntime', 'onnx', 'torch'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import edgeq.testing, edgeq.testing.litert, edgeq.testing.referees\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
