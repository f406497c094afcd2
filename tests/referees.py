"""The independent referees the tests compare against: onnxruntime on the source ONNX model, and
LiteRT on the very file we wrote; plus our own runtime driven the same way."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter
from ai_edge_litert.interpreter import OpResolverType

from edgeq.runtime.interpreter import Interpreter


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _run_tflite_interpreter(interpreter, inputs: list) -> list:
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), inputs):
        # np.array, not np.ascontiguousarray, which turns a 0-D input into a 1-D one
        interpreter.set_tensor(detail["index"], np.array(value, dtype=detail["dtype"], order="C"))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def run_litert(content: bytes, inputs: list, reference_kernels: bool = False) -> list:
    """Outputs of LiteRT on ``content``; ``reference_kernels`` selects BUILTIN_REF over XNNPACK."""
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = LiteRTInterpreter(
        model_content=content, num_threads=1, experimental_op_resolver_type=resolver
    )
    return _run_tflite_interpreter(interpreter, inputs)


def litert_tensors(content: bytes, inputs: list, names, reference_kernels: bool = False) -> dict:
    """The named tensors (intermediates included) after one LiteRT run on ``content``."""
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = LiteRTInterpreter(
        model_content=content, num_threads=1, experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=True,
    )
    _run_tflite_interpreter(interpreter, inputs)
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    return {name: interpreter.get_tensor(index[name]).copy() for name in names}


def integer_tensor_mismatches(content: bytes, inputs: list, resolver=OpResolverType.BUILTIN_REF,
                              kinds: str = "iu") -> dict:
    """Per tensor name, for every tensor whose dtype kind is in ``kinds`` (integers; "b" adds bools):
    the elements where our runtime differs from LiteRT with ``resolver`` after one run on ``inputs``
    (a whole tensor counts as different when the shapes differ). Constants LiteRT keeps elsewhere
    are not compared."""
    theirs = LiteRTInterpreter(model_content=content, num_threads=1, experimental_op_resolver_type=resolver,
                               experimental_preserve_all_tensors=True)
    ours = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    _run_tflite_interpreter(theirs, inputs)
    _run_tflite_interpreter(ours, inputs)
    counts = {}
    for detail in ours.get_tensor_details():
        if np.dtype(detail["dtype"]).kind not in kinds:
            continue
        try:
            want = theirs.get_tensor(detail["index"])
        except ValueError:  # a constant LiteRT keeps elsewhere
            continue
        got = ours.get_tensor(detail["index"])
        counts[detail["name"]] = int(want.size) if want.shape != got.shape else int(np.count_nonzero(want != got))
    return counts


def run_edgeq(content: bytes, inputs: list) -> list:
    return _run_tflite_interpreter(Interpreter(model_content=content), inputs)


def relative_max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: a scale-free error for whole output tensors."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    scale = max(np.max(np.abs(expected)), 1e-30) if expected.size else 1.0
    return float(np.max(np.abs(actual - expected)) / scale) if expected.size else 0.0


def nchw_to_nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def nhwc_to_nchw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if array.ndim == 4 else array
