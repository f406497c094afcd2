"""A float CONV_2D (1x1, or any other through im2col) whose only reader is a 3x3 DEPTHWISE_CONV_2D, and
the 1x1 CONV_2D that is the depthwise's only reader if there is one (MobileNetV2's expand, depthwise and
project), run as one native kernel: the first convolution's output rows are made as the depthwise
needs them, three at most kept, and each depthwise output row goes straight into the last
convolution, so the tensors between them (MobileNetV2's largest) are never written to memory and read
back. The
interpreter fuses such ops at invoke (``Interpreter._fold_pointwise_into_depthwise``); the values are
those of the native kernels run one after the other.
"""
from __future__ import annotations

import ctypes

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.kernels import native_float
from edgeq.runtime.kernels.buffers import OutputBuffers
from edgeq.runtime.kernels.common import constant_input, float_activation_bounds, input_tensor
from edgeq.runtime.kernels.conv import SMALL_GEMM_WEIGHTS, _bias, _geometry
from edgeq.runtime.kernels.depthwise_conv import _padding
from edgeq.runtime.native import GeometryPerBatch


def is_pointwise(g) -> bool:
    """A 1x1 convolution, stride 1, unpadded: a GEMM over the input's pixels as they are."""
    return (g.k_h == g.k_w == 1 and g.stride_h == g.stride_w == 1 and g.pad_top == g.pad_left == 0
            and (g.out_h, g.out_w) == (g.in_h, g.in_w))


def gemm_operands(conv, graph):
    """(geometry, (isa, packed weights, padded bias, bounds)) of a float CONV_2D with a clamp activation
    whose GEMM the native kernel runs; None for any other."""
    if any(graph[name].dtype != np.float32 for name in conv.inputs[:2]):
        return None
    g = _geometry(conv, graph)
    bounds = float_activation_bounds(conv)
    if bounds is None or g.k_h * g.k_w * g.in_c * g.out_c > SMALL_GEMM_WEIGHTS:
        return None
    weights = constant_input(conv, graph, 1, "filter").astype(np.float32).reshape(g.out_c, -1)
    prepared = native_float._packed_gemm_operands(weights, _bias(conv, graph, g.out_c), bounds)
    return None if prepared is None else (g, prepared)


def prepare_pointwise_then_depthwise(conv, depthwise, graph, project=None):
    """evaluate(x) -> the depthwise's output (or ``project``'s, when given) for ``conv``'s input x, or
    None where the ops do not qualify: all float32 with constant weights and a clamp activation; the
    convolutions on the native GEMM, ``project`` 1x1, stride 1, unpadded, ``conv`` that or any other
    without dilation (MobileNetV2's first); the depthwise 3x3, multiplier 1, no dilation."""
    if native.isa() is None or isa_of_native_gemm() is None:
        return None
    expand = gemm_operands(conv, graph)
    if expand is None or graph[depthwise.inputs[1]].dtype != np.float32:
        return None
    g, (isa, packed, conv_bias, conv_bounds) = expand
    first = None
    if not is_pointwise(g):  # MobileNetV2's first convolution: 3x3, stride 2, through a row of im2col
        if g.dil_h != 1 or g.dil_w != 1:
            return None
        first = GeometryPerBatch(
            in_h=g.in_h, in_w=g.in_w, in_c=g.in_c, out_h=g.out_h, out_w=g.out_w, out_c=g.out_c, k_h=g.k_h,
            k_w=g.k_w, stride_h=g.stride_h, stride_w=g.stride_w, dil_h=1, dil_w=1, pad_top=g.pad_top,
            pad_left=g.pad_left, input_zero_point=0)
    bounds = float_activation_bounds(depthwise)
    if bounds is None:
        return None
    project_operands = None
    if project is not None:
        projected = gemm_operands(project, graph)
        if projected is None or not is_pointwise(projected[0]) or projected[0].in_c != g.out_c:
            return None
        project_g, (_, project_packed, project_bias, project_bounds) = projected
        project_operands = (project_packed, project_g.out_c, project_bias, project_bounds)
    filters = constant_input(depthwise, graph, 1, "filter").astype(np.float32)
    options = depthwise.options
    if (filters.shape != (1, 3, 3, g.out_c) or options.get("dilation_h_factor", 1) != 1
            or options.get("dilation_w_factor", 1) != 1 or options.get("stride_h", 1) != options.get("stride_w", 1)
            or options.get("stride_h", 1) not in (1, 2)):
        return None
    bias = None
    if input_tensor(depthwise, graph, 2) is not None:
        bias = constant_input(depthwise, graph, 2, "bias").astype(np.float32)
    out_h, out_w, (pad_top, _, pad_left, _) = _padding(options, g.out_h, g.out_w, 3, 3)
    if project is not None and (projected[0].in_h, projected[0].in_w) != (out_h, out_w):
        return None
    stride = options.get("stride_h", 1)
    geometries = GeometryPerBatch(
        in_h=g.out_h, in_w=g.out_w, in_c=g.out_c, out_h=out_h, out_w=out_w, out_c=g.out_c, k_h=3, k_w=3,
        stride_h=stride, stride_w=stride, dil_h=1, dil_w=1, pad_top=pad_top, pad_left=pad_left, input_zero_point=0)
    out_c = g.out_c if project_operands is None else project_operands[1]
    outputs = OutputBuffers((out_h, out_w, out_c), np.float32)
    run = native.pointwise_depthwise_f32_caller(isa, g.in_c, packed, conv_bias, conv_bounds,
                                                np.ascontiguousarray(filters[0]), bias, bounds, project_operands)
    by_reference = {}  # batch size -> ctypes.byref of its geometries, made once

    def conv_2d_then_depthwise_native(x):
        n = x.shape[0]
        references = by_reference.get(n)
        if references is None:
            references = by_reference[n] = (ctypes.byref(geometries.get(n)),
                                            None if first is None else ctypes.byref(first.get(n)))
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        return run(references[0], references[1], x, outputs.get(n))

    return conv_2d_then_depthwise_native


def isa_of_native_gemm():
    """The variant whose float GEMM runs 1x1 convolutions of any depth natively, or None."""
    isa = native.isa()
    return isa if isa is not None and native_float.NATIVE_GEMM_MAX_DEPTH.get(isa, 0) is None else None
