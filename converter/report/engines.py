"""Running a variant on the eval set, on edgeq's runtime and on LiteRT's reference kernels, and the
LiteRT interpreter the report uses for both that and timing (its C++ INFO lines kept off the terminal)."""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

EDGEQ, LITERT = "edgeq", "litert"


def outputs_on_edgeq(content: bytes, inputs: dict, batch_size: int = 64) -> list:
    from edgeq.runtime.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    names = interpreter.graph.outputs
    total = next(iter(inputs.values())).shape[0]
    chunks = {name: [] for name in names}
    for start in range(0, total, batch_size):
        result = interpreter.run({n: v[start:start + batch_size] for n, v in inputs.items()})
        for name in names:
            chunks[name].append(np.array(result[name]))
    return [np.concatenate(chunks[name]) for name in names]


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _native_stderr_silenced():
    """LiteRT's C++ side prints INFO lines (the XNNPACK delegate) straight to file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def litert_interpreter(content: bytes, reference_kernels: bool):
    """A LiteRT interpreter, one thread, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    with _native_stderr_silenced():
        interpreter = Interpreter(model_content=content, num_threads=1, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    return interpreter


def feeds_in_input_order(interpreter, inputs: dict, index: slice) -> list:
    details = interpreter.get_input_details()
    names = list(inputs)
    by_name = [inputs[d["name"]] if d["name"] in inputs else inputs[names[i]] for i, d in enumerate(details)]
    return [(d["index"], np.ascontiguousarray(v[index], dtype=d["dtype"])) for d, v in zip(details, by_name)]


def outputs_on_litert(content: bytes, inputs: dict) -> list:
    """LiteRT's reference kernels, one sample at a time (the graph's batch is 1)."""
    interpreter = litert_interpreter(content, reference_kernels=True)
    details = interpreter.get_output_details()
    total = next(iter(inputs.values())).shape[0]
    stacked = [[] for _ in details]
    for i in range(total):
        for tensor_index, value in feeds_in_input_order(interpreter, inputs, slice(i, i + 1)):
            interpreter.set_tensor(tensor_index, value)
        interpreter.invoke()
        for out, detail in zip(stacked, details):
            out.append(interpreter.get_tensor(detail["index"]).copy())
    return [np.concatenate(out) for out in stacked]


