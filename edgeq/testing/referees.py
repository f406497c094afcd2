"""The independent referees the tests compare against: onnxruntime on the source ONNX model, and
LiteRT on the very file we wrote (in a child process: edgeq.testing.litert); plus our own runtime
driven the same way."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.litert import Interpreter as LiteRTInterpreter
from edgeq.testing.litert import OpResolverType


def run_onnxruntime(model, feeds: dict) -> list:
    """Outputs of onnxruntime on the ``onnx.ModelProto``, one thread, graph optimizations off."""
    import onnxruntime

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


def _litert_feeds(interpreter, inputs: list) -> list:
    # np.array, not np.ascontiguousarray, which turns a 0-D input into a 1-D one
    return [np.array(value, dtype=detail["dtype"], order="C")
            for detail, value in zip(interpreter.get_input_details(), inputs)]


def _run_litert(interpreter, inputs: list) -> list:
    """Allocate, then one run on LiteRT's worker: inputs cast to the model's input types."""
    interpreter.allocate_tensors()
    return interpreter.run(_litert_feeds(interpreter, inputs))


def run_litert(content: bytes, inputs: list, reference_kernels: bool = False) -> list:
    """Outputs of LiteRT on ``content``; ``reference_kernels`` selects BUILTIN_REF over XNNPACK."""
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = LiteRTInterpreter(
        model_content=content, num_threads=1, experimental_op_resolver_type=resolver
    )
    return _run_litert(interpreter, inputs)


def litert_tensors(content: bytes, inputs: list, names, reference_kernels: bool = False) -> dict:
    """The named tensors (intermediates included) after one LiteRT run on ``content``."""
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = LiteRTInterpreter(
        model_content=content, num_threads=1, experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=True,
    )
    _run_litert(interpreter, inputs)
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    found = interpreter.tensors(index[name] for name in names)
    return {name: found[index[name]] for name in names}


def integer_tensor_mismatches(content: bytes, inputs: list, resolver=OpResolverType.BUILTIN_REF,
                              kinds: str = "iu") -> dict:
    """Per tensor name, for every tensor whose dtype kind is in ``kinds`` (integers; "b" adds bools):
    the elements where our runtime differs from LiteRT with ``resolver`` after one run on ``inputs``
    (a whole tensor counts as different when the shapes differ). Constants LiteRT keeps elsewhere
    are not compared."""
    theirs = LiteRTInterpreter(model_content=content, num_threads=1, experimental_op_resolver_type=resolver,
                               experimental_preserve_all_tensors=True)
    ours = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    _run_litert(theirs, inputs)
    _run_tflite_interpreter(ours, inputs)
    compared = [d for d in ours.get_tensor_details() if np.dtype(d["dtype"]).kind in kinds]
    their_values = theirs.tensors(d["index"] for d in compared)
    counts = {}
    for detail in compared:
        if detail["index"] not in their_values:  # a constant LiteRT keeps elsewhere
            continue
        want, got = their_values[detail["index"]], ours.get_tensor(detail["index"])
        counts[detail["name"]] = int(want.size) if want.shape != got.shape else int(np.count_nonzero(want != got))
    return counts


def run_edgeq(content: bytes, inputs: list) -> list:
    return _run_tflite_interpreter(Interpreter(model_content=content), inputs)


# -- single-op IR graphs: ours against LiteRT in every tensor ----------------------------------

def set_inputs_and_invoke(interpreter, inputs):
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return interpreter


def run_pair(graph: Graph, inputs, reference=True):
    """(LiteRT interpreter, our interpreter) after one run of ``graph`` on ``inputs``."""
    content = write_tflite(graph)
    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    theirs = LiteRTInterpreter(model_content=content, experimental_op_resolver_type=resolver,
                               experimental_preserve_all_tensors=True, num_threads=1)
    ours = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    theirs.allocate_tensors()
    theirs.run(inputs)  # one round trip to LiteRT's worker: every input set, then invoke
    return theirs, set_inputs_and_invoke(ours, inputs)


def mismatches_in_every_tensor(graph: Graph, inputs) -> dict:
    """Per non-constant tensor name: the number of elements where ours differs from BUILTIN_REF."""
    theirs, ours = run_pair(graph, inputs)
    compared = [d for d in ours.get_tensor_details() if graph.tensors[d["name"]].data is None]
    their_values = theirs.tensors(d["index"] for d in compared)
    counts = {}
    for detail in compared:
        assert detail["index"] in their_values, f"LiteRT gives no tensor {detail['name']}"
        a, b = their_values[detail["index"]], ours.get_tensor(detail["index"])
        assert a.shape == b.shape and a.dtype == b.dtype, detail["name"]
        counts[detail["name"]] = int(np.count_nonzero(a != b))
    return counts


def assert_exact(graph: Graph, inputs):
    """Every non-constant tensor of ours equals LiteRT's reference kernels', integer for integer."""
    counts = mismatches_in_every_tensor(graph, inputs)
    assert sum(counts.values()) == 0, counts


def max_diff_default_kernels(graph: Graph, inputs) -> int:
    """Largest |ours - LiteRT's default kernels| on the output (0 when XNNPACK refuses the op, as
    it does for per-tensor int8 CONV_2D weights, or the optimized kernel refuses the params)."""
    try:
        theirs, ours = run_pair(graph, inputs, reference=False)
    except RuntimeError as error:
        if "failed to delegate" in str(error) or "failed to prepare" in str(error):
            return 0  # the optimized kernels refuse params the reference kernels take
        raise
    index = ours.get_output_details()[0]["index"]
    a = theirs.get_tensor(index).astype(np.int64)
    b = ours.get_tensor(index).astype(np.int64)
    return int(np.max(np.abs(a - b))) if a.size else 0


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
