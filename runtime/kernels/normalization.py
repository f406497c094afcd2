"""LOCAL_RESPONSE_NORMALIZATION over the channel (last) axis:
out = x / (bias + alpha * sum_{c-radius..c+radius} x^2) ^ beta."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import require_float


@register("LOCAL_RESPONSE_NORMALIZATION")
def prepare_local_response_normalization(op, graph):
    require_float(op, graph)
    channels = graph[op.inputs[0]].shape[-1]
    options = op.options
    radius = int(options.get("radius", 5))
    bias = np.float32(options.get("bias", 1.0))
    alpha = np.float32(options.get("alpha", 1.0))
    beta = np.float32(options.get("beta", 0.5))
    window = range(2 * radius + 1)

    def local_response_normalization(x):
        squares = np.zeros(x.shape[:-1] + (channels + 2 * radius,), np.float32)
        np.multiply(x, x, out=squares[..., radius:radius + channels])
        # Sum the 2r+1 shifted windows directly: a cumulative sum would cancel badly in float32.
        square_sum = squares[..., 0:channels].copy()
        for shift in window[1:]:
            square_sum += squares[..., shift:shift + channels]
        square_sum *= alpha
        square_sum += bias
        return x / np.power(square_sum, beta)

    return local_response_normalization
