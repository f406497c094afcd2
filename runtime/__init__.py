"""edgeq's runtime: a small numpy interpreter for TFLite flatbuffers (float32 and int8)."""
from runtime.model import Graph, ModelError, Op, QuantParams, Tensor

__all__ = ["Graph", "ModelError", "Op", "QuantParams", "Tensor"]
