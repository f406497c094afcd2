"""edgeq's runtime: a small numpy interpreter for TFLite flatbuffers (float32 and int8)."""
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.interpreter import Interpreter

__all__ = ["Graph", "Interpreter", "ModelError", "Op", "QuantParams", "Tensor", "read_tflite"]
