"""FULLY_CONNECTED: weights [O, I]; the input is flattened to [-1, I] as TFLite does."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import fused_activation, input_tensor, require_float, with_activation
from runtime.model import ModelError


@register("FULLY_CONNECTED")
def prepare_fully_connected(op, graph):
    require_float(op, graph)
    return _prepare_float(op, graph)


def _prepare_float(op, graph):
    weights_tensor = graph[op.inputs[1]]
    out_c, in_c = weights_tensor.shape
    keep_num_dims = op.options.get("keep_num_dims", False)
    if op.options.get("weights_format", "DEFAULT") not in ("DEFAULT", 0):
        raise ModelError(f"op {op}: only the DEFAULT weights format is supported")
    bias_tensor = input_tensor(op, graph, 2)
    constant_bias = None
    if bias_tensor is not None and bias_tensor.data is not None:
        constant_bias = bias_tensor.data.astype(np.float32)
    constant_weights_t = None
    if weights_tensor.data is not None:
        constant_weights_t = np.ascontiguousarray(weights_tensor.data.astype(np.float32).T)

    def fully_connected(x, weights, bias=None):
        weights_t = constant_weights_t if constant_weights_t is not None else weights.T
        out = x.reshape(-1, in_c) @ weights_t
        bias = constant_bias if constant_bias is not None else bias
        if bias is not None:
            out += bias
        if keep_num_dims:
            return out.reshape(x.shape[:-1] + (out_c,))
        return out

    return with_activation(fully_connected, fused_activation(op))
