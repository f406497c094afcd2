"""Single-op int8 IR graphs with seeded random inputs, for holding our integer kernels to LiteRT's:
each builder returns (graph, inputs)."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor
from edgeq.runtime.padding import output_size


def random_int8(rng, shape, dtype=np.int8):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def weighted_op(op_type, x_shape, in_q, out_q, k=3, stride=1, dilation=1, padding="SAME", out_c=5,
                act="NONE", per_channel=True, seed=0, **extra):
    """A CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED graph with random int8 weights and int32 bias."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.int8, quant=QuantParams(*in_q)))
    in_c = x_shape[-1]
    if op_type == "CONV_2D":
        w_shape, axis = (out_c, k, k, in_c), 0
    elif op_type == "DEPTHWISE_CONV_2D":
        w_shape, axis = (1, k, k, out_c), 3
    else:
        w_shape, axis = (out_c, in_c), 0
    scales = rng.uniform(0.001, 0.02, out_c) if per_channel else np.array([0.01])
    g.add_tensor(Tensor("w", w_shape, np.int8, random_int8(rng, w_shape).clip(-127, 127),
                        QuantParams(scales, np.zeros(scales.size), axis)))
    bias_scales = np.float32(in_q[0]) * scales.astype(np.float32)
    g.add_tensor(Tensor("b", (out_c,), np.int32, rng.integers(-5000, 5000, out_c),
                        QuantParams(bias_scales, np.zeros(bias_scales.size), 0)))
    if op_type == "FULLY_CONNECTED":
        keep = extra.get("keep_num_dims", False)
        y_shape = x_shape[:-1] + (out_c,) if keep else (int(np.prod(x_shape[:-1])), out_c)
        options = {"fused_activation_function": act, "keep_num_dims": keep}
    else:
        n, h, w_, _ = x_shape
        y_shape = (n, output_size(padding, h, k, stride, dilation),
                   output_size(padding, w_, k, stride, dilation), out_c)
        options = {"padding": padding, "stride_w": stride, "stride_h": stride, "dilation_w_factor": dilation,
                   "dilation_h_factor": dilation, "fused_activation_function": act}
        if op_type == "DEPTHWISE_CONV_2D":
            options["depth_multiplier"] = out_c // in_c
    g.add_tensor(Tensor("y", y_shape, np.int8, quant=QuantParams(*out_q)))
    g.add_op(Op(op_type, ["x", "w", "b"], ["y"], options))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [random_int8(rng, x_shape)]


# Quantization params exercising normal, saturating and extreme cases: (input (scale, zp), output).
PARAMS = {
    "typical": ((0.05, 3), (0.2, -5)),
    "saturating": ((0.5, -128), (0.001, 127)),
    "coarse_output": ((0.01, 127), (3.0, 0)),
    "multiplier_near_one": ((0.02, 0), (0.0200001, 0)),
}


BINARY_CASES = {
    "same_shape": ((2, 5, 6, 3), (2, 5, 6, 3), (0.05, 3), (0.07, -10), (0.1, -4), "NONE"),
    "broadcast_row": ((2, 5, 6, 3), (1, 1, 6, 3), (0.05, 3), (0.07, -10), (0.1, -4), "NONE"),
    "broadcast_vector": ((2, 5, 6, 3), (3,), (0.05, 3), (0.07, -10), (0.1, -4), "RELU6"),
    "broadcast_both": ((2, 1, 6, 1), (2, 5, 6, 3), (0.05, 3), (0.07, -10), (0.1, -4), "RELU"),
    "saturating": ((4, 50), (4, 50), (0.5, -128), (0.001, 127), (0.0005, 127), "NONE"),
    "equal_scales": ((4, 50), (4, 50), (0.02, 0), (0.02, 0), (0.04, 0), "NONE"),
    "tiny_output_scale": ((4, 50), (4, 50), (0.05, 3), (0.07, -10), (1e-4, 0), "NONE"),
}


def binary_graph(op_type, shape_1, shape_2, q1, q2, qo, act, seed=0, dtype=np.int8, options=None):
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("a", shape_1, dtype, quant=QuantParams(*q1)))
    g.add_tensor(Tensor("b", shape_2, dtype, quant=QuantParams(*q2)))
    g.add_tensor(Tensor("y", np.broadcast_shapes(shape_1, shape_2), dtype, quant=QuantParams(*qo)))
    fused = {"fused_activation_function": act} if op_type in ("ADD", "SUB", "MUL") else {}
    g.add_op(Op(op_type, ["a", "b"], ["y"], {**fused, **(options or {})}))
    g.inputs, g.outputs = ["a", "b"], ["y"]
    return g, [random_int8(rng, shape_1, dtype), random_int8(rng, shape_2, dtype)]


def unary_graph(op_type, x_shape, y_shape, q_in, q_out, options=None, constants=(), seed=0, dtype=np.int8):
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, dtype, quant=QuantParams(*q_in) if q_in else None))
    names = ["x"]
    for name, value in constants:
        names.append(g.add_constant(name, value))
    out_dtype = options.pop("_out_dtype", dtype) if options else dtype
    g.add_tensor(Tensor("y", y_shape, out_dtype, quant=QuantParams(*q_out) if q_out else None))
    g.add_op(Op(op_type, names, ["y"], options or {}))
    g.inputs, g.outputs = ["x"], ["y"]
    x = random_int8(rng, x_shape, dtype) if np.dtype(dtype).kind in "iu" else \
        (rng.standard_normal(x_shape) * 3).astype(dtype)
    return g, [x]
