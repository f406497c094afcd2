"""Unary float activations and math functions."""
from __future__ import annotations

import numpy as np

from runtime.kernels import register
from runtime.kernels.common import require_float


def _relu(x):
    return np.maximum(x, np.float32(0))


def _relu6(x):
    return np.clip(x, np.float32(0), np.float32(6))


def _relu_n1_to_1(x):
    return np.clip(x, np.float32(-1), np.float32(1))


def _logistic(x):
    # exp of a non-positive argument never overflows; the two halves are the same function.
    e = np.exp(-np.abs(x))
    denominator = e + np.float32(1)
    return np.where(x >= 0, np.float32(1), e) / denominator


def _hard_swish(x):
    return x * np.clip(x + np.float32(3), np.float32(0), np.float32(6)) / np.float32(6)


def _rsqrt(x):
    return np.float32(1) / np.sqrt(x)


def _neg(x):
    return np.negative(x)


_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                      0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erfc(z):
    """Complementary error function to ~1.2e-7 relative error everywhere (Chebyshev fit, float64)."""
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = 0.0
    for c in reversed(_ERFC_COEFFICIENTS[1:]):
        poly = t * (c + poly)
    tail = t * np.exp(-a * a + _ERFC_COEFFICIENTS[0] + poly)
    return np.where(z >= 0, tail, 2.0 - tail)


def _gelu_exact(x):
    # 0.5 x (1 + erf(x/sqrt 2)) written with erfc so negative inputs keep their relative precision.
    return (0.5 * x * _erfc(-x * np.sqrt(0.5))).astype(np.float32)


def _gelu_tanh(x):
    inner = np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))


_UNARY = {
    "RELU": _relu,
    "RELU6": _relu6,
    "RELU_N1_TO_1": _relu_n1_to_1,
    "LOGISTIC": _logistic,
    "TANH": np.tanh,
    "HARD_SWISH": _hard_swish,
    "EXP": np.exp,
    "LOG": np.log,
    "SQRT": np.sqrt,
    "RSQRT": _rsqrt,
    "ABS": np.abs,
    "NEG": _neg,
}


@register(*_UNARY)
def prepare_unary(op, graph):
    require_float(op, graph)
    return _UNARY[op.type]


@register("GELU")
def prepare_gelu(op, graph):
    require_float(op, graph)
    return _gelu_tanh if op.options.get("approximate", False) else _gelu_exact


@register("LEAKY_RELU")
def prepare_leaky_relu(op, graph):
    require_float(op, graph)
    alpha = np.float32(op.options.get("alpha", 0.2))

    def leaky_relu(x):
        return np.where(x >= 0, x, x * alpha)

    return leaky_relu


@register("PRELU")
def prepare_prelu(op, graph):
    require_float(op, graph, (0, 1))

    def prelu(x, alpha):
        return np.where(x >= 0, x, x * alpha)

    return prelu
