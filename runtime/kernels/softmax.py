"""SOFTMAX over the last axis: exp(beta * (x - max)) / sum."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import require_float


@register("SOFTMAX")
def prepare_softmax(op, graph):
    require_float(op, graph)
    beta = np.float32(op.options.get("beta", 1.0))

    def softmax(x):
        shifted = x - x.max(axis=-1, keepdims=True)
        if beta != 1:
            shifted *= beta
        exponentials = np.exp(shifted, out=shifted)
        exponentials /= exponentials.sum(axis=-1, keepdims=True)
        return exponentials

    return softmax


@register("LOG_SOFTMAX")
def prepare_log_softmax(op, graph):
    require_float(op, graph)

    def log_softmax(x):
        shifted = x - x.max(axis=-1, keepdims=True)
        shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return shifted

    return log_softmax
